//! Access modes and volume modes as CSI capabilities.

use csi_proto::v1::volume_capability::{
    access_mode, AccessMode, AccessType, BlockVolume, MountVolume,
};
use csi_proto::v1::VolumeCapability;

/// One capability per access mode, as external-provisioner sends them.
pub(crate) fn capabilities(
    modes: &[String],
    block: bool,
    fs_type: &str,
    mount_flags: &[String],
) -> Vec<VolumeCapability> {
    let modes: Vec<access_mode::Mode> = if modes.is_empty() {
        vec![access_mode::Mode::SingleNodeWriter]
    } else {
        modes.iter().map(|m| csi_access_mode(m)).collect()
    };
    modes
        .into_iter()
        .map(|mode| VolumeCapability {
            access_type: Some(if block {
                AccessType::Block(BlockVolume {})
            } else {
                AccessType::Mount(MountVolume {
                    fs_type: fs_type.to_string(),
                    mount_flags: mount_flags.to_vec(),
                    volume_mount_group: String::new(),
                })
            }),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        })
        .collect()
}

fn csi_access_mode(mode: &str) -> access_mode::Mode {
    match mode {
        "ReadWriteOnce" => access_mode::Mode::SingleNodeWriter,
        "ReadWriteOncePod" => access_mode::Mode::SingleNodeSingleWriter,
        "ReadOnlyMany" => access_mode::Mode::MultiNodeReaderOnly,
        "ReadWriteMany" => access_mode::Mode::MultiNodeMultiWriter,
        _ => access_mode::Mode::Unknown,
    }
}
