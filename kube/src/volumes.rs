//! What a PersistentVolume asks of this node: a pure function of the PV, this node's
//! name and whether it leads. Only the node that holds a local volume deletes it; an NFS
//! volume (handle `nfs#…`), which no node holds, is deleted by the leader.

use k8s_openapi::api::core::v1::PersistentVolume;

use crate::claims::{acts_on, is_leader_owned_volume, warren_csi};

/// Warren's finalizer on the PVs it provisions with reclaim policy Delete: the PV object
/// cannot vanish (`kubectl delete pv`) before its storage is deleted.
pub const FINALIZER: &str = "warren.csi.dev/delete-volume";

#[derive(Debug, Clone, PartialEq)]
pub enum VolumeAction {
    Nothing(&'static str),
    /// Delete the storage, then the PV object (and our finalizer on it).
    Delete {
        volume_handle: String,
    },
    /// The PV is going away and its storage is to be kept: just let it go.
    ReleaseFinalizer,
}

/// `decide_as` for a node that does not lead (local volumes do not care who leads).
pub fn decide(volume: &PersistentVolume, me: &str) -> VolumeAction {
    decide_as(volume, me, false)
}

pub fn decide_as(volume: &PersistentVolume, me: &str, leader: bool) -> VolumeAction {
    use VolumeAction::*;
    let Some(csi) = warren_csi(volume) else {
        return Nothing("not provisioned by Warren");
    };
    if !acts_on(volume, me, leader) {
        return if is_leader_owned_volume(volume) {
            Nothing("an NFS or replicated volume: the leader deletes it")
        } else {
            Nothing("held by another node")
        };
    }
    let handle = csi.volume_handle.clone();
    let policy = volume
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Delete");
    let phase = volume
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    let finalized = volume
        .metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER));
    if volume.metadata.deletion_timestamp.is_some() {
        if !finalized {
            return Nothing("being deleted, nothing of Warren's holds it");
        }
        if phase == "Bound" {
            // kubernetes.io/pv-protection keeps it until the claim lets go; never pull
            // storage from under a bound claim.
            return Nothing("being deleted but still bound");
        }
        return if policy == "Delete" {
            Delete {
                volume_handle: handle,
            }
        } else {
            ReleaseFinalizer
        };
    }
    if phase == "Released" && policy == "Delete" {
        return Delete {
            volume_handle: handle,
        };
    }
    Nothing("in use, or kept by its reclaim policy")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::fixtures::{
        nfs_volume, replicated_volume, share_volume, volume, NFS_HANDLE, REPLICATED_HANDLE,
        SHARE_HANDLE,
    };
    use serde_json::json;

    fn with(mut pv: PersistentVolume, phase: &str, policy: &str) -> PersistentVolume {
        pv.status = Some(serde_json::from_value(json!({"phase": phase})).unwrap());
        pv.spec.as_mut().unwrap().persistent_volume_reclaim_policy = Some(policy.into());
        pv
    }

    #[test]
    fn released_volumes_are_deleted_by_their_node_only_under_delete() {
        let handle = "local#image#n1#0123".to_string();
        let released = with(volume("n1", "1Gi"), "Released", "Delete");
        assert_eq!(
            decide(&released, "n1"),
            VolumeAction::Delete {
                volume_handle: handle
            }
        );
        assert!(matches!(decide(&released, "n2"), VolumeAction::Nothing(_)));
        let kept = with(volume("n1", "1Gi"), "Released", "Retain");
        assert!(matches!(decide(&kept, "n1"), VolumeAction::Nothing(_)));
        let bound = with(volume("n1", "1Gi"), "Bound", "Delete");
        assert!(matches!(decide(&bound, "n1"), VolumeAction::Nothing(_)));
    }

    #[test]
    fn a_deleted_pv_object_deletes_its_storage_only_once_unbound() {
        let deleted = |phase: &str, policy: &str| {
            let mut pv = with(volume("n1", "1Gi"), phase, policy);
            pv.metadata.deletion_timestamp =
                Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
            pv.metadata.finalizers =
                Some(vec![FINALIZER.into(), "kubernetes.io/pv-protection".into()]);
            pv
        };
        assert!(matches!(
            decide(&deleted("Bound", "Delete"), "n1"),
            VolumeAction::Nothing(_)
        ));
        assert!(matches!(
            decide(&deleted("Available", "Delete"), "n1"),
            VolumeAction::Delete { .. }
        ));
        assert_eq!(
            decide(&deleted("Released", "Retain"), "n1"),
            VolumeAction::ReleaseFinalizer
        );
        let mut foreign = deleted("Released", "Delete");
        foreign.metadata.annotations = None;
        assert!(matches!(decide(&foreign, "n1"), VolumeAction::Nothing(_)));
    }

    #[test]
    fn replicated_volumes_are_deleted_by_the_leader_only() {
        let released = with(replicated_volume("1Gi"), "Released", "Delete");
        assert_eq!(
            decide_as(&released, "n3", true),
            VolumeAction::Delete {
                volume_handle: REPLICATED_HANDLE.to_string()
            }
        );
        assert!(matches!(
            decide_as(&released, "n1", false),
            VolumeAction::Nothing(_)
        ));
    }

    #[test]
    fn nfs_volumes_are_deleted_by_the_leader_only() {
        let handle = NFS_HANDLE.to_string();
        let released = with(nfs_volume("1Gi"), "Released", "Delete");
        assert_eq!(
            decide_as(&released, "n2", true),
            VolumeAction::Delete {
                volume_handle: handle.clone()
            }
        );
        assert_eq!(
            decide_as(&released, "n1", false),
            VolumeAction::Nothing("an NFS or replicated volume: the leader deletes it")
        );
        assert!(matches!(decide(&released, "n1"), VolumeAction::Nothing(_)));
        let kept = with(nfs_volume("1Gi"), "Released", "Retain");
        assert!(matches!(
            decide_as(&kept, "n1", true),
            VolumeAction::Nothing(_)
        ));
        let bound = with(nfs_volume("1Gi"), "Bound", "Delete");
        assert!(matches!(
            decide_as(&bound, "n1", true),
            VolumeAction::Nothing(_)
        ));
        // A PV object deleted by hand: the leader deletes the storage once unbound, or
        // just lets the object go under Retain.
        let deleted = |phase: &str, policy: &str| {
            let mut pv = with(nfs_volume("1Gi"), phase, policy);
            pv.metadata.deletion_timestamp =
                Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
            pv.metadata.finalizers = Some(vec![FINALIZER.into()]);
            pv
        };
        assert_eq!(
            decide_as(&deleted("Available", "Delete"), "n1", true),
            VolumeAction::Delete {
                volume_handle: handle
            }
        );
        assert!(matches!(
            decide_as(&deleted("Available", "Delete"), "n1", false),
            VolumeAction::Nothing(_)
        ));
        assert!(matches!(
            decide_as(&deleted("Bound", "Delete"), "n1", true),
            VolumeAction::Nothing(_)
        ));
        assert_eq!(
            decide_as(&deleted("Released", "Retain"), "n1", true),
            VolumeAction::ReleaseFinalizer
        );
        // Leading changes nothing for a local volume: still its node's alone.
        let local = with(volume("n1", "1Gi"), "Released", "Delete");
        assert!(matches!(
            decide_as(&local, "n2", true),
            VolumeAction::Nothing(_)
        ));
        assert!(matches!(
            decide_as(&local, "n1", false),
            VolumeAction::Delete { .. }
        ));
    }

    #[test]
    fn shared_volumes_are_deleted_by_the_node_in_their_handle() {
        // No node affinity on a shared volume's PV: its handle names its node.
        let released = with(share_volume("1Gi"), "Released", "Delete");
        assert_eq!(
            decide(&released, "n2"),
            VolumeAction::Delete {
                volume_handle: SHARE_HANDLE.into()
            }
        );
        assert_eq!(
            decide_as(&released, "n1", true),
            VolumeAction::Nothing("held by another node")
        );
        let kept = with(share_volume("1Gi"), "Released", "Retain");
        assert!(matches!(decide(&kept, "n2"), VolumeAction::Nothing(_)));
    }
}
