//! The decisions, as pure functions of what is observed: which ReplicatedVolume objects
//! should exist and with what spec (from the PersistentVolumes), and which statuses a
//! node should write (from the engines it runs and the objects as last seen).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use warren_core::params::ReplicatedContext;

use super::resource::{
    LastRebuild, ReplicaPlacement, ReplicaStatus, ReplicatedVolume, ReplicatedVolumeSpec,
    ReplicatedVolumeStatus,
};
use crate::DRIVER;

/// The prefix of a replicated volume's CSI handle; the rest is its key.
const HANDLE_PREFIX: &str = "replicated#";

pub const HEALTHY: &str = "Healthy";
pub const DEGRADED: &str = "Degraded";
pub const REBUILDING: &str = "Rebuilding";
pub const FAILED: &str = "Failed";
pub const DETACHED: &str = "Detached";
pub const IN_SYNC: &str = "InSync";
pub const ABSENT: &str = "Absent";
pub const UNKNOWN: &str = "Unknown";

/// A status unchanged for this long is written again anyway: its `updated` then says
/// the engine's node is alive (a slow heartbeat, not a patch per change of nothing).
pub const REFRESH: Duration = Duration::from_secs(120);

/// An engine running on this node, in the status's terms (the binary fills it from the
/// engine's status and its rebuilds in progress).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineView {
    /// The volume's key (`replicated#<key>`), also its replicas' name.
    pub key: String,
    /// The replicas (node names) it was staged with.
    pub replicas: Vec<String>,
    pub generation: u64,
    /// Replicas in its current generation.
    pub members: Vec<String>,
    /// Replicas being rebuilt, with their progress when known.
    pub rebuilding: Vec<RebuildView>,
    /// Why it failed (fenced by a newer engine, every replica lost).
    pub failed: Option<String>,
    pub last_rebuild: Option<LastRebuild>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildView {
    pub replica: String,
    /// None until the rebuild has started copying.
    pub progress: Option<RebuildBytes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildBytes {
    pub done: u64,
    pub total: u64,
    pub incremental: bool,
}

/// The key of a replicated volume's handle.
pub fn key_of(handle: &str) -> Option<&str> {
    handle
        .strip_prefix(HANDLE_PREFIX)
        .filter(|key| !key.is_empty())
}

/// The object a PersistentVolume of a replicated Warren volume should have: its name, an
/// owner reference to it (so the garbage collector deletes the object with the PV, and
/// an object left from an older PV of the same name, whose uid differs, too), and the
/// spec read from the PV. None for any other PV, or one without a uid yet.
pub fn object_for(pv: &PersistentVolume) -> Option<ReplicatedVolume> {
    let spec = pv.spec.as_ref()?;
    let csi = spec.csi.as_ref()?;
    if csi.driver != DRIVER {
        return None;
    }
    key_of(&csi.volume_handle)?;
    let name = pv.metadata.name.clone()?;
    let uid = pv.metadata.uid.clone()?;
    let context: HashMap<String, String> = csi
        .volume_attributes
        .as_ref()
        .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    // A context Warren cannot read still gets an object (with no replicas listed): the
    // volume exists, and kubectl should show it.
    let replicas = ReplicatedContext::read(&context)
        .map(|c| c.replicas)
        .unwrap_or_default();
    let claim = spec.claim_ref.as_ref().and_then(|c| {
        Some(format!(
            "{}/{}",
            c.namespace.as_deref()?,
            c.name.as_deref()?
        ))
    });
    let capacity = spec
        .capacity
        .as_ref()
        .and_then(|c| c.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_default();
    let mut object = ReplicatedVolume::new(
        &name,
        ReplicatedVolumeSpec {
            persistent_volume: name.clone(),
            claim,
            volume_handle: csi.volume_handle.clone(),
            capacity,
            replicas_wanted: u32::try_from(replicas.len()).unwrap_or(u32::MAX),
            replicas: replicas
                .into_iter()
                .map(|r| ReplicaPlacement {
                    node: r.node,
                    address: r.endpoint,
                })
                .collect(),
        },
    );
    object.metadata = ObjectMeta {
        name: Some(name.clone()),
        owner_references: Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "PersistentVolume".into(),
            name,
            uid,
            ..Default::default()
        }]),
        ..Default::default()
    };
    Some(object)
}

/// What the keeper of the objects does about one of them.
#[derive(Debug, Clone, PartialEq)]
pub enum ObjectAction {
    Create(Box<ReplicatedVolume>),
    /// The PV changed (bound to its claim, grown): its spec follows.
    UpdateSpec {
        name: String,
        spec: ReplicatedVolumeSpec,
    },
    /// An object never given a status: Detached until an engine says otherwise. Written
    /// at the resourceVersion seen, so it never overwrites an engine's status.
    FirstStatus {
        name: String,
        resource_version: String,
        status: ReplicatedVolumeStatus,
    },
}

/// What should be done so that every replicated PV `mine` selects has its object with
/// the right spec and a status. Objects whose PV is gone are the garbage collector's.
pub fn object_actions<'a>(
    pvs: impl IntoIterator<Item = &'a PersistentVolume>,
    objects: &[&ReplicatedVolume],
    mine: impl Fn(&ReplicatedVolumeSpec) -> bool,
    now: Timestamp,
) -> Vec<ObjectAction> {
    let existing: BTreeMap<String, &ReplicatedVolume> =
        objects.iter().map(|o| (o.name_any(), *o)).collect();
    let mut actions = Vec::new();
    for pv in pvs {
        let Some(wanted) = object_for(pv) else {
            continue;
        };
        if !mine(&wanted.spec) {
            continue;
        }
        let name = wanted.name_any();
        let Some(current) = existing.get(&name) else {
            actions.push(ObjectAction::Create(Box::new(wanted)));
            continue;
        };
        if current.metadata.owner_references != wanted.metadata.owner_references {
            // An object of an older PV of this name: the garbage collector deletes it,
            // and it is created again after that.
            continue;
        }
        if current.spec != wanted.spec {
            actions.push(ObjectAction::UpdateSpec {
                name: name.clone(),
                spec: wanted.spec.clone(),
            });
        }
        if current.status.is_none() {
            if let Some(rv) = current.metadata.resource_version.clone() {
                actions.push(ObjectAction::FirstStatus {
                    name,
                    resource_version: rv,
                    status: detached_status(&wanted.spec, None, now),
                });
            }
        }
    }
    actions
}

/// The status of a volume no engine runs: where its replicas are (from the spec), their
/// state unknown; the last generation and rebuild seen are kept.
pub fn detached_status(
    spec: &ReplicatedVolumeSpec,
    previous: Option<&ReplicatedVolumeStatus>,
    now: Timestamp,
) -> ReplicatedVolumeStatus {
    ReplicatedVolumeStatus {
        state: DETACHED.into(),
        engine_node: None,
        in_sync: None,
        generation: previous.and_then(|p| p.generation),
        replicas: spec
            .replicas
            .iter()
            .map(|r| ReplicaStatus {
                node: r.node.clone(),
                address: Some(r.address.clone()),
                state: UNKNOWN.into(),
                rebuild_bytes_done: None,
                rebuild_bytes_total: None,
                rebuild_incremental: None,
            })
            .collect(),
        last_rebuild: previous.and_then(|p| p.last_rebuild.clone()),
        message: None,
        updated: Some(now.to_string()),
    }
}

/// The status of a volume whose engine runs on `node`.
pub fn running_status(
    spec: &ReplicatedVolumeSpec,
    engine: &EngineView,
    node: &str,
    now: Timestamp,
) -> ReplicatedVolumeStatus {
    let address = |replica: &str| {
        spec.replicas
            .iter()
            .find(|r| r.node == replica)
            .map(|r| r.address.clone())
    };
    let replicas: Vec<ReplicaStatus> = engine
        .replicas
        .iter()
        .map(|replica| {
            let rebuild = engine.rebuilding.iter().find(|r| &r.replica == replica);
            let state = if engine.members.contains(replica) {
                IN_SYNC
            } else if rebuild.is_some() {
                REBUILDING
            } else {
                ABSENT
            };
            let progress = rebuild.and_then(|r| r.progress);
            ReplicaStatus {
                node: replica.clone(),
                address: address(replica),
                state: state.into(),
                rebuild_bytes_done: progress.map(|p| p.done),
                rebuild_bytes_total: progress.map(|p| p.total),
                rebuild_incremental: progress.map(|p| p.incremental),
            }
        })
        .collect();
    let in_sync = replicas.iter().filter(|r| r.state == IN_SYNC).count();
    let state = if engine.failed.is_some() {
        FAILED
    } else if in_sync == replicas.len() {
        HEALTHY
    } else if replicas.iter().any(|r| r.state == REBUILDING) {
        REBUILDING
    } else {
        DEGRADED
    };
    ReplicatedVolumeStatus {
        state: state.into(),
        engine_node: Some(node.to_string()),
        in_sync: Some(u32::try_from(in_sync).unwrap_or(u32::MAX)),
        generation: Some(engine.generation),
        replicas,
        last_rebuild: engine.last_rebuild.clone(),
        message: engine.failed.clone(),
        updated: Some(now.to_string()),
    }
}

/// A status this node should write.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusWrite {
    pub name: String,
    pub status: ReplicatedVolumeStatus,
    /// Written only if the object is still at this resourceVersion: set when this node
    /// marks a volume Detached, so that it never overwrites the status of an engine
    /// another node has started meanwhile.
    pub resource_version: Option<String>,
}

/// What this node last wrote for each object, and when.
pub type Written = HashMap<String, (ReplicatedVolumeStatus, Timestamp)>;

/// The statuses `node` should write now: for each engine it runs whose object exists,
/// the engine's view, when it differs from what the object shows (and from what this
/// node wrote last, which the object may not show yet) or has not been written for
/// `REFRESH`; and Detached for each object that names this node as its engine's but
/// whose engine no longer runs here (unstaged, or this Warren restarted).
pub fn status_writes(
    node: &str,
    engines: &[EngineView],
    objects: &[&ReplicatedVolume],
    written: &Written,
    now: Timestamp,
) -> Vec<StatusWrite> {
    let mut writes = Vec::new();
    for object in objects {
        let name = object.name_any();
        let Some(key) = key_of(&object.spec.volume_handle) else {
            continue;
        };
        let current = object.status.as_ref();
        if let Some(engine) = engines.iter().find(|e| e.key == key) {
            let desired = running_status(&object.spec, engine, node, now);
            let recently = |status: &ReplicatedVolumeStatus, at: Option<Timestamp>| {
                same(status, &desired) && at.is_some_and(|at| younger_than(at, now, REFRESH))
            };
            let wrote_it = written
                .get(&name)
                .is_some_and(|(status, at)| recently(status, Some(*at)));
            let shows_it = current.is_some_and(|s| recently(s, updated_at(s)));
            if !wrote_it && !shows_it {
                writes.push(StatusWrite {
                    name,
                    status: desired,
                    resource_version: None,
                });
            }
        } else if current.is_some_and(|s| s.engine_node.as_deref() == Some(node)) {
            let detached = detached_status(&object.spec, current, now);
            // Once written, the object may not show it yet: no second write meanwhile.
            let wrote_it = written.get(&name).is_some_and(|(status, at)| {
                same(status, &detached) && younger_than(*at, now, REFRESH)
            });
            if let (false, Some(rv)) = (wrote_it, object.metadata.resource_version.clone()) {
                writes.push(StatusWrite {
                    name,
                    status: detached,
                    resource_version: Some(rv),
                });
            }
        }
    }
    writes
}

/// Equal but for when they were written.
pub fn same(a: &ReplicatedVolumeStatus, b: &ReplicatedVolumeStatus) -> bool {
    let strip = |s: &ReplicatedVolumeStatus| ReplicatedVolumeStatus {
        updated: None,
        ..s.clone()
    };
    strip(a) == strip(b)
}

fn updated_at(status: &ReplicatedVolumeStatus) -> Option<Timestamp> {
    status.updated.as_deref()?.parse().ok()
}

fn younger_than(at: Timestamp, now: Timestamp, limit: Duration) -> bool {
    let age = now.duration_since(at);
    age.is_negative() || age.unsigned_abs() < limit
}
