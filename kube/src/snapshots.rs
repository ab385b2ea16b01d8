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

use crate::claims::{acts_on, is_leader_owned_volume, warren_csi};
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

/// The handle that names a content's owner: its snapshot's, or, when that was never
/// recorded (a crash between taking the snapshot and writing its handle), its source
/// volume's.
pub fn owner_handle(content: &DynamicObject) -> Option<String> {
    content_status(content).snapshot_handle.or_else(|| {
        content.data["spec"]["source"]["volumeHandle"]
            .as_str()
            .map(str::to_string)
    })
}

/// Who acts on a snapshot once its source is gone, by the handle its content records.
#[derive(Debug, PartialEq, Eq)]
enum Owner {
    Node(String),
    Leader,
    Nobody,
}

/// The owner a content's `owner_handle` names.
fn owner_of_handle(handle: &str) -> Owner {
    if ids::is_nfs_snapshot(handle)
        || ids::is_nfs_volume(handle)
        || ids::is_replicated_volume(handle)
        || ids::is_replicated_snapshot(handle)
    {
        return Owner::Leader;
    }
    match ids::local_snapshot_node(handle).or_else(|| ids::local_volume_node(handle)) {
        Some(node) => Owner::Node(node),
        None => Owner::Nobody,
    }
}

/// What a VolumeSnapshot asks of this node. `class` is the snapshot's class (or the
/// default one), `claim`/`volume` its source claim and that claim's PV, as observed;
/// `content_handle` the CSI handle its bound content records (its snapshot handle, else
/// its source volume's), when the caller read it — for a snapshot being deleted whose
/// source volume is gone: the handle then says whose the snapshot is.
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
    // A snapshot outlives its source claim and volume: once they are gone, its content's
    // handle says whose it is — the node a local snapshot's handle names, the leader for
    // a snapshot of an NFS volume — and that one deletes it.
    if deleting && volume.is_none() {
        if !finalized {
            return Nothing("being deleted, nothing of Warren's holds it");
        }
        let delete = Delete {
            content: status.bound_volume_snapshot_content_name,
        };
        return match content_handle.map(owner_of_handle) {
            Some(Owner::Node(node)) if node == me => delete,
            Some(Owner::Node(_)) => Nothing("being deleted: another node holds the snapshot"),
            Some(Owner::Leader) if leader => delete,
            Some(Owner::Leader) => {
                Nothing("a snapshot of an NFS or replicated volume: the leader deletes it")
            }
            // No content, or one that names nothing Warren made: nothing to delete on any
            // node, only the finalizer to drop, and that is the leader's to do.
            None | Some(Owner::Nobody) if leader => delete,
            None | Some(Owner::Nobody) => Nothing("being deleted: the leader lets it go"),
        };
    }
    // Whose is it? The source volume's node, if the volume is Warren's; the leader's, if
    // it is an NFS volume.
    let Some(volume) = volume else {
        return Nothing("source volume not seen");
    };
    let Some(source) = warren_csi(volume) else {
        return Nothing("the source volume is not this node's");
    };
    if !acts_on(volume, me, leader) {
        return if is_leader_owned_volume(volume) {
            Nothing("the source is an NFS or replicated volume: the leader snapshots it")
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
    Take(self::Take {
        content_name: format!("snapcontent-{uid}"),
        snapshot_name: format!("snapshot-{uid}"),
        source_handle: source.volume_handle.clone(),
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
mod tests;
