//! The kernel block device a frontend makes of a volume's engine: ublk, kernel NBD, or a
//! loop device (direct I/O) on the one file of a FUSE mount. Used by the node's staging of
//! replicated volumes and by `warren volume`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use warren_core::Error as CoreError;
use warren_replica::frontend::select::{self, FrontendKind};
use warren_replica::frontend::{fuse, nbd, ublk};
use warren_replica::BlockTarget;

use super::replica_error;
use crate::error::Result;
use crate::loopdev::{BlockDevices, LoopDevices};

/// The kernel block device a frontend made of the volume.
pub enum Device {
    Ublk(ublk::UblkDevice),
    Nbd(nbd::KernelNbd),
    /// A loop device (direct I/O) on the one file of a FUSE mount.
    FuseLoop {
        loop_device: PathBuf,
        mount: fuse::FuseVolume,
    },
}

impl Device {
    pub fn path(&self) -> &Path {
        match self {
            Device::Ublk(d) => d.device(),
            Device::Nbd(d) => d.device(),
            Device::FuseLoop { loop_device, .. } => loop_device,
        }
    }

    pub async fn detach(self) -> Result<()> {
        match self {
            Device::Ublk(d) => d.detach().await.map_err(replica_error)?,
            Device::Nbd(d) => d.detach().await.map_err(replica_error)?,
            Device::FuseLoop { mut mount, .. } => {
                LoopDevices
                    .detach(mount.path())
                    .map_err(|e| CoreError::Internal(e.to_string()))?;
                // The loop device lets go of the file asynchronously.
                for _ in 0..50 {
                    if mount.unmount().is_ok() {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                mount.unmount().map_err(replica_error)?
            }
        }
        Ok(())
    }
}

/// A free kernel NBD device: one without a connected server.
pub fn free_nbd_device() -> Result<PathBuf> {
    for n in 0..64 {
        let dev = PathBuf::from(format!("/dev/nbd{n}"));
        if !dev.exists() {
            break;
        }
        if !Path::new(&format!("/sys/block/nbd{n}/pid")).exists() {
            return Ok(dev);
        }
    }
    Err(CoreError::Unavailable("no free /dev/nbd device".into()).into())
}

/// Makes a kernel block device of `target` with the `requested` frontend (`Auto`: the best
/// this host has, see `select::probe`). The FUSE frontend mounts at `fuse_dir/<volume>`.
pub async fn attach_frontend(
    requested: FrontendKind,
    target: Arc<dyn BlockTarget>,
    fuse_dir: &Path,
    volume: &str,
) -> Result<Device> {
    let kind = select::probe().choose(requested).map_err(replica_error)?;
    let device = match kind {
        FrontendKind::Ublk => Device::Ublk(
            ublk::attach_async(target, ublk::UblkOptions::default())
                .await
                .map_err(replica_error)?,
        ),
        FrontendKind::Nbd => {
            // The module may not be loaded yet; modprobe creates the device nodes.
            let _ = std::process::Command::new("modprobe").arg("nbd").status();
            let dev = free_nbd_device()?;
            Device::Nbd(nbd::attach_kernel(&dev, target).map_err(replica_error)?)
        }
        FrontendKind::Fuse | FrontendKind::Auto => {
            let dir = fuse_dir.join(volume);
            std::fs::create_dir_all(&dir)
                .map_err(CoreError::io(format!("create {}", dir.display())))?;
            let mount = fuse::mount(&dir, "volume", target, tokio::runtime::Handle::current())
                .map_err(replica_error)?;
            let file = mount.path().to_path_buf();
            let attached = tokio::task::spawn_blocking(move || LoopDevices.attach_direct(&file))
                .await
                .map_err(|e| CoreError::Internal(e.to_string()))?
                .map_err(|e| CoreError::Internal(e.to_string()));
            match attached {
                Ok(loop_device) => Device::FuseLoop { loop_device, mount },
                // Dropping the mount unmounts it: nothing is left behind.
                Err(e) => return Err(e.into()),
            }
        }
    };
    tracing::info!(frontend = %kind, device = %device.path().display(), "volume attached as a block device");
    Ok(device)
}
