//! NodeExpandVolume of a replicated volume staged on this node (online expansion). The
//! controller has grown every replica (ControllerExpandVolume); here the engine is told
//! and serves what all its replicas now hold (or grows them itself when asked for more), the kernel device is made to show it, and
//! a mounted file system is grown into it, as for image volumes.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use warren_core::ids::ReplicatedVolumeId;
use warren_core::Error as CoreError;

use super::replica_error;
use super::stage::{blocking, ReplicatedStager};
use crate::error::Result;
use crate::filesystem::{grow_fs, FsType};
use crate::loopdev::block_device_size;
use crate::mountinfo::{self, mount_at};
use crate::stage::precondition;

/// Sizes are whole MiB, as the controller makes them.
const MIB: u64 = 1 << 20;

impl ReplicatedStager {
    /// Grows the volume staged here to what its replicas hold (first growing them to
    /// `required_bytes` when they hold less), and the file system mounted at `path` with
    /// it (none for raw block). Returns the volume's size. FAILED_PRECONDITION when the
    /// frontend cannot change its size online.
    pub async fn expand(
        &self,
        id: &ReplicatedVolumeId,
        path: PathBuf,
        required_bytes: u64,
    ) -> Result<u64> {
        let name = id.replica_name();
        let _guard = self.host.lock(name).await;
        let (engine, resize) = self.running.resizable(name).ok_or_else(|| {
            CoreError::NotFound(format!("volume {id} is not staged on this node"))
        })??;
        let mut size = engine.grow_to_replicas().await.map_err(replica_error)?;
        if required_bytes > size {
            // Normally ControllerExpandVolume has grown every replica already; a CO that
            // only calls the node (csi-sanity against a node-only endpoint) gets the same
            // result here, as for image volumes: the engine grows its replicas, whole MiB
            // like the controller's sizes.
            let wanted = required_bytes.div_ceil(MIB) * MIB;
            size = engine.grow(wanted).await.map_err(replica_error)?;
        }
        let device_bytes = blocking(move || resize.to(size)).await?;
        blocking(move || grow_mounted(&path, device_bytes)).await
    }
}

/// Grows the file system mounted at `path` (a staging or publish path) to fill its
/// device; a raw block volume's device node needs nothing. Safe to repeat: a file
/// system that fills its device already is left as it is by the tools.
fn grow_mounted(path: &Path, device_bytes: u64) -> Result<u64> {
    let info = std::fs::metadata(path).map_err(|_| {
        CoreError::NotFound(format!("volume path {} does not exist", path.display()))
    })?;
    if info.file_type().is_block_device() {
        return Ok(device_bytes);
    }
    let mounts = mountinfo::read()?;
    let entry = mount_at(&mounts, path)
        .ok_or_else(|| precondition(format!("{} is not mounted", path.display())))?;
    let dev = PathBuf::from(&entry.source);
    grow_fs(&dev, path, FsType::parse(&entry.fs_type)?)?;
    block_device_size(&dev)
}
