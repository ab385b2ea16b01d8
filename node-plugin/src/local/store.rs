//! `LocalStore`: volumes and snapshots kept under one storage root on this node.
//!
//! Every public operation takes the per-object lock, then does its blocking file work on
//! tokio's blocking pool. Operations are idempotent by ID.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use warren_core::durable::read_json;
use warren_core::ids::{Key, Layout, SnapshotId, VolumeId};
use warren_core::lock::KeyedLocks;
use warren_core::storage::{
    Capacity, Condition, ContentSource, NodeStorage, SnapshotInfo, VolumeInfo, VolumeSpec,
};
use warren_core::Error as CoreError;

use super::meta::{Dirs, SnapshotMeta, VolumeMeta, META};
use super::snapshots::snapshot_info;
use crate::error::{Error, Result};
use crate::loopdev::BlockDevices;

#[derive(Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
    locks: KeyedLocks,
}

/// What the blocking work of every operation needs; its methods are spread over this
/// module's siblings, one job each.
pub(super) struct Inner {
    pub(super) node_id: String,
    pub(super) dirs: Dirs,
    pub(super) devices: Arc<dyn BlockDevices>,
}

pub(super) fn io_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.to_string();
    move |e| Error::Core(CoreError::io(what)(e))
}

impl LocalStore {
    /// Opens (creating if needed) the storage root and finishes what a crash interrupted:
    /// half-built objects are removed, trash is emptied, frozen file systems are thawed.
    pub fn open(node_id: &str, root: &Path, devices: Arc<dyn BlockDevices>) -> Result<Self> {
        let dirs = Dirs {
            root: root.to_path_buf(),
        };
        for dir in [
            dirs.volumes(),
            dirs.snapshots(),
            dirs.creating(),
            dirs.trash(),
        ] {
            fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        }
        // Only root traverses the storage root; pods reach their volume through mounts.
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("chmod {}", root.display())))?;
        let inner = Inner {
            node_id: node_id.to_string(),
            dirs,
            devices,
        };
        inner.recover()?;
        Ok(LocalStore {
            inner: Arc::new(inner),
            locks: KeyedLocks::default(),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    pub fn dirs(&self) -> &Dirs {
        &self.inner.dirs
    }

    pub fn devices(&self) -> &Arc<dyn BlockDevices> {
        &self.inner.devices
    }

    /// The per-volume lock; the node service holds it during stage/publish so those never
    /// race with delete, expand or snapshot of the same volume.
    pub async fn lock_volume(&self, key: &Key) -> warren_core::lock::KeyGuard {
        self.locks.lock(key.as_str()).await
    }

    /// Health of a volume's backing store.
    pub fn volume_condition(&self, meta: &VolumeMeta) -> Condition {
        self.inner.condition(meta)
    }

    /// Grows a volume whose lock the caller already holds (node-side expansion).
    pub fn expand_locked(&self, id: &VolumeId, capacity_bytes: u64) -> Result<u64> {
        self.inner.expand_volume(id, capacity_bytes)
    }

    /// The IDs of every volume this node holds.
    pub fn list_volume_ids(&self) -> Result<Vec<VolumeId>> {
        let metas: Vec<VolumeMeta> = self.inner.list(&self.inner.dirs.volumes())?;
        Ok(metas.into_iter().map(|m| m.id).collect())
    }

    /// Reads a volume's metadata; NOT_FOUND if this node does not hold it.
    pub fn volume_meta(&self, id: &VolumeId) -> Result<VolumeMeta> {
        self.inner.volume_meta(id)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> warren_core::Result<T> {
        let inner = self.inner.clone();
        // Carry the caller's span (method, volume) onto the blocking thread's log lines.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| f(&inner)))
            .await
            .map_err(|e| CoreError::Internal(format!("storage task failed: {e}")))?
            .map_err(Into::into)
    }
}

impl Inner {
    pub(super) fn check_node(&self, node: &str, what: &str) -> Result<()> {
        if node != self.node_id {
            return Err(CoreError::NotFound(format!(
                "{what} lives on node {node:?}, not on this node ({:?})",
                self.node_id
            ))
            .into());
        }
        Ok(())
    }

    fn list<T: serde::de::DeserializeOwned>(&self, dir: &Path) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(format!("list {}", dir.display())))? {
            let path = entry.map_err(io_err("list"))?.path().join(META);
            match read_json(&path) {
                Ok(meta) => out.push(meta),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping unreadable metadata")
                }
            }
        }
        Ok(out)
    }

    fn capacity(&self) -> Result<Capacity> {
        let st = nix::sys::statvfs::statvfs(&self.dirs.root)
            .map_err(Error::sys("statvfs", &self.dirs.root))?;
        let frsize = st.fragment_size() as u64;
        let available = st.blocks_available() as u64 * frsize;
        Ok(Capacity {
            available_bytes: available,
            total_bytes: st.blocks() as u64 * frsize,
            maximum_volume_bytes: available,
            replica_endpoint: None,
        })
    }
}

#[async_trait]
impl NodeStorage for LocalStore {
    async fn create_volume(&self, spec: VolumeSpec) -> warren_core::Result<VolumeInfo> {
        // The source volume is read while copying: hold its lock too.
        let mut keys = vec![spec.id.key.as_str()];
        if let Some(ContentSource::Volume(v)) = &spec.source {
            keys.push(v.key.as_str());
        }
        let _g = self.locks.lock_many(&keys).await;
        self.blocking(move |i| i.create_volume(&spec)).await
    }

    async fn delete_volume(&self, id: VolumeId) -> warren_core::Result<()> {
        let _g = self.locks.lock(id.key.as_str()).await;
        self.blocking(move |i| i.delete_volume(&id)).await
    }

    async fn expand_volume(&self, id: VolumeId, capacity_bytes: u64) -> warren_core::Result<u64> {
        let _g = self.locks.lock(id.key.as_str()).await;
        self.blocking(move |i| i.expand_volume(&id, capacity_bytes))
            .await
    }

    async fn get_volume(&self, id: VolumeId) -> warren_core::Result<VolumeInfo> {
        self.blocking(move |i| {
            let meta = i.volume_meta(&id)?;
            Ok(i.volume_info(&meta))
        })
        .await
    }

    async fn list_volumes(&self) -> warren_core::Result<Vec<VolumeInfo>> {
        self.blocking(|i| {
            let metas: Vec<VolumeMeta> = i.list(&i.dirs.volumes())?;
            Ok(metas.iter().map(|m| i.volume_info(m)).collect())
        })
        .await
    }

    async fn create_snapshot(
        &self,
        id: SnapshotId,
        name: String,
        source: VolumeId,
    ) -> warren_core::Result<SnapshotInfo> {
        let _g = self
            .locks
            .lock_many(&[source.key.as_str(), id.key.as_str()])
            .await;
        self.blocking(move |i| i.create_snapshot(&id, &name, &source))
            .await
    }

    async fn delete_snapshot(&self, id: SnapshotId) -> warren_core::Result<()> {
        let _g = self.locks.lock(id.key.as_str()).await;
        self.blocking(move |i| i.delete_snapshot(&id)).await
    }

    async fn list_snapshots(&self) -> warren_core::Result<Vec<SnapshotInfo>> {
        self.blocking(|i| {
            let metas: Vec<SnapshotMeta> = i.list(&i.dirs.snapshots())?;
            Ok(metas.into_iter().map(snapshot_info).collect())
        })
        .await
    }

    async fn capacity(&self, _layout: Layout) -> warren_core::Result<Capacity> {
        self.blocking(|i| i.capacity()).await
    }
}
