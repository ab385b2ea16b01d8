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
use crate::loopdev::{block_device_size, set_capacity, BlockDevices, LoopDevices};

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
                // `<fuse_dir>/<volume>`, made by `attach_frontend`.
                let mount_point = mount.mountpoint().to_path_buf();
                // The loop device lets go of the file asynchronously.
                let mut unmounted = false;
                for _ in 0..50 {
                    if mount.unmount().is_ok() {
                        unmounted = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if !unmounted {
                    mount.unmount().map_err(replica_error)?;
                }
                // Empty once unmounted; remove_dir never takes anything with it.
                match std::fs::remove_dir(&mount_point) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(
                        dir = %mount_point.display(), error = %e,
                        "cannot remove the FUSE mount point"
                    ),
                }
            }
        }
        Ok(())
    }
}

/// What makes a volume's kernel device show its engine's size after the engine grew
/// (online expansion). Owned, so it runs off the runtime without holding the device.
pub enum Resize {
    /// The kernel re-reads the FUSE file's size, then the loop device the file's.
    FuseLoop {
        refresh: fuse::SizeRefresh,
        loop_device: PathBuf,
    },
    /// ublk and kernel NBD devices keep the size they were attached with: Warren does not
    /// change it online (see `Resize::to`).
    Fixed {
        frontend: &'static str,
        device: PathBuf,
    },
}

impl Device {
    pub fn resize(&self) -> Result<Resize> {
        Ok(match self {
            Device::Ublk(d) => Resize::Fixed {
                frontend: "ublk",
                device: d.device().to_path_buf(),
            },
            Device::Nbd(d) => Resize::Fixed {
                frontend: "nbd",
                device: d.device().to_path_buf(),
            },
            Device::FuseLoop { loop_device, mount } => Resize::FuseLoop {
                refresh: mount.size_refresh().map_err(replica_error)?,
                loop_device: loop_device.clone(),
            },
        })
    }
}

impl Resize {
    /// Makes the device show `size` bytes (the engine's size) and returns its size then.
    /// Blocking. A device that shows `size` already needs nothing, whatever its frontend
    /// (a volume expanded while not staged starts at its new size).
    pub fn to(self, size: u64) -> Result<u64> {
        match self {
            Resize::FuseLoop {
                refresh,
                loop_device,
            } => {
                let file = refresh.run().map_err(replica_error)?;
                if file < size {
                    return Err(CoreError::Internal(format!(
                        "the kernel sees {file} bytes in the volume's FUSE file, not {size}"
                    ))
                    .into());
                }
                set_capacity(&loop_device)?;
                block_device_size(&loop_device)
            }
            Resize::Fixed { frontend, device } => {
                let shown = block_device_size(&device)?;
                if shown >= size {
                    return Ok(shown);
                }
                // The ublk driver's size change (UBLK_CMD_UPDATE_SIZE, Linux 6.16) and
                // NBD's NBD_SET_SIZE on a connected device are not used (nor tested in the
                // kernel lab) yet: say so rather than pretend.
                Err(CoreError::FailedPrecondition(format!(
                    "online expansion is not available for volumes served through {frontend} \
                     ({} shows {shown} bytes, the volume has {size}): unstage the volume and \
                     stage it again, which starts it at its new size and grows its file system",
                    device.display()
                ))
                .into())
            }
        }
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
            let attached = nbd::attach_kernel(&dev, target).map_err(replica_error)?;
            // Before anything reads it (stage probes it for a file system).
            if let Err(e) = attached.started(Duration::from_secs(10)).await {
                let _ = attached.detach().await;
                return Err(replica_error(e).into());
            }
            Device::Nbd(attached)
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
