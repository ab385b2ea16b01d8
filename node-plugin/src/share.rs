//! The built-in share's node side (`backend: share`): a shared volume is an ordinary
//! image volume of this node (capacity enforced by its own file system) that this node
//! also serves over NFSv3 (`warren_nfs::share::ShareServer`, in this process), so pods on
//! other nodes mount it ReadWriteMany with no NFS server in the cluster.
//!
//! To be served, the volume must be mounted here whether or not a pod on this node uses
//! it: the share keeps its own mount at `<storage-root>/shares/<key>/mnt` (staged the
//! way NodeStage stages, so a pod on this node shares the same file system). The
//! directory `<storage-root>/shares/<key>` is also the record that the volume is shared: at startup
//! every one of them whose volume still exists is mounted and exported again.
//!
//! `SharingStore` wraps the node's `LocalStore` where the controller reaches it
//! (`NodeStorage`): creating a shared volume serves it, deleting stops serving it first,
//! growing it grows the served file system too (no node has to run NodeExpandVolume for
//! a volume that may be used only elsewhere).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use csi_proto::v1::volume_capability::access_mode::Mode;
use warren_core::capability::{Access, Requested};
use warren_core::ids::{Layout, SnapshotId, VolumeId};
use warren_core::storage::{Capacity, NodeStorage, SnapshotInfo, VolumeInfo, VolumeSpec};
use warren_core::Error as CoreError;
use warren_nfs::share::{load_or_create_generation, ShareServer};

use crate::local::LocalStore;
use crate::stage::Stager;

pub struct ShareHost {
    server: ShareServer,
    /// `IP:PORT` other nodes mount from.
    endpoint: String,
    dir: PathBuf,
    store: LocalStore,
    stager: Arc<Stager>,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> CoreError {
    CoreError::io(what)
}

impl ShareHost {
    /// Binds the share on `listen`, advertised to other nodes at `advertise` and the bound
    /// port, and serves again every volume that was shared before. Blocking.
    pub fn start(
        listen: SocketAddr,
        advertise: IpAddr,
        store: LocalStore,
        stager: Arc<Stager>,
    ) -> warren_core::Result<ShareHost> {
        let dir = store.dirs().shares();
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let generation = load_or_create_generation(&store.dirs().root.join("share-generation"))?;
        let server = ShareServer::bind(listen, generation)?;
        let endpoint = SocketAddr::new(advertise, server.local_addr().port()).to_string();
        let host = ShareHost {
            server,
            endpoint,
            dir,
            store,
            stager,
        };
        host.serve_recorded();
        Ok(host)
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn mount_path(&self, id: &VolumeId) -> PathBuf {
        self.dir.join(id.key.as_str()).join("mnt")
    }

    pub fn is_served(&self, id: &VolumeId) -> bool {
        self.dir.join(id.key.as_str()).is_dir()
    }

    /// Every volume shared before a restart, served again; records of volumes that are
    /// gone are dropped. A volume that cannot be served is logged, not fatal: the others
    /// still are.
    fn serve_recorded(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let volumes = self.store.list_volume_ids().unwrap_or_default();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            match volumes.iter().find(|id| id.key.as_str() == name) {
                Some(id) => {
                    if let Err(e) = self.serve(id, None) {
                        tracing::error!(volume = %id, error = %e, "cannot serve a shared volume");
                    }
                }
                None => {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }

    /// Mounts the volume at the share's own path (making its file system on first use,
    /// as NodeStage would) and exports it. Idempotent. Blocking; call under the volume's
    /// lock.
    pub fn serve(&self, id: &VolumeId, fs_type: Option<&str>) -> warren_core::Result<()> {
        let mnt = self.mount_path(id);
        std::fs::create_dir_all(&mnt).map_err(io(format!("create {}", mnt.display())))?;
        let cap = Requested {
            access: Access::Mount {
                fs_type: fs_type.unwrap_or_default().to_string(),
                mount_flags: vec![],
            },
            mode: Mode::SingleNodeMultiWriter,
        };
        self.stager
            .stage(id, &mnt, &cap)
            .map_err(|e| CoreError::Internal(format!("mount shared volume {id}: {e}")))?;
        self.server.export(id.key.as_str(), &mnt)?;
        Ok(())
    }

    /// Stops serving and unmounts the share's mount (the loop device stays while a pod on
    /// this node still has the volume staged). Idempotent. Blocking; under the lock.
    pub fn unserve(&self, id: &VolumeId) -> warren_core::Result<()> {
        self.server.unexport(id.key.as_str());
        let mnt = self.mount_path(id);
        if let Err(e) = self.stager.unstage(id, &mnt) {
            // Still staged for a pod here: the loop device stays; the share's mount is
            // gone all the same.
            tracing::info!(volume = %id, reason = %e, "shared volume still in use on this node");
        }
        let dir = self.dir.join(id.key.as_str());
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("remove {}", dir.display()))(e)),
        }
    }

    /// Grows the served file system to the (already grown) volume. Blocking; under the lock.
    pub fn grow(&self, id: &VolumeId, bytes: u64) -> warren_core::Result<()> {
        self.stager
            .expand(id, &self.mount_path(id), bytes)
            .map(drop)
            .map_err(|e| CoreError::Internal(format!("grow shared volume {id}: {e}")))
    }
}

/// The node's storage as the controller reaches it, with shared volumes served.
pub struct SharingStore {
    store: LocalStore,
    host: Option<Arc<ShareHost>>,
}

impl SharingStore {
    pub fn new(store: LocalStore, host: Option<Arc<ShareHost>>) -> Self {
        SharingStore { store, host }
    }

    /// Runs `work` on the share host under the volume's lock, on the blocking pool.
    async fn with_host(
        &self,
        id: &VolumeId,
        work: impl FnOnce(&ShareHost) -> warren_core::Result<()> + Send + 'static,
    ) -> warren_core::Result<()> {
        let Some(host) = self.host.clone() else {
            return Ok(());
        };
        let _guard = self.store.lock_volume(&id.key).await;
        tokio::task::spawn_blocking(move || work(&host))
            .await
            .map_err(|e| CoreError::Internal(format!("share task failed: {e}")))?
    }

    fn with_endpoint(&self, mut info: VolumeInfo) -> VolumeInfo {
        if let Some(host) = self.host.as_ref().filter(|h| h.is_served(&info.id)) {
            info.share_endpoint = Some(host.endpoint().to_string());
        }
        info
    }
}

#[async_trait]
impl NodeStorage for SharingStore {
    async fn create_volume(&self, spec: VolumeSpec) -> warren_core::Result<VolumeInfo> {
        if spec.shared && self.host.is_none() {
            return Err(CoreError::FailedPrecondition(format!(
                "node {} does not run the built-in share (warren node --share-listen)",
                self.store.node_id()
            )));
        }
        let (id, shared, fs_type) = (spec.id.clone(), spec.shared, spec.fs_type.clone());
        let info = self.store.create_volume(spec).await?;
        if shared {
            let serve_id = id.clone();
            self.with_host(&id, move |h| h.serve(&serve_id, fs_type.as_deref()))
                .await?;
        }
        Ok(self.with_endpoint(info))
    }

    async fn delete_volume(&self, id: VolumeId) -> warren_core::Result<()> {
        let served = self.host.as_ref().is_some_and(|h| h.is_served(&id));
        if served {
            let unserve_id = id.clone();
            self.with_host(&id, move |h| h.unserve(&unserve_id)).await?;
        }
        let result = self.store.delete_volume(id.clone()).await;
        if served && matches!(result, Err(CoreError::FailedPrecondition(_))) {
            // Not deleted (still in use here): it stays a shared volume.
            let serve_id = id.clone();
            self.with_host(&id, move |h| h.serve(&serve_id, None))
                .await?;
        }
        result
    }

    async fn expand_volume(&self, id: VolumeId, capacity_bytes: u64) -> warren_core::Result<u64> {
        let size = self.store.expand_volume(id.clone(), capacity_bytes).await?;
        if self.host.as_ref().is_some_and(|h| h.is_served(&id)) {
            let grow_id = id.clone();
            self.with_host(&id, move |h| h.grow(&grow_id, size)).await?;
        }
        Ok(size)
    }

    async fn get_volume(&self, id: VolumeId) -> warren_core::Result<VolumeInfo> {
        Ok(self.with_endpoint(self.store.get_volume(id).await?))
    }

    async fn list_volumes(&self) -> warren_core::Result<Vec<VolumeInfo>> {
        let volumes = self.store.list_volumes().await?;
        Ok(volumes.into_iter().map(|v| self.with_endpoint(v)).collect())
    }

    async fn create_snapshot(
        &self,
        id: SnapshotId,
        name: String,
        source: VolumeId,
    ) -> warren_core::Result<SnapshotInfo> {
        self.store.create_snapshot(id, name, source).await
    }

    async fn delete_snapshot(&self, id: SnapshotId) -> warren_core::Result<()> {
        self.store.delete_snapshot(id).await
    }

    async fn list_snapshots(&self) -> warren_core::Result<Vec<SnapshotInfo>> {
        self.store.list_snapshots().await
    }

    async fn capacity(&self, layout: Layout) -> warren_core::Result<Capacity> {
        self.store.capacity(layout).await
    }
}
