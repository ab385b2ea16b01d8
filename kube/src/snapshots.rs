//! VolumeSnapshots in the edge mode: what the snapshot-controller and the csi-snapshotter
//! sidecar do in a standard deployment, done by the node that holds the source volume —
//! by the leader when the source is an NFS volume, which no node holds.
//!
//! The VolumeSnapshotContent gets the name the snapshot-controller would give it
//! (`snapcontent-<snapshot uid>`) and the CSI snapshot the name csi-snapshotter would
//! (`snapshot-<snapshot uid>`), so if a cluster runs the snapshot-controller as well, both
//! converge on the same objects instead of making two snapshots.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::core::DynamicObject;
use serde::Deserialize;

use warren_core::ids;

use crate::claims::{acts_on, is_nfs_volume, provisioned_by_warren};
use crate::DRIVER;

/// Warren's finalizer on the VolumeSnapshots it serves: the object stays until the
/// snapshot's storage is dealt with by its deletion policy.
pub const FINALIZER: &str = "warren.csi.dev/delete-snapshot";
pub const DEFAULT_CLASS: &str = "snapshot.storage.kubernetes.io/is-default-class";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSpec {
    pub source: SnapshotSource,
    pub volume_snapshot_class_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSource {
    pub persistent_volume_claim_name: Option<String>,
    pub volume_snapshot_content_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    pub bound_volume_snapshot_content_name: Option<String>,
    pub ready_to_use: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotClass {
    pub driver: String,
    pub deletion_policy: String,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentStatus {
    pub snapshot_handle: Option<String>,
    pub ready_to_use: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SnapshotAction {
    Nothing(&'static str),
    /// Make sure the content object exists, take the snapshot, record it on both objects.
    Take(Take),
    /// The VolumeSnapshot is being deleted: apply the content's deletion policy, then let
    /// the object go.
    Delete {
        content: Option<String>,
    },
    Refuse(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Take {
    pub content_name: String,
    pub snapshot_name: String,
    pub source_handle: String,
    pub class_name: String,
    pub deletion_policy: String,
    pub parameters: BTreeMap<String, String>,
}

fn spec_of<T: for<'de> Deserialize<'de> + Default>(object: &DynamicObject, field: &str) -> T {
    object
        .data
        .get(field)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

pub fn snapshot_spec(snapshot: &DynamicObject) -> SnapshotSpec {
    spec_of(snapshot, "spec")
}

pub fn snapshot_status(snapshot: &DynamicObject) -> SnapshotStatus {
    spec_of(snapshot, "status")
}

pub fn class_of(class: &DynamicObject) -> SnapshotClass {
    // A VolumeSnapshotClass keeps its fields at the top level, not under `spec`.
    serde_json::from_value(class.data.clone()).unwrap_or_default()
}

pub fn content_status(content: &DynamicObject) -> ContentStatus {
    spec_of(content, "status")
}

/// `decide_as` for a node that does not lead, knowing no content's handle (snapshots of
/// local volumes need neither).
pub fn decide(
    snapshot: &DynamicObject,
    class: Option<&DynamicObject>,
    claim: Option<&PersistentVolumeClaim>,
    volume: Option<&PersistentVolume>,
    me: &str,
) -> SnapshotAction {
    decide_as(snapshot, class, claim, volume, me, false, None)
}

/// What a VolumeSnapshot asks of this node. `class` is the snapshot's class (or the
/// default one), `claim`/`volume` its source claim and that claim's PV, as observed;
/// `content_handle` the CSI handle its bound content records, when the caller read it
/// (for a snapshot being deleted): a snapshot of an NFS volume (`nfssnap#…`) is the
/// leader's even once its source claim and volume are gone.
pub fn decide_as(
    snapshot: &DynamicObject,
    class: Option<&DynamicObject>,
    claim: Option<&PersistentVolumeClaim>,
    volume: Option<&PersistentVolume>,
    me: &str,
    leader: bool,
    content_handle: Option<&str>,
) -> SnapshotAction {
    use SnapshotAction::*;
    let spec = snapshot_spec(snapshot);
    let status = snapshot_status(snapshot);
    let Some(uid) = snapshot.metadata.uid.as_deref() else {
        return Nothing("no uid yet");
    };
    let finalized = snapshot
        .metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER));
    if spec.source.persistent_volume_claim_name.is_none() {
        return Nothing("a pre-provisioned snapshot: nothing to take");
    }
    let deleting = snapshot.metadata.deletion_timestamp.is_some();
    // A snapshot of an NFS volume outlives its source: its handle says it is the leader's.
    if deleting && volume.is_none() && content_handle.is_some_and(ids::is_nfs_snapshot) {
        return match (finalized, leader) {
            (false, _) => Nothing("being deleted, nothing of Warren's holds it"),
            (true, false) => Nothing("a snapshot of an NFS volume: the leader deletes it"),
            (true, true) => Delete {
                content: status.bound_volume_snapshot_content_name,
            },
        };
    }
    // Whose is it? The source volume's node, if the volume is Warren's; the leader's, if
    // it is an NFS volume.
    let Some(volume) = volume else {
        return Nothing("source volume not seen");
    };
    if !provisioned_by_warren(volume) {
        return Nothing("the source volume is not this node's");
    }
    if !acts_on(volume, me, leader) {
        return if is_nfs_volume(volume) {
            Nothing("the source is an NFS volume: the leader snapshots it")
        } else {
            Nothing("the source volume is not this node's")
        };
    }
    if deleting {
        return if finalized {
            Delete {
                content: status.bound_volume_snapshot_content_name,
            }
        } else {
            Nothing("being deleted, nothing of Warren's holds it")
        };
    }
    if status.ready_to_use == Some(true) && status.bound_volume_snapshot_content_name.is_some() {
        return Nothing("taken");
    }
    let Some(class_object) = class else {
        return Refuse("no VolumeSnapshotClass of Warren's: name one, or mark one default".into());
    };
    let class = class_of(class_object);
    if class.driver != DRIVER {
        return Nothing("its class belongs to another driver");
    }
    let claim_bound = claim
        .and_then(|c| c.spec.as_ref()?.volume_name.as_deref())
        .is_some_and(|v| Some(v) == volume.metadata.name.as_deref());
    if !claim_bound {
        return Nothing("the source claim is not bound to that volume");
    }
    let handle = volume
        .spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .map(|c| c.volume_handle.clone())
        .expect("provisioned_by_warren checked the CSI source");
    Take(self::Take {
        content_name: format!("snapcontent-{uid}"),
        snapshot_name: format!("snapshot-{uid}"),
        source_handle: handle,
        class_name: class_object.metadata.name.clone().unwrap_or_default(),
        deletion_policy: if class.deletion_policy.is_empty() {
            "Delete".into()
        } else {
            class.deletion_policy
        },
        parameters: class.parameters,
    })
}

/// The class a snapshot uses: the one it names, else the default class of Warren's.
pub fn pick_class<'a>(
    snapshot: &DynamicObject,
    classes: &'a [DynamicObject],
) -> Option<&'a DynamicObject> {
    match snapshot_spec(snapshot).volume_snapshot_class_name {
        Some(name) => classes
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name.as_str())),
        None => classes.iter().find(|c| {
            class_of(c).driver == DRIVER
                && c.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(DEFAULT_CLASS))
                    .is_some_and(|v| v == "true")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::tests::{claim, nfs_volume, share_volume, volume, NFS_HANDLE, SHARE_HANDLE};
    use serde_json::json;

    fn snapshot(extra: serde_json::Value) -> DynamicObject {
        let mut object = json!({
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshot",
            "metadata": {"name": "snap", "namespace": "default", "uid": "77"},
            "spec": {"source": {"persistentVolumeClaimName": "data"}, "volumeSnapshotClassName": "warren"},
        });
        object
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(object).unwrap()
    }

    fn class(driver: &str, default: bool) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshotClass",
            "metadata": {"name": "warren", "annotations": {DEFAULT_CLASS: default.to_string()}},
            "driver": driver,
            "deletionPolicy": "Retain",
        }))
        .unwrap()
    }

    fn bound_claim() -> PersistentVolumeClaim {
        claim(json!({}), json!({"volumeName": "pvc-1234"}))
    }

    #[test]
    fn the_source_volumes_node_takes_the_snapshot() {
        let s = snapshot(json!({}));
        let c = class(DRIVER, false);
        let pv = volume("n1", "1Gi");
        let SnapshotAction::Take(take) =
            decide(&s, Some(&c), Some(&bound_claim()), Some(&pv), "n1")
        else {
            panic!("n1 holds the source");
        };
        assert_eq!(take.content_name, "snapcontent-77");
        assert_eq!(take.snapshot_name, "snapshot-77");
        assert_eq!(take.source_handle, "local#image#n1#0123");
        assert_eq!(take.deletion_policy, "Retain");
        assert!(matches!(
            decide(&s, Some(&c), Some(&bound_claim()), Some(&pv), "n2"),
            SnapshotAction::Nothing(_)
        ));
        // Done already: nothing more.
        let done = snapshot(
            json!({"status": {"readyToUse": true, "boundVolumeSnapshotContentName": "snapcontent-77"}}),
        );
        assert!(matches!(
            decide(&done, Some(&c), Some(&bound_claim()), Some(&pv), "n1"),
            SnapshotAction::Nothing(_)
        ));
    }

    #[test]
    fn classes_and_sources_that_are_not_warrens() {
        let s = snapshot(json!({}));
        let pv = volume("n1", "1Gi");
        assert!(matches!(
            decide(&s, None, Some(&bound_claim()), Some(&pv), "n1"),
            SnapshotAction::Refuse(_)
        ));
        let other = class("hostpath.csi.k8s.io", false);
        assert!(matches!(
            decide(&s, Some(&other), Some(&bound_claim()), Some(&pv), "n1"),
            SnapshotAction::Nothing(_)
        ));
        let mut foreign = pv.clone();
        foreign.metadata.annotations = None;
        let c = class(DRIVER, false);
        assert!(matches!(
            decide(&s, Some(&c), Some(&bound_claim()), Some(&foreign), "n1"),
            SnapshotAction::Nothing(_)
        ));
        let unbound = claim(json!({}), json!({}));
        assert!(matches!(
            decide(&s, Some(&c), Some(&unbound), Some(&pv), "n1"),
            SnapshotAction::Nothing(_)
        ));
        let preprovisioned =
            snapshot(json!({"spec": {"source": {"volumeSnapshotContentName": "x"}}}));
        assert!(matches!(
            decide(&preprovisioned, Some(&c), None, None, "n1"),
            SnapshotAction::Nothing(_)
        ));
    }

    #[test]
    fn deletion_goes_through_warrens_finalizer() {
        let pv = volume("n1", "1Gi");
        let c = class(DRIVER, false);
        let deleting = snapshot(
            json!({"metadata": {"name": "snap", "namespace": "default", "uid": "77",
            "deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": [FINALIZER]},
            "status": {"boundVolumeSnapshotContentName": "snapcontent-77"}}),
        );
        assert_eq!(
            decide(&deleting, Some(&c), Some(&bound_claim()), Some(&pv), "n1"),
            SnapshotAction::Delete {
                content: Some("snapcontent-77".into())
            }
        );
        assert!(matches!(
            decide(&deleting, Some(&c), Some(&bound_claim()), Some(&pv), "n2"),
            SnapshotAction::Nothing(_)
        ));
    }

    #[test]
    fn the_default_class_is_used_when_none_is_named() {
        let classes = vec![class("other.csi", true), {
            let mut c = class(DRIVER, true);
            c.metadata.name = Some("warren-default".into());
            c
        }];
        let unnamed = snapshot(json!({"spec": {"source": {"persistentVolumeClaimName": "data"}}}));
        assert_eq!(
            pick_class(&unnamed, &classes)
                .and_then(|c| c.metadata.name.clone())
                .as_deref(),
            Some("warren-default")
        );
        let named = snapshot(json!({}));
        assert_eq!(
            pick_class(&named, &classes)
                .and_then(|c| c.metadata.name.clone())
                .as_deref(),
            Some("warren")
        );
    }

    #[test]
    fn the_leader_snapshots_an_nfs_volume() {
        let s = snapshot(json!({}));
        let c = class(DRIVER, false);
        let pv = nfs_volume("1Gi");
        let SnapshotAction::Take(take) = decide_as(
            &s,
            Some(&c),
            Some(&bound_claim()),
            Some(&pv),
            "n2",
            true,
            None,
        ) else {
            panic!("the leader snapshots an NFS volume");
        };
        assert_eq!(take.source_handle, NFS_HANDLE);
        assert_eq!(take.content_name, "snapcontent-77");
        assert_eq!(take.snapshot_name, "snapshot-77");
        assert_eq!(
            decide_as(
                &s,
                Some(&c),
                Some(&bound_claim()),
                Some(&pv),
                "n1",
                false,
                None
            ),
            SnapshotAction::Nothing("the source is an NFS volume: the leader snapshots it")
        );
        assert!(matches!(
            decide(&s, Some(&c), Some(&bound_claim()), Some(&pv), "n1"),
            SnapshotAction::Nothing(_)
        ));
        // A local source stays its node's, whoever leads.
        let local = volume("n1", "1Gi");
        assert!(matches!(
            decide_as(
                &s,
                Some(&c),
                Some(&bound_claim()),
                Some(&local),
                "n2",
                true,
                None
            ),
            SnapshotAction::Nothing(_)
        ));
        assert!(matches!(
            decide_as(
                &s,
                Some(&c),
                Some(&bound_claim()),
                Some(&local),
                "n1",
                false,
                None
            ),
            SnapshotAction::Take(_)
        ));
    }

    #[test]
    fn the_leader_deletes_nfs_snapshots_even_without_their_source() {
        let c = class(DRIVER, false);
        let deleting = snapshot(
            json!({"metadata": {"name": "snap", "namespace": "default", "uid": "77",
            "deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": [FINALIZER]},
            "status": {"boundVolumeSnapshotContentName": "snapcontent-77"}}),
        );
        let want = SnapshotAction::Delete {
            content: Some("snapcontent-77".into()),
        };
        // Source still there: the leader, by the volume's handle.
        let pv = nfs_volume("1Gi");
        assert_eq!(
            decide_as(
                &deleting,
                Some(&c),
                Some(&bound_claim()),
                Some(&pv),
                "n2",
                true,
                None
            ),
            want
        );
        assert!(matches!(
            decide_as(
                &deleting,
                Some(&c),
                Some(&bound_claim()),
                Some(&pv),
                "n1",
                false,
                None
            ),
            SnapshotAction::Nothing(_)
        ));
        // Source claim and volume gone: the leader, by the snapshot's handle.
        let handle = Some("nfssnap#10.0.0.5#/srv#0123456789abcdef0123456789abcdef");
        assert_eq!(
            decide_as(&deleting, Some(&c), None, None, "n2", true, handle),
            want
        );
        assert!(matches!(
            decide_as(&deleting, Some(&c), None, None, "n1", false, handle),
            SnapshotAction::Nothing(_)
        ));
        // Without Warren's finalizer it is not Warren's to finish.
        let unfinalized = snapshot(
            json!({"metadata": {"name": "snap", "namespace": "default", "uid": "77",
            "deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["other"]},
            "status": {"boundVolumeSnapshotContentName": "snapcontent-77"}}),
        );
        assert!(matches!(
            decide_as(&unfinalized, Some(&c), None, None, "n2", true, handle),
            SnapshotAction::Nothing(_)
        ));
        // A local snapshot's handle moves nothing to the leader (as before: its source's
        // node decides).
        let local = Some("snap#image#n1#0123456789abcdef0123456789abcdef");
        assert!(matches!(
            decide_as(&deleting, Some(&c), None, None, "n2", true, local),
            SnapshotAction::Nothing(_)
        ));
    }

    #[test]
    fn a_shared_volumes_node_takes_its_snapshots() {
        let s = snapshot(json!({}));
        let c = class(DRIVER, false);
        let pv = share_volume("1Gi");
        let SnapshotAction::Take(take) =
            decide(&s, Some(&c), Some(&bound_claim()), Some(&pv), "n2")
        else {
            panic!("n2 holds the shared source");
        };
        assert_eq!(take.source_handle, SHARE_HANDLE);
        assert_eq!(
            decide_as(
                &s,
                Some(&c),
                Some(&bound_claim()),
                Some(&pv),
                "n1",
                true,
                None
            ),
            SnapshotAction::Nothing("the source volume is not this node's")
        );
    }
}
