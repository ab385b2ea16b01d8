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
//! Replicated volumes (`backend: replicated`) have no owning node either: their replicas
//! are on several nodes, reached through the nodes' agents. The leader does everything
//! to them as to NFS volumes; for a WaitForFirstConsumer claim it gives CreateVolume the
//! scheduler's node as the preferred one (data locality), never as the only one allowed.
//! Their handle is `replicated#…`.
//!
//! Shared volumes (`backend: share`) are local image volumes their node also serves over
//! NFS: placed, provisioned, grown, deleted and snapshotted like local volumes (their id
//! is a local one, `local#image#<node>#<key>`), with every access mode. Their PV has no
//! node affinity (CreateVolume returns no topology), so their node is read off the handle.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;

use warren_core::ids;
use warren_core::params::{parse_backend, Backend, KEY_BACKEND};

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

#[derive(Debug, Clone, PartialEq)]
pub enum ClaimAction {
    /// Nothing for this node to do, and why.
    Nothing(&'static str),
    /// An Immediate-binding claim nobody has placed: the leader picks a node among
    /// `allowed_nodes`, the nodes the class's allowedTopologies permit (None: any node).
    Place { allowed_nodes: Option<Vec<String>> },
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
    /// The nodes whose topologies CreateVolume is given as requisite (empty: none): this
    /// node for a local or shared volume; the scheduler's choice for an NFS volume of a
    /// WaitForFirstConsumer claim; for a replicated one, the class's allowedTopologies.
    pub requisite_nodes: Vec<String>,
    /// The node CreateVolume is told to prefer (as external-provisioner puts the selected
    /// node first): this node, or the scheduler's choice.
    pub preferred_node: Option<String>,
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
        let Some(csi) = warren_csi(volume) else {
            return Nothing("bound to a volume Warren did not provision");
        };
        if is_leader_owned_volume(volume) {
            if !leader {
                return Nothing("bound to an NFS or replicated volume: the leader grows it");
            }
        } else if volume_node(volume).as_deref() != Some(me) {
            return Nothing("bound to another node's volume");
        }
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
                volume_handle: csi.volume_handle.clone(),
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
    let replicated = class_is_replicated(class);
    if nfs || replicated {
        // On a server every node reaches, or on several nodes reached through their
        // agents: nothing to place here, and the leader makes it, copies (restores,
        // clones) included, whatever node the scheduler chose.
        if !leader {
            return Nothing("an NFS or replicated volume: the leader provisions it");
        }
    } else {
        // A restore or a clone is made where its source's data is, whatever node was
        // chosen: the PV then pins the claim there, the scheduler's binding of the pod to
        // another node fails, and the pod is placed again, on this node.
        match source_node.or(placed.map(String::as_str)) {
            None if leader => {
                return Place {
                    allowed_nodes: allowed_nodes(class),
                }
            }
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
    let source = match data_source(claim, spec) {
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
        scheduled: wait_for_consumer && !nfs && !replicated,
        nfs,
        requisite_nodes: match (nfs, replicated, wait_for_consumer) {
            (_, true, _) => allowed_nodes(class).unwrap_or_default(),
            (false, false, _) => vec![me.to_string()],
            (true, _, true) => placed.cloned().into_iter().collect(),
            (true, _, false) => vec![],
        },
        preferred_node: match (nfs || replicated, wait_for_consumer) {
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
    data_source(claim, spec).ok().flatten()
}

/// `spec`: the claim's own, which its callers have already found there.
fn data_source(
    claim: &PersistentVolumeClaim,
    spec: &PersistentVolumeClaimSpec,
) -> Result<Option<Source>, String> {
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

/// Node names a class's allowedTopologies permit (None: any).
pub fn allowed_nodes(class: &StorageClass) -> Option<Vec<String>> {
    let terms = class.allowed_topologies.as_ref()?;
    let mut nodes = Vec::new();
    for term in terms {
        for e in term.match_label_expressions.iter().flatten() {
            if e.key == TOPOLOGY_KEY {
                nodes.extend(e.values.iter().cloned());
            }
        }
    }
    Some(nodes)
}

/// Whether a class's volumes live on an NFS server (`backend: nfs`).
pub fn class_is_nfs(class: &StorageClass) -> bool {
    class
        .parameters
        .as_ref()
        .and_then(|p| p.get(KEY_BACKEND))
        .is_some_and(|b| parse_backend(Some(b)).is_ok_and(|b| b == Backend::Nfs))
}

/// Whether a class's volumes are replicated over several nodes (`backend: replicated`).
pub fn class_is_replicated(class: &StorageClass) -> bool {
    class
        .parameters
        .as_ref()
        .and_then(|p| p.get(KEY_BACKEND))
        .is_some_and(|b| parse_backend(Some(b)).is_ok_and(|b| b == Backend::Replicated))
}

/// Whether the leader, not one node, acts on a PV of Warren's: an NFS or a replicated
/// volume, by its CSI handle.
pub fn is_leader_owned_volume(volume: &PersistentVolume) -> bool {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .is_some_and(|c| {
            c.driver == DRIVER
                && (ids::is_nfs_volume(&c.volume_handle)
                    || ids::is_replicated_volume(&c.volume_handle))
        })
}

/// Whether a PV is an NFS volume of Warren's, by its CSI handle.
pub fn is_nfs_volume(volume: &PersistentVolume) -> bool {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .is_some_and(|c| c.driver == DRIVER && ids::is_nfs_volume(&c.volume_handle))
}

/// Whether this node acts on a volume Warren provisioned: the leader on an NFS or a
/// replicated volume, the node that holds it on a local or shared one (`volume_node`).
pub fn acts_on(volume: &PersistentVolume, me: &str, leader: bool) -> bool {
    if is_leader_owned_volume(volume) {
        leader
    } else {
        volume_node(volume).as_deref() == Some(me)
    }
}

pub fn provisioned_by_warren(volume: &PersistentVolume) -> bool {
    warren_csi(volume).is_some()
}

/// The CSI source of a volume Warren provisioned (annotated as Warren's, with Warren's
/// driver), else None: checked once, the handle then comes with it.
pub fn warren_csi(volume: &PersistentVolume) -> Option<&CSIPersistentVolumeSource> {
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
        .filter(|c| c.driver == DRIVER)?;
    annotated.then_some(csi)
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
mod tests;
