//! What a node request asks for, read from its fields: the capability (with the class's
//! fsType filled in), the NFS mount of another node's shared volume, and the usage entries
//! of a stats answer. Pure functions of the request.

use std::collections::HashMap;

use csi_proto::v1::volume_usage::Unit;
use csi_proto::v1::{VolumeCapability, VolumeUsage};
use tonic::Status;
use warren_core::capability::{parse_capability, parse_shared_capability, Access, Requested};
use warren_core::ids::VolumeId;
use warren_core::params::{CONTEXT_FS_TYPE, CONTEXT_SHARE};
use warren_nfs::mount_options::MountRequest;

use super::{required, Target};
use crate::nfs::NfsStager;
use crate::stage::Stats;

/// The capability's fsType wins; the StorageClass's `fsType` fills in when it is empty.
pub(super) fn default_fs_type(cap: &mut Requested, context: &HashMap<String, String>) {
    if let (Access::Mount { fs_type, .. }, Some(default)) =
        (&mut cap.access, context.get(CONTEXT_FS_TYPE))
    {
        if fs_type.is_empty() {
            *fs_type = default.clone();
        }
    }
}

/// The capability of a node request: every access mode for volumes several nodes can
/// reach (NFS, shared), single-node modes for the others.
pub(super) fn capability(
    target: &Target,
    cap: Option<&VolumeCapability>,
    context: &HashMap<String, String>,
) -> Result<Requested, Status> {
    let cap = required("volume_capability", cap)?;
    let shared = context.contains_key(CONTEXT_SHARE);
    match target {
        Target::Local(_) if !shared => parse_capability(cap),
        Target::Replicated(_) => parse_capability(cap),
        _ => parse_shared_capability(cap),
    }
    .map_err(Status::from)
}

/// The mount of another node's shared volume, from the volume context the controller gave.
pub(super) fn share_request(
    id: &VolumeId,
    context: &HashMap<String, String>,
    cap: &Requested,
) -> Result<MountRequest, Status> {
    let endpoint = context.get(CONTEXT_SHARE).ok_or_else(|| {
        Status::not_found(format!(
            "volume {id} lives on node {} and is not shared with other nodes",
            id.node
        ))
    })?;
    NfsStager::share_request(endpoint, id.key.as_str(), cap).map_err(Status::from)
}

/// NodeGetVolumeStats's usage entries.
pub(super) fn usage(stats: Option<Stats>) -> Vec<VolumeUsage> {
    match stats {
        None => vec![],
        Some(Stats::Block { bytes }) => vec![VolumeUsage {
            total: bytes as i64,
            unit: Unit::Bytes as i32,
            ..Default::default()
        }],
        Some(Stats::Fs {
            bytes_total,
            bytes_available,
            bytes_used,
            inodes_total,
            inodes_free,
            inodes_used,
        }) => vec![
            VolumeUsage {
                available: bytes_available as i64,
                total: bytes_total as i64,
                used: bytes_used as i64,
                unit: Unit::Bytes as i32,
            },
            VolumeUsage {
                available: inodes_free as i64,
                total: inodes_total as i64,
                used: inodes_used as i64,
                unit: Unit::Inodes as i32,
            },
        ],
    }
}
