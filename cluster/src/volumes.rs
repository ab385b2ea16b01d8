//! What a PersistentVolume asks of this node: a pure function of the PV and this node's
//! name. Only the node that holds a volume deletes it.

use k8s_openapi::api::core::v1::PersistentVolume;

use crate::claims::{provisioned_by_warren, volume_node};

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

pub fn decide(volume: &PersistentVolume, me: &str) -> VolumeAction {
    use VolumeAction::*;
    if !provisioned_by_warren(volume) {
        return Nothing("not provisioned by Warren");
    }
    if volume_node(volume) != Some(me) {
        return Nothing("held by another node");
    }
    let spec = volume
        .spec
        .as_ref()
        .expect("provisioned_by_warren checked the spec");
    let handle = spec.csi.as_ref().expect("checked").volume_handle.clone();
    let policy = spec
        .persistent_volume_reclaim_policy
        .as_deref()
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
    use crate::claims::tests::volume;
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
}
