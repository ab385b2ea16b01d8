//! What a PersistentVolumeClaim asks of this node: a pure function of the claim, its
//! StorageClass, the volume it is bound to (if any), this node's name, and whether this
//! node leads. The provisioner carries the answer out.
//!
//! Ownership rule: the node that holds a volume does everything to it (create, grow,
//! delete), because node-local storage can only be reached there. The one decision no
//! node owns — where an Immediate-binding claim goes — is the leader's; a
//! WaitForFirstConsumer claim is placed by the scheduler (`volume.kubernetes.io/
//! selected-node`).
//!
//! NFS volumes (`backend: nfs`) have no owning node: every node's controller reaches the
//! server. So the leader does everything to them — provisions (once the scheduler has
//! chosen a node, for WaitForFirstConsumer; at once for Immediate, with no placement),
//! grows and deletes them, and takes their snapshots. A new claim is known for one by
//! its class's `backend`, an existing volume by its handle (`nfs#…`), a snapshot by its
//! handle (`nfssnap#…`).
//!
//! Shared volumes (`backend: share`) are local image volumes their node also serves over
//! NFS: placed, provisioned, grown, deleted and snapshotted like local volumes (their id
//! is a local one, `local#image#<node>#<key>`), with every access mode. Their PV has no
//! node affinity (CreateVolume returns no topology), so their node is read off the handle.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;

use warren_core::ids;
use warren_core::params::KEY_BACKEND;

use crate::quantity::parse_bytes;
use crate::{DRIVER, TOPOLOGY_KEY};

/// Set by the scheduler on WaitForFirstConsumer claims.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Set by Warren's leader on Immediate-binding claims (the scheduler's annotation is
/// left to the scheduler).
pub const PLACED_ON: &str = "warren.csi.dev/placed-on";
/// On every PV Warren provisions, as the PV controller expects of external provisioners.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// The claim's resize state (`allocatedResourceStatuses.storage`) while the controller
/// side of an expansion is under way.
pub const CONTROLLER_RESIZE_IN_PROGRESS: &str = "ControllerResizeInProgress";
/// The `backend` of a StorageClass whose volumes are sub-directories on an NFS server.
pub const BACKEND_NFS: &str = "nfs";

#[derive(Debug, Clone, PartialEq)]
pub enum ClaimAction {
    /// Nothing for this node to do, and why.
    Nothing(&'static str),
    /// An Immediate-binding claim nobody has placed: the leader picks a node.
    Place,
    /// Create the volume here, and its PV.
    Provision(Provision),
    /// Grow the volume (held here) to `bytes`.
    Expand {
        volume_handle: String,
        pv_name: String,
        bytes: u64,
        block: bool,
    },
    /// The claim cannot be served as asked; tell the user.
    Refuse(String),
}

/// Everything CreateVolume and the PV need, read off the claim and its class.
#[derive(Debug, Clone, PartialEq)]
pub struct Provision {
    /// The CSI volume name, and the PV's name: `pvc-<claim uid>`, as external-provisioner
    /// names them, so a retry after a crash finds the same volume.
    pub name: String,
    pub bytes: u64,
    pub limit_bytes: Option<u64>,
    pub access_modes: Vec<String>,
    pub block: bool,
    pub parameters: BTreeMap<String, String>,
    pub mount_options: Vec<String>,
    pub reclaim_policy: String,
    pub storage_class: String,
    pub source: Option<Source>,
    /// Whether the claim was placed by the scheduler (WaitForFirstConsumer) on a node
    /// that is to hold it: on a lack of space the provisioner then asks for another node
    /// by dropping the annotation. Never for an NFS volume: its server is as full seen
    /// from any node, and the scheduler's pending binding needs its choice kept.
    pub scheduled: bool,
    /// The volume lives on an NFS server (the class's `backend: nfs`): no node holds it,
    /// the leader provisions it, and its PV gets no node affinity.
    pub nfs: bool,
    /// The node whose topology CreateVolume is given as requisite (as external-provisioner
    /// gives the selected node's): this node for a local or shared volume; the scheduler's choice
    /// for an NFS volume of a WaitForFirstConsumer claim; none for an Immediate one.
    pub requisite_node: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A claim in the same namespace (a clone).
    Claim(String),
    /// A VolumeSnapshot in the same namespace (a restore).
    Snapshot(String),
}

pub fn decide(
    claim: &PersistentVolumeClaim,
    class: Option<&StorageClass>,
    volume: Option<&PersistentVolume>,
    me: &str,
    leader: bool,
    source_node: Option<&str>,
) -> ClaimAction {
    use ClaimAction::*;
    if claim.metadata.deletion_timestamp.is_some() {
        return Nothing("the claim is being deleted");
    }
    let Some(spec) = &claim.spec else {
        return Nothing("the claim has no spec");
    };
    let Some(class) = class else {
        return Nothing("no StorageClass of Warren's for it");
    };
    if class.provisioner != DRIVER {
        return Nothing("its StorageClass belongs to another provisioner");
    }
    let requested = match requested_bytes(claim) {
        Ok(b) => b,
        Err(e) => return Refuse(e),
    };

    if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) {
        let Some(volume) = volume else {
            return Nothing("bound to a volume not seen yet");
        };
        if !provisioned_by_warren(volume) {
            return Nothing("bound to a volume Warren did not provision");
        }
        if is_nfs_volume(volume) {
            if !leader {
                return Nothing("bound to an NFS volume: the leader grows it");
            }
        } else if volume_node(volume).as_deref() != Some(me) {
            return Nothing("bound to another node's volume");
        }
        let Some(handle) = volume.spec.as_ref().and_then(|s| s.csi.as_ref()) else {
            return Nothing("bound to a volume without a CSI source");
        };
        let have = volume_bytes(volume).unwrap_or(0);
        let resizing = claim
            .status
            .as_ref()
            .and_then(|s| s.allocated_resource_statuses.as_ref())
            .and_then(|s| s.get("storage"))
            .is_some_and(|s| s == CONTROLLER_RESIZE_IN_PROGRESS);
        if requested > have || resizing {
            if class.allow_volume_expansion != Some(true) {
                return Refuse(format!(
                    "StorageClass {} does not allow volume expansion",
                    class.metadata.name.as_deref().unwrap_or_default()
                ));
            }
            return Expand {
                volume_handle: handle.volume_handle.clone(),
                pv_name: volume.metadata.name.clone().unwrap_or_default(),
                bytes: requested.max(have),
                block: is_block(spec.volume_mode.as_deref()),
            };
        }
        return Nothing("bound and as large as asked");
    }

    let annotations = claim.metadata.annotations.as_ref();
    let wait_for_consumer = class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer");
    let placed = if wait_for_consumer {
        annotations.and_then(|a| a.get(SELECTED_NODE))
    } else {
        annotations.and_then(|a| a.get(PLACED_ON))
    };
    if wait_for_consumer && placed.is_none() {
        return Nothing("waiting for a pod to be scheduled");
    }
    let nfs = class_is_nfs(class);
    if nfs {
        // On a server every node reaches: nothing to place, and the leader makes it,
        // copies (restores, clones) included, whatever node the scheduler chose.
        if !leader {
            return Nothing("an NFS volume: the leader provisions it");
        }
    } else {
        // A restore or a clone is made where its source's data is, whatever node was
        // chosen: the PV then pins the claim there, the scheduler's binding of the pod to
        // another node fails, and the pod is placed again, on this node.
        match source_node.or(placed.map(String::as_str)) {
            None if leader => return Place,
            None => return Nothing("waiting for the leader to place it"),
            Some(node) if node != me && source_node.is_some() => {
                return Nothing("its data source is on another node")
            }
            Some(node) if node != me => return Nothing("placed on another node"),
            Some(_) => {}
        }
    }
    let Some(uid) = claim.metadata.uid.as_deref() else {
        return Nothing("the claim has no uid yet");
    };
    if requested == 0 {
        return Refuse("the claim asks for no storage (resources.requests.storage)".into());
    }
    let limit_bytes = match spec
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("storage"))
    {
        Some(q) => match parse_bytes(&q.0) {
            Ok(b) => Some(b),
            Err(e) => return Refuse(e.to_string()),
        },
        None => None,
    };
    let source = match data_source(claim) {
        Ok(s) => s,
        Err(e) => return Refuse(e),
    };
    Provision(self::Provision {
        name: format!("pvc-{uid}"),
        bytes: requested,
        limit_bytes,
        access_modes: spec.access_modes.clone().unwrap_or_default(),
        block: is_block(spec.volume_mode.as_deref()),
        parameters: class.parameters.clone().unwrap_or_default(),
        mount_options: class.mount_options.clone().unwrap_or_default(),
        reclaim_policy: class
            .reclaim_policy
            .clone()
            .unwrap_or_else(|| "Delete".into()),
        storage_class: class.metadata.name.clone().unwrap_or_default(),
        source,
        scheduled: wait_for_consumer && !nfs,
        nfs,
        requisite_node: match (nfs, wait_for_consumer) {
            (false, _) => Some(me.to_string()),
            (true, true) => placed.cloned(),
            (true, false) => None,
        },
    })
}

fn requested_bytes(claim: &PersistentVolumeClaim) -> Result<u64, String> {
    match claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
    {
        Some(q) => parse_bytes(&q.0).map_err(|e| e.to_string()),
        None => Ok(0),
    }
}

fn is_block(mode: Option<&str>) -> bool {
    mode == Some("Block")
}

/// The data source whose node `decide` must be told (its `source_node`): that of an
/// unbound claim of Warren's that is ready to be provisioned somewhere. None otherwise,
/// so a claim still waiting for its pod costs no lookups.
pub fn source_to_locate(
    claim: &PersistentVolumeClaim,
    class: Option<&StorageClass>,
) -> Option<Source> {
    let spec = claim.spec.as_ref()?;
    let class = class.filter(|c| c.provisioner == DRIVER)?;
    if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) {
        return None;
    }
    let scheduled = claim
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(SELECTED_NODE));
    if class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer") && !scheduled {
        return None;
    }
    data_source(claim).ok().flatten()
}

fn data_source(claim: &PersistentVolumeClaim) -> Result<Option<Source>, String> {
    let spec = claim.spec.as_ref().expect("checked by decide");
    // dataSourceRef wins (it is the newer field and may name another namespace).
    let (kind, group, name, namespace) = if let Some(r) = &spec.data_source_ref {
        (
            &r.kind,
            r.api_group.as_deref(),
            &r.name,
            r.namespace.as_deref(),
        )
    } else if let Some(r) = &spec.data_source {
        (&r.kind, r.api_group.as_deref(), &r.name, None)
    } else {
        return Ok(None);
    };
    if namespace.is_some_and(|ns| Some(ns) != claim.metadata.namespace.as_deref()) {
        return Err("a data source in another namespace is not supported".into());
    }
    match (kind.as_str(), group.unwrap_or("")) {
        ("PersistentVolumeClaim", "") => Ok(Some(Source::Claim(name.clone()))),
        ("VolumeSnapshot", "snapshot.storage.k8s.io") => Ok(Some(Source::Snapshot(name.clone()))),
        (kind, group) => Err(format!(
            "data source {kind} ({group}) is not supported: Warren restores from a \
             VolumeSnapshot or clones a PersistentVolumeClaim"
        )),
    }
}

/// Whether a class's volumes live on an NFS server (`backend: nfs`).
pub fn class_is_nfs(class: &StorageClass) -> bool {
    class
        .parameters
        .as_ref()
        .and_then(|p| p.get(KEY_BACKEND))
        .is_some_and(|b| b == BACKEND_NFS)
}

/// Whether a PV is an NFS volume of Warren's, by its CSI handle.
pub fn is_nfs_volume(volume: &PersistentVolume) -> bool {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .is_some_and(|c| c.driver == DRIVER && ids::is_nfs_volume(&c.volume_handle))
}

/// Whether this node acts on a volume Warren provisioned: the leader on an NFS volume,
/// the node that holds it on a local or shared one (`volume_node`).
pub fn acts_on(volume: &PersistentVolume, me: &str, leader: bool) -> bool {
    if is_nfs_volume(volume) {
        leader
    } else {
        volume_node(volume).as_deref() == Some(me)
    }
}

pub fn provisioned_by_warren(volume: &PersistentVolume) -> bool {
    let annotated = volume
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROVISIONED_BY))
        .is_some_and(|p| p == DRIVER);
    let csi = volume
        .spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .is_some_and(|c| c.driver == DRIVER);
    annotated && csi
}

/// The node that holds a volume: the one its node affinity pins it to (Warren's topology
/// key), else the one its CSI handle names — a shared volume (`backend: share`) has a
/// local volume's id (`local#image#<node>#<key>`) but no node affinity, since pods on
/// every node reach it, and its node still provisions, grows, deletes and snapshots it.
/// None for an NFS volume, which no node holds.
pub fn volume_node(volume: &PersistentVolume) -> Option<String> {
    let spec = volume.spec.as_ref()?;
    let pinned = spec
        .node_affinity
        .as_ref()
        .and_then(|a| a.required.as_ref())
        .and_then(|r| {
            r.node_selector_terms
                .iter()
                .flat_map(|t| t.match_expressions.iter().flatten())
                .find(|e| e.key == TOPOLOGY_KEY && e.operator == "In")
        })
        .and_then(|e| e.values.as_ref()?.first())
        .cloned();
    pinned.or_else(|| {
        let csi = spec.csi.as_ref().filter(|c| c.driver == DRIVER)?;
        ids::local_volume_node(&csi.volume_handle)
    })
}

pub fn volume_bytes(volume: &PersistentVolume) -> Option<u64> {
    let q = volume.spec.as_ref()?.capacity.as_ref()?.get("storage")?;
    parse_bytes(&q.0).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub fn class(binding: &str, expand: bool) -> StorageClass {
        serde_json::from_value(json!({
            "metadata": {"name": "warren-local"},
            "provisioner": DRIVER,
            "parameters": {"layout": "image"},
            "mountOptions": ["noatime"],
            "volumeBindingMode": binding,
            "allowVolumeExpansion": expand,
        }))
        .unwrap()
    }

    pub fn claim(
        annotations: serde_json::Value,
        extra_spec: serde_json::Value,
    ) -> PersistentVolumeClaim {
        let mut spec = json!({
            "storageClassName": "warren-local",
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
        });
        spec.as_object_mut()
            .unwrap()
            .extend(extra_spec.as_object().unwrap().clone());
        serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "default", "uid": "1234", "annotations": annotations},
            "spec": spec,
        }))
        .unwrap()
    }

    pub fn volume(node: &str, size: &str) -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": "pvc-1234", "annotations": {PROVISIONED_BY: DRIVER}},
            "spec": {
                "capacity": {"storage": size},
                "csi": {"driver": DRIVER, "volumeHandle": format!("local#image#{node}#0123")},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": TOPOLOGY_KEY, "operator": "In", "values": [node]}]}]}},
                "persistentVolumeReclaimPolicy": "Delete",
            },
        }))
        .unwrap()
    }

    pub fn nfs_class(binding: &str, expand: bool) -> StorageClass {
        serde_json::from_value(json!({
            "metadata": {"name": "warren-nfs"},
            "provisioner": DRIVER,
            "parameters": {"backend": "nfs", "server": "10.0.0.5", "share": "/srv",
                "subDir": "${pvc.metadata.namespace}/${pvc.metadata.name}"},
            "mountOptions": ["hard"],
            "reclaimPolicy": "Retain",
            "volumeBindingMode": binding,
            "allowVolumeExpansion": expand,
        }))
        .unwrap()
    }

    pub const NFS_HANDLE: &str = "nfs#10.0.0.5#/srv#default/data#delete";

    /// A `backend: share` class: the parameters of a local one, plus the backend.
    pub fn share_class(binding: &str) -> StorageClass {
        serde_json::from_value(json!({
            "metadata": {"name": "warren-share"},
            "provisioner": DRIVER,
            "parameters": {"backend": "share", "csi.storage.k8s.io/fstype": "xfs"},
            "volumeBindingMode": binding,
            "allowVolumeExpansion": true,
        }))
        .unwrap()
    }

    /// A shared volume's id: a local image volume's, on n2.
    pub const SHARE_HANDLE: &str = "local#image#n2#0123456789abcdef0123456789abcdef";

    /// A shared volume's PV as the provisioner writes it: its CreateVolume returned no
    /// topology, so no node affinity; the handle names its node.
    pub fn share_volume(size: &str) -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": "pvc-1234", "annotations": {PROVISIONED_BY: DRIVER}},
            "spec": {
                "capacity": {"storage": size},
                "csi": {"driver": DRIVER, "volumeHandle": SHARE_HANDLE,
                    "volumeAttributes": {"warren.csi.dev/share": "10.0.0.2:7463"}},
                "persistentVolumeReclaimPolicy": "Delete",
            },
        }))
        .unwrap()
    }

    /// An NFS volume's PV as the provisioner writes it: no node affinity.
    pub fn nfs_volume(size: &str) -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": "pvc-1234", "annotations": {PROVISIONED_BY: DRIVER}},
            "spec": {
                "capacity": {"storage": size},
                "csi": {"driver": DRIVER, "volumeHandle": NFS_HANDLE},
                "persistentVolumeReclaimPolicy": "Delete",
            },
        }))
        .unwrap()
    }

    #[test]
    fn wait_for_first_consumer_claims_go_where_the_scheduler_put_them() {
        let sc = class("WaitForFirstConsumer", true);
        let unscheduled = claim(json!({}), json!({}));
        assert_eq!(
            decide(&unscheduled, Some(&sc), None, "n1", true, None),
            ClaimAction::Nothing("waiting for a pod to be scheduled")
        );
        let on_n2 = claim(json!({SELECTED_NODE: "n2"}), json!({}));
        assert_eq!(
            decide(&on_n2, Some(&sc), None, "n1", true, None),
            ClaimAction::Nothing("placed on another node")
        );
        let ClaimAction::Provision(p) = decide(&on_n2, Some(&sc), None, "n2", false, None) else {
            panic!("n2 should provision");
        };
        assert_eq!(p.name, "pvc-1234");
        assert_eq!(p.bytes, 1 << 30);
        assert!(p.scheduled && !p.block);
        assert_eq!(p.reclaim_policy, "Delete");
        assert_eq!(p.mount_options, vec!["noatime".to_string()]);
        assert_eq!(
            p.parameters.get("layout").map(String::as_str),
            Some("image")
        );
    }

    #[test]
    fn immediate_claims_are_placed_by_the_leader_only() {
        let sc = class("Immediate", true);
        let fresh = claim(json!({}), json!({}));
        assert_eq!(
            decide(&fresh, Some(&sc), None, "n1", true, None),
            ClaimAction::Place
        );
        assert!(matches!(
            decide(&fresh, Some(&sc), None, "n1", false, None),
            ClaimAction::Nothing(_)
        ));
        // The scheduler's annotation means nothing for Immediate binding.
        let placed = claim(json!({PLACED_ON: "n1", SELECTED_NODE: "n2"}), json!({}));
        assert!(matches!(
            decide(&placed, Some(&sc), None, "n1", false, None),
            ClaimAction::Provision(_)
        ));
        assert!(matches!(
            decide(&placed, Some(&sc), None, "n2", true, None),
            ClaimAction::Nothing(_)
        ));
    }

    #[test]
    fn claims_of_other_provisioners_or_being_deleted_are_left_alone() {
        let mut other = class("Immediate", true);
        other.provisioner = "rancher.io/local-path".into();
        let c = claim(json!({PLACED_ON: "n1"}), json!({}));
        assert!(matches!(
            decide(&c, Some(&other), None, "n1", true, None),
            ClaimAction::Nothing(_)
        ));
        assert!(matches!(
            decide(&c, None, None, "n1", true, None),
            ClaimAction::Nothing(_)
        ));
        let mut deleting = c.clone();
        deleting.metadata.deletion_timestamp =
            Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
        let sc = class("Immediate", true);
        assert!(matches!(
            decide(&deleting, Some(&sc), None, "n1", true, None),
            ClaimAction::Nothing(_)
        ));
    }

    #[test]
    fn a_restore_or_clone_is_made_on_its_sources_node_whatever_was_selected() {
        let sc = class("WaitForFirstConsumer", true);
        let restore = claim(
            json!({SELECTED_NODE: "n2"}),
            json!({"dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap1"}}),
        );
        // The snapshot is on n1: n1 provisions, the selected n2 leaves it alone.
        assert!(matches!(
            decide(&restore, Some(&sc), None, "n1", false, Some("n1")),
            ClaimAction::Provision(_)
        ));
        assert!(matches!(
            decide(&restore, Some(&sc), None, "n2", true, Some("n1")),
            ClaimAction::Nothing(_)
        ));
        assert_eq!(
            source_to_locate(&restore, Some(&sc)),
            Some(Source::Snapshot("snap1".into()))
        );
        // Still waits for a consumer first (and looks nothing up meanwhile).
        let unscheduled = claim(
            json!({}),
            json!({"dataSource": {"kind": "PersistentVolumeClaim", "name": "orig"}}),
        );
        assert!(matches!(
            decide(&unscheduled, Some(&sc), None, "n1", true, Some("n1")),
            ClaimAction::Nothing(_)
        ));
        assert_eq!(source_to_locate(&unscheduled, Some(&sc)), None);
        // Immediate binding: no placement by the leader; the source's node takes it.
        let now = class("Immediate", true);
        assert!(matches!(
            decide(&unscheduled, Some(&now), None, "n1", false, Some("n1")),
            ClaimAction::Provision(_)
        ));
        assert!(matches!(
            decide(&unscheduled, Some(&now), None, "n2", true, Some("n1")),
            ClaimAction::Nothing(_)
        ));
        assert_eq!(
            source_to_locate(&unscheduled, Some(&now)),
            Some(Source::Claim("orig".into()))
        );
    }

    #[test]
    fn sources_block_mode_and_bad_requests() {
        let sc = class("Immediate", true);
        let from_snapshot = claim(
            json!({PLACED_ON: "n1"}),
            json!({"volumeMode": "Block", "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap1"}}),
        );
        let ClaimAction::Provision(p) = decide(&from_snapshot, Some(&sc), None, "n1", false, None)
        else {
            panic!()
        };
        assert_eq!(p.source, Some(Source::Snapshot("snap1".into())));
        assert!(p.block);
        let clone = claim(
            json!({PLACED_ON: "n1"}),
            json!({"dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "orig"}}),
        );
        let ClaimAction::Provision(p) = decide(&clone, Some(&sc), None, "n1", false, None) else {
            panic!()
        };
        assert_eq!(p.source, Some(Source::Claim("orig".into())));
        let foreign = claim(
            json!({PLACED_ON: "n1"}),
            json!({"dataSourceRef": {"apiGroup": "example.com", "kind": "Populator", "name": "x"}}),
        );
        assert!(matches!(
            decide(&foreign, Some(&sc), None, "n1", false, None),
            ClaimAction::Refuse(_)
        ));
        let elsewhere = claim(
            json!({PLACED_ON: "n1"}),
            json!({"dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "orig", "namespace": "other"}}),
        );
        assert!(matches!(
            decide(&elsewhere, Some(&sc), None, "n1", false, None),
            ClaimAction::Refuse(_)
        ));
        let garbage = claim(
            json!({PLACED_ON: "n1"}),
            json!({"resources": {"requests": {"storage": "lots"}}}),
        );
        assert!(matches!(
            decide(&garbage, Some(&sc), None, "n1", false, None),
            ClaimAction::Refuse(_)
        ));
        let none = claim(json!({PLACED_ON: "n1"}), json!({"resources": {}}));
        assert!(matches!(
            decide(&none, Some(&sc), None, "n1", false, None),
            ClaimAction::Refuse(_)
        ));
    }

    #[test]
    fn bound_claims_grow_on_the_node_that_holds_them() {
        let sc = class("WaitForFirstConsumer", true);
        let bigger = claim(
            json!({}),
            json!({"volumeName": "pvc-1234", "resources": {"requests": {"storage": "2Gi"}}}),
        );
        let pv = volume("n1", "1Gi");
        assert_eq!(
            decide(&bigger, Some(&sc), Some(&pv), "n1", false, None),
            ClaimAction::Expand {
                volume_handle: "local#image#n1#0123".into(),
                pv_name: "pvc-1234".into(),
                bytes: 2 << 30,
                block: false
            }
        );
        assert!(matches!(
            decide(&bigger, Some(&sc), Some(&pv), "n2", true, None),
            ClaimAction::Nothing(_)
        ));
        assert!(matches!(
            decide(&bigger, Some(&sc), None, "n1", true, None),
            ClaimAction::Nothing(_)
        ));
        let same = claim(json!({}), json!({"volumeName": "pvc-1234"}));
        assert!(matches!(
            decide(&same, Some(&sc), Some(&pv), "n1", true, None),
            ClaimAction::Nothing(_)
        ));
        // A crash between growing the volume and recording it: finish the job.
        let mut midway = same.clone();
        midway.status = Some(
            serde_json::from_value(json!({
            "allocatedResourceStatuses": {"storage": CONTROLLER_RESIZE_IN_PROGRESS}}))
            .unwrap(),
        );
        assert!(
            matches!(decide(&midway, Some(&sc), Some(&pv), "n1", false, None), ClaimAction::Expand { bytes, .. } if bytes == 1 << 30)
        );
        let fixed = class("WaitForFirstConsumer", false);
        assert!(matches!(
            decide(&bigger, Some(&fixed), Some(&pv), "n1", false, None),
            ClaimAction::Refuse(_)
        ));
        // A volume someone else provisioned is not Warren's to grow.
        let mut foreign = pv.clone();
        foreign.metadata.annotations = None;
        assert!(matches!(
            decide(&bigger, Some(&sc), Some(&foreign), "n1", false, None),
            ClaimAction::Nothing(_)
        ));
    }

    #[test]
    fn nfs_claims_waiting_for_a_consumer_are_provisioned_by_the_leader_once_scheduled() {
        let sc = nfs_class("WaitForFirstConsumer", true);
        let unscheduled = claim(json!({}), json!({"storageClassName": "warren-nfs"}));
        assert_eq!(
            decide(&unscheduled, Some(&sc), None, "n1", true, None),
            ClaimAction::Nothing("waiting for a pod to be scheduled")
        );
        let on_n2 = claim(
            json!({SELECTED_NODE: "n2"}),
            json!({"storageClassName": "warren-nfs"}),
        );
        // The selected node does not act unless it leads; the leader does, wherever it is.
        assert_eq!(
            decide(&on_n2, Some(&sc), None, "n2", false, None),
            ClaimAction::Nothing("an NFS volume: the leader provisions it")
        );
        let ClaimAction::Provision(p) = decide(&on_n2, Some(&sc), None, "n1", true, None) else {
            panic!("the leader provisions an NFS claim");
        };
        assert_eq!(p.name, "pvc-1234");
        assert!(p.nfs);
        // CreateVolume is asked for the scheduler's node, as external-provisioner would.
        assert_eq!(p.requisite_node.as_deref(), Some("n2"));
        // No rescheduling on a full server: any node would find it as full, and the
        // scheduler's pending binding needs its choice kept.
        assert!(!p.scheduled);
        assert_eq!(p.reclaim_policy, "Retain");
        assert_eq!(p.mount_options, vec!["hard".to_string()]);
        assert_eq!(p.parameters.get("backend").map(String::as_str), Some("nfs"));
        assert_eq!(
            p.parameters.get("subDir").map(String::as_str),
            Some("${pvc.metadata.namespace}/${pvc.metadata.name}")
        );
        // The leader on the selected node itself: the same.
        assert!(matches!(
            decide(&on_n2, Some(&sc), None, "n2", true, None),
            ClaimAction::Provision(_)
        ));
    }

    #[test]
    fn immediate_nfs_claims_are_provisioned_by_the_leader_without_placement() {
        let sc = nfs_class("Immediate", true);
        let fresh = claim(json!({}), json!({"storageClassName": "warren-nfs"}));
        let ClaimAction::Provision(p) = decide(&fresh, Some(&sc), None, "n1", true, None) else {
            panic!("no Place step for NFS: the leader provisions at once");
        };
        assert!(p.nfs && !p.scheduled);
        assert_eq!(p.requisite_node, None);
        assert!(matches!(
            decide(&fresh, Some(&sc), None, "n2", false, None),
            ClaimAction::Nothing(_)
        ));
        // A placement annotation (left from elsewhere) changes nothing.
        let placed = claim(
            json!({PLACED_ON: "n2"}),
            json!({"storageClassName": "warren-nfs"}),
        );
        assert!(matches!(
            decide(&placed, Some(&sc), None, "n2", false, None),
            ClaimAction::Nothing(_)
        ));
        assert!(matches!(
            decide(&placed, Some(&sc), None, "n1", true, None),
            ClaimAction::Provision(_)
        ));
        // Local classes still go through placement, and record their own node.
        let local = class("Immediate", true);
        let on_n1 = claim(json!({PLACED_ON: "n1"}), json!({}));
        let ClaimAction::Provision(p) = decide(&on_n1, Some(&local), None, "n1", false, None)
        else {
            panic!()
        };
        assert!(!p.nfs);
        assert_eq!(p.requisite_node.as_deref(), Some("n1"));
    }

    #[test]
    fn read_write_many_goes_to_createvolume_for_nfs_and_for_local_alike() {
        use crate::provisioner::capabilities;
        use warren_core::capability::{parse_capabilities, parse_shared_capabilities};
        let rwx = json!({"storageClassName": "warren-nfs", "accessModes": ["ReadWriteMany", "ReadOnlyMany"]});
        let sc = nfs_class("WaitForFirstConsumer", true);
        let shared = claim(json!({SELECTED_NODE: "n2"}), rwx);
        let ClaimAction::Provision(p) = decide(&shared, Some(&sc), None, "n1", true, None) else {
            panic!("an NFS claim may be ReadWriteMany");
        };
        assert_eq!(p.access_modes, vec!["ReadWriteMany", "ReadOnlyMany"]);
        let caps = capabilities(&p.access_modes, p.block, "", &p.mount_options);
        assert!(parse_shared_capabilities(&caps).is_ok());
        // A local class: `decide` does not refuse it (it never did); the local
        // CreateVolume does, with an error event on the claim, as before.
        let local = class("WaitForFirstConsumer", true);
        let shared = claim(
            json!({SELECTED_NODE: "n1"}),
            json!({"accessModes": ["ReadWriteMany"]}),
        );
        let ClaimAction::Provision(p) = decide(&shared, Some(&local), None, "n1", false, None)
        else {
            panic!()
        };
        assert!(!p.nfs);
        let caps = capabilities(&p.access_modes, p.block, "", &p.mount_options);
        assert!(parse_capabilities(&caps).is_err());
    }

    #[test]
    fn nfs_restores_and_clones_are_made_by_the_leader() {
        let sc = nfs_class("WaitForFirstConsumer", true);
        let restore = claim(
            json!({SELECTED_NODE: "n2"}),
            json!({"storageClassName": "warren-nfs", "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap1"}}),
        );
        // An NFS snapshot's id names no node (`source_node` is None).
        let ClaimAction::Provision(p) = decide(&restore, Some(&sc), None, "n1", true, None) else {
            panic!("the leader restores");
        };
        assert_eq!(p.source, Some(Source::Snapshot("snap1".into())));
        assert!(matches!(
            decide(&restore, Some(&sc), None, "n2", false, None),
            ClaimAction::Nothing(_)
        ));
        // Even a source that names a node does not move the work off the leader (the NFS
        // controller then refuses a source that is not on its export).
        assert!(matches!(
            decide(&restore, Some(&sc), None, "n1", true, Some("n2")),
            ClaimAction::Provision(_)
        ));
        assert!(matches!(
            decide(&restore, Some(&sc), None, "n2", false, Some("n2")),
            ClaimAction::Nothing(_)
        ));
        assert_eq!(
            source_to_locate(&restore, Some(&sc)),
            Some(Source::Snapshot("snap1".into()))
        );
        let now = nfs_class("Immediate", true);
        let clone = claim(
            json!({}),
            json!({"storageClassName": "warren-nfs", "dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "orig"}}),
        );
        let ClaimAction::Provision(p) = decide(&clone, Some(&now), None, "n1", true, None) else {
            panic!("the leader clones");
        };
        assert_eq!(p.source, Some(Source::Claim("orig".into())));
        assert!(matches!(
            decide(&clone, Some(&now), None, "n1", false, None),
            ClaimAction::Nothing(_)
        ));
    }

    #[test]
    fn bound_nfs_claims_are_grown_by_the_leader() {
        let sc = nfs_class("WaitForFirstConsumer", true);
        let bigger = claim(
            json!({}),
            json!({"storageClassName": "warren-nfs", "volumeName": "pvc-1234", "resources": {"requests": {"storage": "2Gi"}}}),
        );
        let pv = nfs_volume("1Gi");
        assert!(is_nfs_volume(&pv));
        assert_eq!(volume_node(&pv), None);
        assert_eq!(
            decide(&bigger, Some(&sc), Some(&pv), "n2", true, None),
            ClaimAction::Expand {
                volume_handle: NFS_HANDLE.into(),
                pv_name: "pvc-1234".into(),
                bytes: 2 << 30,
                block: false
            }
        );
        assert_eq!(
            decide(&bigger, Some(&sc), Some(&pv), "n1", false, None),
            ClaimAction::Nothing("bound to an NFS volume: the leader grows it")
        );
        let fixed = nfs_class("WaitForFirstConsumer", false);
        assert!(matches!(
            decide(&bigger, Some(&fixed), Some(&pv), "n1", true, None),
            ClaimAction::Refuse(_)
        ));
        // Ownership of a bound volume follows its handle, not the class: a local PV is
        // still its node's, leader or not.
        let local_pv = volume("n1", "1Gi");
        assert!(!is_nfs_volume(&local_pv));
        assert!(matches!(
            decide(&bigger, Some(&sc), Some(&local_pv), "n2", true, None),
            ClaimAction::Nothing(_)
        ));
        assert!(acts_on(&local_pv, "n1", false) && !acts_on(&local_pv, "n2", true));
        assert!(acts_on(&pv, "n2", true) && !acts_on(&pv, "n1", false));
    }

    #[test]
    fn share_claims_are_provisioned_by_their_node_with_every_access_mode() {
        use crate::provisioner::capabilities;
        use warren_core::capability::parse_shared_capabilities;
        let sc = share_class("WaitForFirstConsumer");
        let rwx = json!({"storageClassName": "warren-share", "accessModes": ["ReadWriteMany"]});
        let unscheduled = claim(json!({}), rwx.clone());
        assert_eq!(
            decide(&unscheduled, Some(&sc), None, "n1", true, None),
            ClaimAction::Nothing("waiting for a pod to be scheduled")
        );
        // The scheduler's node provisions it, leader or not; the leader elsewhere does not.
        let on_n2 = claim(json!({SELECTED_NODE: "n2"}), rwx.clone());
        let ClaimAction::Provision(p) = decide(&on_n2, Some(&sc), None, "n2", false, None) else {
            panic!("a share claim may be ReadWriteMany, and its node provisions it");
        };
        assert_eq!(p.access_modes, vec!["ReadWriteMany"]);
        assert!(!p.nfs);
        assert!(
            p.scheduled,
            "a full node hands the claim back to the scheduler"
        );
        assert_eq!(p.requisite_node.as_deref(), Some("n2"));
        assert_eq!(
            p.parameters.get("backend").map(String::as_str),
            Some("share")
        );
        let caps = capabilities(&p.access_modes, p.block, "xfs", &p.mount_options);
        assert!(parse_shared_capabilities(&caps).is_ok());
        assert_eq!(
            decide(&on_n2, Some(&sc), None, "n1", true, None),
            ClaimAction::Nothing("placed on another node")
        );
        // Every multi-node mode, and the single-node ones, get through.
        let all = claim(
            json!({SELECTED_NODE: "n2"}),
            json!({"storageClassName": "warren-share",
                "accessModes": ["ReadWriteMany", "ReadOnlyMany", "ReadWriteOnce", "ReadWriteOncePod"]}),
        );
        let ClaimAction::Provision(p) = decide(&all, Some(&sc), None, "n2", false, None) else {
            panic!()
        };
        let caps = capabilities(&p.access_modes, p.block, "", &p.mount_options);
        assert!(parse_shared_capabilities(&caps).is_ok());
        // Immediate binding: the leader places it, as a local volume, then that node
        // provisions it.
        let now = share_class("Immediate");
        let fresh = claim(json!({}), rwx.clone());
        assert_eq!(
            decide(&fresh, Some(&now), None, "n1", true, None),
            ClaimAction::Place
        );
        let placed = claim(json!({PLACED_ON: "n2"}), rwx);
        assert!(matches!(
            decide(&placed, Some(&now), None, "n2", false, None),
            ClaimAction::Provision(Provision {
                scheduled: false,
                nfs: false,
                ..
            })
        ));
        assert!(matches!(
            decide(&placed, Some(&now), None, "n1", true, None),
            ClaimAction::Nothing(_)
        ));
    }

    #[test]
    fn share_restores_and_clones_are_made_on_their_sources_node() {
        let sc = share_class("WaitForFirstConsumer");
        let clone = claim(
            json!({SELECTED_NODE: "n1"}),
            json!({"storageClassName": "warren-share", "accessModes": ["ReadWriteMany"],
                "dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "orig"}}),
        );
        assert!(matches!(
            decide(&clone, Some(&sc), None, "n2", false, Some("n2")),
            ClaimAction::Provision(_)
        ));
        assert_eq!(
            decide(&clone, Some(&sc), None, "n1", true, Some("n2")),
            ClaimAction::Nothing("its data source is on another node")
        );
    }

    #[test]
    fn a_shared_volume_without_node_affinity_belongs_to_the_node_in_its_handle() {
        let pv = share_volume("1Gi");
        assert!(!is_nfs_volume(&pv));
        assert_eq!(volume_node(&pv).as_deref(), Some("n2"));
        assert!(acts_on(&pv, "n2", false));
        assert!(
            !acts_on(&pv, "n1", true),
            "leading does not make it the leader's"
        );
        let sc = share_class("WaitForFirstConsumer");
        let bigger = claim(
            json!({}),
            json!({"storageClassName": "warren-share", "volumeName": "pvc-1234",
                "resources": {"requests": {"storage": "2Gi"}}}),
        );
        assert_eq!(
            decide(&bigger, Some(&sc), Some(&pv), "n2", false, None),
            ClaimAction::Expand {
                volume_handle: SHARE_HANDLE.into(),
                pv_name: "pvc-1234".into(),
                bytes: 2 << 30,
                block: false
            }
        );
        assert_eq!(
            decide(&bigger, Some(&sc), Some(&pv), "n1", true, None),
            ClaimAction::Nothing("bound to another node's volume")
        );
        // Node affinity, where there is one, still says whose a volume is.
        assert_eq!(volume_node(&volume("n1", "1Gi")).as_deref(), Some("n1"));
        // No affinity and no handle naming a node: nobody's.
        let mut odd = pv.clone();
        odd.spec
            .as_mut()
            .unwrap()
            .csi
            .as_mut()
            .unwrap()
            .volume_handle = "local#image#n2#zz".into();
        assert_eq!(volume_node(&odd), None);
        let mut foreign = pv.clone();
        foreign.spec.as_mut().unwrap().csi.as_mut().unwrap().driver = "other.csi.dev".into();
        assert_eq!(volume_node(&foreign), None);
        assert_eq!(volume_node(&nfs_volume("1Gi")), None);
    }
}
