//! What a VolumeCapability asks for, checked once for both controller and node.
//! Local volumes live on one node, so only the single-node access modes are offered for
//! them; NFS volumes take every mode.

use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::volume_capability::AccessType;
use csi_proto::v1::VolumeCapability;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Mount {
        fs_type: String,
        mount_flags: Vec<String>,
    },
    Block,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    pub access: Access,
    pub mode: Mode,
}

impl Requested {
    /// Reader-only modes mean every mount is read-only, whatever `readonly` says.
    pub fn read_only_mode(&self) -> bool {
        matches!(
            self.mode,
            Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly
        )
    }
}

/// Parses one capability of a volume that lives on one node (local volumes);
/// INVALID_ARGUMENT when it is incomplete or asks for a multi-node access mode.
pub fn parse_capability(cap: &VolumeCapability) -> Result<Requested> {
    let requested = parse_shared_capability(cap)?;
    match requested.mode {
        Mode::SingleNodeWriter
        | Mode::SingleNodeReaderOnly
        | Mode::SingleNodeSingleWriter
        | Mode::SingleNodeMultiWriter => Ok(requested),
        multi => Err(Error::InvalidArgument(format!(
            "access mode {} is not supported by local volumes: they live on one node \
             (use ReadWriteOnce or ReadWriteOncePod)",
            multi.as_str_name()
        ))),
    }
}

/// Parses one capability of a volume every node can reach (NFS): any access mode.
pub fn parse_shared_capability(cap: &VolumeCapability) -> Result<Requested> {
    let access = match &cap.access_type {
        Some(AccessType::Mount(m)) => Access::Mount {
            fs_type: m.fs_type.clone(),
            mount_flags: m.mount_flags.clone(),
        },
        Some(AccessType::Block(_)) => Access::Block,
        None => {
            return Err(Error::InvalidArgument(
                "volume_capability.access_type (mount or block) is required".into(),
            ))
        }
    };
    let mode = cap
        .access_mode
        .as_ref()
        .and_then(|m| Mode::try_from(m.mode).ok())
        .unwrap_or(Mode::Unknown);
    match mode {
        Mode::Unknown => Err(Error::InvalidArgument(
            "volume_capability.access_mode is required".into(),
        )),
        mode => Ok(Requested { access, mode }),
    }
}

/// Parses a list of capabilities; at least one is required.
pub fn parse_capabilities(caps: &[VolumeCapability]) -> Result<Vec<Requested>> {
    required(caps)?.iter().map(parse_capability).collect()
}

/// Parses a list of capabilities of a volume every node can reach.
pub fn parse_shared_capabilities(caps: &[VolumeCapability]) -> Result<Vec<Requested>> {
    required(caps)?
        .iter()
        .map(parse_shared_capability)
        .collect()
}

fn required(caps: &[VolumeCapability]) -> Result<&[VolumeCapability]> {
    if caps.is_empty() {
        return Err(Error::InvalidArgument(
            "volume_capabilities is required".into(),
        ));
    }
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi_proto::v1::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn cap(access: Option<AccessType>, mode: Mode) -> VolumeCapability {
        VolumeCapability {
            access_type: access,
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    #[test]
    fn single_node_modes_pass_multi_node_modes_fail() {
        let mount = || Some(AccessType::Mount(MountVolume::default()));
        assert!(parse_capability(&cap(mount(), Mode::SingleNodeWriter)).is_ok());
        let r = parse_capability(&cap(
            Some(AccessType::Block(BlockVolume {})),
            Mode::SingleNodeReaderOnly,
        ))
        .unwrap();
        assert_eq!(r.access, Access::Block);
        assert!(r.read_only_mode());
        for bad in [
            cap(mount(), Mode::MultiNodeMultiWriter),
            cap(mount(), Mode::MultiNodeReaderOnly),
            cap(mount(), Mode::Unknown),
            cap(None, Mode::SingleNodeWriter),
        ] {
            let err = parse_capability(&bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
        }
        assert!(parse_capabilities(&[]).is_err());
    }

    #[test]
    fn shared_volumes_take_every_mode_and_reader_modes_are_read_only() {
        let mount = || Some(AccessType::Mount(MountVolume::default()));
        for mode in [Mode::MultiNodeMultiWriter, Mode::MultiNodeSingleWriter] {
            let r = parse_shared_capability(&cap(mount(), mode)).unwrap();
            assert!(!r.read_only_mode());
        }
        let r = parse_shared_capability(&cap(mount(), Mode::MultiNodeReaderOnly)).unwrap();
        assert!(r.read_only_mode());
        assert!(parse_shared_capability(&cap(mount(), Mode::Unknown)).is_err());
        assert!(parse_shared_capability(&cap(None, Mode::MultiNodeMultiWriter)).is_err());
        assert!(parse_shared_capabilities(&[]).is_err());
    }
}
