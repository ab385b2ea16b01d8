//! NodePublishVolume, NodeUnpublishVolume and NodeGetVolumeStats of replicated volumes:
//! publishing is the same bind mount as for local volumes (of the staging mount, or of the
//! device node for raw block); stats add the engine's view of the replicas.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use warren_core::capability::{Access, Requested};
use warren_core::ids::ReplicatedVolumeId;
use warren_core::storage::Condition;
use warren_core::Error as CoreError;

use super::condition;
use super::stage::{blocking, ReplicatedStager};
use crate::error::{Error, Result};
use crate::loopdev::block_device_size;
use crate::mount_steps::{bind_device, bind_staged, unmount_all};
use crate::mountinfo::{self, mount_at};
use crate::stage::{remove_target, Stats};

impl ReplicatedStager {
    pub async fn publish(
        &self,
        id: &ReplicatedVolumeId,
        staging: PathBuf,
        target: PathBuf,
        cap: Requested,
        read_only: bool,
    ) -> Result<()> {
        let name = id.replica_name();
        let _guard = self.host.lock(name).await;
        let device = self.running.device(name);
        let (mounter, shown) = (self.mounter.clone(), id.to_string());
        blocking(move || {
            let mounts = mountinfo::read()?;
            match &cap.access {
                Access::Block => {
                    let device = device.ok_or_else(|| {
                        CoreError::FailedPrecondition(format!(
                            "volume {shown} is not staged on this node"
                        ))
                    })?;
                    bind_device(mounter.as_ref(), &mounts, &device, &target, &cap, read_only)
                }
                Access::Mount { mount_flags, .. } => bind_staged(
                    mounter.as_ref(),
                    &mounts,
                    &shown,
                    &staging,
                    &target,
                    &cap,
                    read_only,
                    mount_flags,
                    None,
                ),
            }
        })
        .await
    }

    pub async fn unpublish(&self, id: &ReplicatedVolumeId, target: PathBuf) -> Result<()> {
        let _guard = self.host.lock(id.replica_name()).await;
        let mounter = self.mounter.clone();
        blocking(move || {
            unmount_all(mounter.as_ref(), &target)?;
            remove_target(&target)
        })
        .await
    }

    /// Usage of the volume at `path` (a mount, or the published device node) and its
    /// health; NOT_FOUND when it is not staged on this node. Takes no lock: stats must
    /// answer while a slow stage holds it.
    pub async fn stats(
        &self,
        id: &ReplicatedVolumeId,
        path: PathBuf,
    ) -> Result<(Stats, Condition)> {
        let seen = self.running.seen(id.replica_name()).ok_or_else(|| {
            CoreError::NotFound(format!("volume {id} is not staged on this node"))
        })?;
        let mut health = condition(&seen.engine.status().await, &seen.replicas);
        let shown = path.clone();
        let (stats, mounted) = blocking(move || {
            let info = std::fs::metadata(&path).map_err(|_| {
                CoreError::NotFound(format!("volume path {} does not exist", path.display()))
            })?;
            let mounted = mount_at(&mountinfo::read()?, &path).is_some();
            let stats = if info.file_type().is_block_device() {
                Stats::Block {
                    bytes: block_device_size(&path)?,
                }
            } else {
                let st = nix::sys::statvfs::statvfs(&path).map_err(Error::sys("statvfs", &path))?;
                Stats::of(&st)
            };
            Ok((stats, mounted))
        })
        .await?;
        if !health.abnormal && !mounted {
            health = Condition::abnormal(format!("{} is not mounted", shown.display()));
        }
        Ok((stats, health))
    }
}
