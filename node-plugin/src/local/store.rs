//! `LocalStore`: volumes and snapshots kept under one storage root on this node.
//!
//! Every public operation takes the per-object lock, then does its blocking file work on
//! tokio's blocking pool. Operations are idempotent by ID.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use warren_core::durable::{read_json, sync_dir, write_json_atomic};
use warren_core::ids::{Key, Layout, SnapshotId, VolumeId};
use warren_core::lock::KeyedLocks;
use warren_core::storage::{
    Allocation, Capacity, Condition, ContentSource, NodeStorage, SnapshotInfo, VolumeInfo,
    VolumeSpec,
};
use warren_core::validate::MIN_IMAGE_BYTES;
use warren_core::Error as CoreError;

use super::meta::{payload, Dirs, SnapshotMeta, VolumeMeta, META};
use super::remove::{check_nothing_mounted_inside, remove_object_dir};
use crate::copy::{copy_image, copy_tree};
use crate::error::{Error, Result};
use crate::loopdev::BlockDevices;
use crate::{freeze, mountinfo};

#[derive(Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
    locks: KeyedLocks,
}

struct Inner {
    node_id: String,
    dirs: Dirs,
    devices: Arc<dyn BlockDevices>,
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
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
    fn check_node(&self, node: &str, what: &str) -> Result<()> {
        if node != self.node_id {
            return Err(CoreError::NotFound(format!(
                "{what} lives on node {node:?}, not on this node ({:?})",
                self.node_id
            ))
            .into());
        }
        Ok(())
    }

    fn recover(&self) -> Result<()> {
        for dir in [self.dirs.creating(), self.dirs.trash()] {
            for entry in fs::read_dir(&dir).map_err(io_err(format!("list {}", dir.display())))? {
                let path = entry.map_err(io_err("list"))?.path();
                tracing::info!(path = %path.display(), "removing leftover of an interrupted operation");
                remove_object_dir(&path)?;
            }
        }
        // A crash during a snapshot copy would leave the volume's file system frozen.
        for entry in mountinfo::read()? {
            if entry.source.starts_with("/dev/loop") {
                let backing = self.devices_backing(&entry.source);
                if backing.is_some_and(|b| b.starts_with(self.dirs.volumes())) {
                    freeze::thaw(&entry.mount_point)?;
                }
            }
        }
        Ok(())
    }

    fn devices_backing(&self, dev: &str) -> Option<PathBuf> {
        let name = Path::new(dev).file_name()?;
        let backing =
            fs::read_to_string(Path::new("/sys/block").join(name).join("loop/backing_file"))
                .ok()?;
        Some(PathBuf::from(backing.trim_end()))
    }

    fn volume_meta(&self, id: &VolumeId) -> Result<VolumeMeta> {
        self.check_node(&id.node, "volume")?;
        let path = self.dirs.volume(&id.key).join(META);
        if !path.exists() {
            return Err(CoreError::NotFound(format!("volume {id} does not exist")).into());
        }
        let meta: VolumeMeta = read_json(&path)?;
        if meta.id != *id {
            // Same key, other layout or node: not the volume asked for.
            return Err(CoreError::NotFound(format!("volume {id} does not exist")).into());
        }
        Ok(meta)
    }

    fn snapshot_meta(&self, id: &SnapshotId) -> Result<SnapshotMeta> {
        self.check_node(&id.node, "snapshot")?;
        let path = self.dirs.snapshot(&id.key).join(META);
        if !path.exists() {
            return Err(CoreError::NotFound(format!("snapshot {id} does not exist")).into());
        }
        let meta: SnapshotMeta = read_json(&path)?;
        if meta.id != *id {
            return Err(CoreError::NotFound(format!("snapshot {id} does not exist")).into());
        }
        Ok(meta)
    }

    fn volume_info(&self, meta: &VolumeMeta) -> VolumeInfo {
        VolumeInfo {
            id: meta.id.clone(),
            name: meta.name.clone(),
            capacity_bytes: meta.capacity_bytes,
            source: meta.source.clone(),
            condition: self.condition(meta),
            share_endpoint: None,
        }
    }

    /// Whether the volume's backing store is present and whole.
    fn condition(&self, meta: &VolumeMeta) -> Condition {
        let path = payload(&self.dirs.volume(&meta.id.key), meta.id.layout);
        match (meta.id.layout, fs::symlink_metadata(&path)) {
            (_, Err(e)) => {
                Condition::abnormal(format!("backing store {} is missing: {e}", path.display()))
            }
            (Layout::Image, Ok(m)) if !m.is_file() => {
                Condition::abnormal(format!("{} is not a regular file", path.display()))
            }
            (Layout::Image, Ok(m)) if m.len() < meta.capacity_bytes => {
                Condition::abnormal(format!(
                    "image {} is {} bytes, smaller than the volume's {} bytes (truncated?)",
                    path.display(),
                    m.len(),
                    meta.capacity_bytes
                ))
            }
            (Layout::Dir, Ok(m)) if !m.is_dir() => {
                Condition::abnormal(format!("{} is not a directory", path.display()))
            }
            _ => Condition::healthy(),
        }
    }

    fn create_volume(&self, spec: &VolumeSpec) -> Result<VolumeInfo> {
        self.check_node(&spec.id.node, "volume")?;
        let layout = spec.id.layout;
        if layout == Layout::Image && spec.capacity_bytes < MIN_IMAGE_BYTES {
            return Err(CoreError::OutOfRange(format!(
                "image volumes are at least {MIN_IMAGE_BYTES} bytes"
            ))
            .into());
        }
        let final_dir = self.dirs.volume(&spec.id.key);
        if final_dir.join(META).exists() {
            let existing: VolumeMeta = read_json(&final_dir.join(META))?;
            if existing.id == spec.id
                && existing.capacity_bytes == spec.capacity_bytes
                && existing.source == spec.source
            {
                return Ok(self.volume_info(&existing));
            }
            return Err(CoreError::AlreadyExists(format!(
                "volume {} exists with another size or source",
                spec.id
            ))
            .into());
        }

        let work = self.dirs.creating().join(spec.id.key.as_str());
        if work.exists() {
            remove_object_dir(&work)?;
        }
        fs::create_dir(&work).map_err(io_err(format!("create {}", work.display())))?;
        let built = self.build_volume(spec, &work);
        if let Err(e) = built {
            let _ = remove_object_dir(&work);
            return Err(e);
        }
        let meta = VolumeMeta {
            id: spec.id.clone(),
            name: spec.name.clone(),
            capacity_bytes: spec.capacity_bytes,
            allocation: spec.allocation,
            source: spec.source.clone(),
        };
        write_json_atomic(&work.join(META), &meta)?;
        fs::rename(&work, &final_dir)
            .map_err(io_err(format!("publish {}", final_dir.display())))?;
        sync_dir(&self.dirs.volumes())?;
        sync_dir(&self.dirs.creating())?;
        tracing::info!(volume = %spec.id, name = %spec.name, bytes = spec.capacity_bytes, "volume created");
        Ok(self.volume_info(&meta))
    }

    /// Fills a fresh work directory with the volume's contents.
    fn build_volume(&self, spec: &VolumeSpec, work: &Path) -> Result<()> {
        let target = payload(work, spec.id.layout);
        match &spec.source {
            None => match spec.id.layout {
                Layout::Image => {}
                Layout::Dir => {
                    fs::create_dir(&target).map_err(io_err("create data dir"))?;
                    // Any pod user may write, as with local-path-provisioner; the 0700 storage
                    // root keeps other node users out.
                    fs::set_permissions(&target, fs::Permissions::from_mode(0o777))
                        .map_err(io_err("chmod data dir"))?;
                }
            },
            Some(ContentSource::Snapshot(snap)) => {
                let meta = self.snapshot_meta(snap)?;
                self.check_source_fits(snap.layout, spec, meta.size_bytes)?;
                let from = payload(&self.dirs.snapshot(&snap.key), snap.layout);
                self.copy_payload(&from, &target, spec.id.layout)?;
            }
            Some(ContentSource::Volume(vol)) => {
                let meta = self.volume_meta(vol)?;
                self.check_source_fits(vol.layout, spec, meta.capacity_bytes)?;
                let from = payload(&self.dirs.volume(&vol.key), vol.layout);
                let _frozen = self.freeze_if_mounted(&meta)?;
                self.copy_payload(&from, &target, spec.id.layout)?;
            }
        }
        if spec.id.layout == Layout::Image {
            size_image(&target, spec.capacity_bytes, spec.allocation)?;
        }
        Ok(())
    }

    fn check_source_fits(
        &self,
        source_layout: Layout,
        spec: &VolumeSpec,
        source_bytes: u64,
    ) -> Result<()> {
        if source_layout != spec.id.layout {
            return Err(CoreError::InvalidArgument(format!(
                "source layout {} differs from the new volume's layout {}",
                source_layout.as_str(),
                spec.id.layout.as_str()
            ))
            .into());
        }
        if spec.id.layout == Layout::Image && spec.capacity_bytes < source_bytes {
            return Err(CoreError::OutOfRange(format!(
                "the new volume ({} bytes) is smaller than its source ({source_bytes} bytes)",
                spec.capacity_bytes
            ))
            .into());
        }
        Ok(())
    }

    fn copy_payload(&self, from: &Path, to: &Path, layout: Layout) -> Result<()> {
        match layout {
            Layout::Image => copy_image(from, to),
            Layout::Dir => {
                fs::create_dir(to).map_err(io_err("create data dir"))?;
                copy_tree(from, to)
            }
        }
    }

    /// Freezes the file system of a staged image volume for the duration of a copy.
    fn freeze_if_mounted(&self, meta: &VolumeMeta) -> Result<Option<freeze::Frozen>> {
        if meta.id.layout != Layout::Image {
            return Ok(None);
        }
        let image = payload(&self.dirs.volume(&meta.id.key), Layout::Image);
        let Some(dev) = self.devices.find(&image)? else {
            return Ok(None);
        };
        let mounts = mountinfo::read()?;
        match mounts.iter().find(|m| Path::new(&m.source) == dev) {
            Some(m) => Ok(Some(freeze::freeze(&m.mount_point)?)),
            None => Ok(None),
        }
    }

    /// Whether anything on this node still uses the volume (mounted, or its image attached).
    fn in_use(&self, meta: &VolumeMeta) -> Result<Option<String>> {
        let dir = self.dirs.volume(&meta.id.key);
        let mounts = mountinfo::read()?;
        match meta.id.layout {
            Layout::Image => {
                let image = payload(&dir, Layout::Image);
                if let Some(dev) = self.devices.find(&image)? {
                    if let Some(m) = mounts.iter().find(|m| Path::new(&m.source) == dev) {
                        return Ok(Some(format!("mounted at {}", m.mount_point.display())));
                    }
                }
            }
            Layout::Dir => {
                let suffix = Path::new("volumes")
                    .join(meta.id.key.as_str())
                    .join(super::DATA);
                if let Some(m) = mounts.iter().find(|m| m.root.ends_with(&suffix)) {
                    return Ok(Some(format!("mounted at {}", m.mount_point.display())));
                }
            }
        }
        Ok(None)
    }

    fn delete_volume(&self, id: &VolumeId) -> Result<()> {
        let meta = match self.volume_meta(id) {
            Ok(m) => m,
            Err(Error::Core(CoreError::NotFound(_))) => return Ok(()),
            Err(e) => return Err(e),
        };
        if let Some(how) = self.in_use(&meta)? {
            return Err(CoreError::FailedPrecondition(format!(
                "volume {id} is still in use on this node ({how}); unpublish and unstage it first"
            ))
            .into());
        }
        let dir = self.dirs.volume(&id.key);
        if id.layout == Layout::Image {
            self.devices.detach(&payload(&dir, Layout::Image))?;
        }
        self.trash(&dir, &id.key)?;
        tracing::info!(volume = %id, "volume deleted");
        Ok(())
    }

    /// Moves an object out of sight with one rename, then removes it. An object with a
    /// file system mounted inside is refused before it is moved, so it stays whole.
    fn trash(&self, dir: &Path, key: &Key) -> Result<()> {
        check_nothing_mounted_inside(dir)?;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let bin = self.dirs.trash().join(format!("{key}-{nanos}"));
        fs::rename(dir, &bin).map_err(io_err(format!("move {} to trash", dir.display())))?;
        sync_dir(dir.parent().unwrap_or(&self.dirs.root))?;
        remove_object_dir(&bin)
    }

    fn expand_volume(&self, id: &VolumeId, capacity: u64) -> Result<u64> {
        let mut meta = self.volume_meta(id)?;
        if capacity <= meta.capacity_bytes {
            return Ok(meta.capacity_bytes);
        }
        if id.layout == Layout::Image {
            let image = payload(&self.dirs.volume(&id.key), Layout::Image);
            size_image(&image, capacity, meta.allocation)?;
            self.devices.refresh_size(&image)?;
        }
        meta.capacity_bytes = capacity;
        write_json_atomic(&self.dirs.volume(&id.key).join(META), &meta)?;
        tracing::info!(volume = %id, bytes = capacity, "volume expanded");
        Ok(capacity)
    }

    fn create_snapshot(
        &self,
        id: &SnapshotId,
        name: &str,
        source: &VolumeId,
    ) -> Result<SnapshotInfo> {
        self.check_node(&id.node, "snapshot")?;
        if id.layout != source.layout {
            return Err(CoreError::InvalidArgument(format!(
                "snapshot id {id} does not match the layout of volume {source}"
            ))
            .into());
        }
        let final_dir = self.dirs.snapshot(&id.key);
        if final_dir.join(META).exists() {
            let existing = self.snapshot_meta(id)?;
            if existing.source_volume == *source {
                return Ok(snapshot_info(existing));
            }
            return Err(CoreError::AlreadyExists(format!(
                "snapshot {id} exists for another volume"
            ))
            .into());
        }
        let volume = self.volume_meta(source)?;
        let work = self.dirs.creating().join(id.key.as_str());
        if work.exists() {
            remove_object_dir(&work)?;
        }
        fs::create_dir(&work).map_err(io_err(format!("create {}", work.display())))?;
        let copied = (|| {
            let _frozen = self.freeze_if_mounted(&volume)?;
            let from = payload(&self.dirs.volume(&source.key), source.layout);
            self.copy_payload(&from, &payload(&work, id.layout), id.layout)
        })();
        if let Err(e) = copied {
            let _ = remove_object_dir(&work);
            return Err(e);
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let meta = SnapshotMeta {
            id: id.clone(),
            name: name.to_string(),
            source_volume: source.clone(),
            size_bytes: volume.capacity_bytes,
            created_at_secs: now.as_secs() as i64,
            created_at_nanos: now.subsec_nanos() as i32,
        };
        write_json_atomic(&work.join(META), &meta)?;
        fs::rename(&work, &final_dir)
            .map_err(io_err(format!("publish {}", final_dir.display())))?;
        sync_dir(&self.dirs.snapshots())?;
        tracing::info!(snapshot = %id, volume = %source, "snapshot created");
        Ok(snapshot_info(meta))
    }

    fn delete_snapshot(&self, id: &SnapshotId) -> Result<()> {
        match self.snapshot_meta(id) {
            Ok(_) => self.trash(&self.dirs.snapshot(&id.key), &id.key),
            Err(Error::Core(CoreError::NotFound(_))) => Ok(()),
            Err(e) => Err(e),
        }
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
        })
    }
}

fn snapshot_info(meta: SnapshotMeta) -> SnapshotInfo {
    SnapshotInfo {
        id: meta.id,
        name: meta.name,
        source_volume: meta.source_volume,
        size_bytes: meta.size_bytes,
        created_at_secs: meta.created_at_secs,
        created_at_nanos: meta.created_at_nanos,
        ready: true,
    }
}

/// Sets an image's length (never shrinking it) and, for thick volumes, reserves its blocks.
fn size_image(path: &Path, capacity: u64, allocation: Allocation) -> Result<()> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err(format!("open {}", path.display())))?;
    let len = file.metadata().map_err(io_err("stat image"))?.len();
    if len < capacity {
        file.set_len(capacity)
            .map_err(io_err(format!("resize {}", path.display())))?;
    }
    if allocation == Allocation::Thick {
        // Mode 0 allocates without changing the size; data already there stays.
        nix::fcntl::fallocate(
            &file,
            nix::fcntl::FallocateFlags::empty(),
            0,
            capacity as libc::off_t,
        )
        .map_err(|e| match e {
            nix::errno::Errno::ENOSPC => Error::Core(CoreError::ResourceExhausted(format!(
                "not enough free space on this node for {capacity} bytes"
            ))),
            e => Error::sys("fallocate", path)(e),
        })?;
    }
    file.sync_all().map_err(io_err("fsync image"))
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
