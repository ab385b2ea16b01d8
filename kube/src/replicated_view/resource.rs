//! The `ReplicatedVolume` custom resource (`warren.csi.dev/v1alpha1`, cluster-scoped,
//! short name `wrv`): one per replicated PersistentVolume, named as it, owned by it.
//! `spec` is what the volume was created with (from the PV); `status` is what its engine
//! sees now, or `Detached` when no engine runs. The printer columns are what
//! `kubectl get replicatedvolumes` shows.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the volume was created with, from its PersistentVolume.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "warren.csi.dev",
    version = "v1alpha1",
    kind = "ReplicatedVolume",
    plural = "replicatedvolumes",
    shortname = "wrv",
    status = "ReplicatedVolumeStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Claim","type":"string","jsonPath":".spec.claim"}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".spec.capacity"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicasWanted"}"#,
    printcolumn = r#"{"name":"In Sync","type":"integer","jsonPath":".status.inSync"}"#,
    printcolumn = r#"{"name":"Engine","type":"string","jsonPath":".status.engineNode"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ReplicatedVolumeSpec {
    /// The PersistentVolume (also this object's name and owner).
    pub persistent_volume: String,
    /// Its claim, `namespace/name`, when bound.
    pub claim: Option<String>,
    /// The CSI volume handle, `replicated#<key>`.
    pub volume_handle: String,
    /// The PV's capacity as Kubernetes writes it (`2Gi`).
    pub capacity: String,
    /// How many in-sync replicas the volume asks for.
    pub replicas_wanted: u32,
    /// Where its replicas were placed: node and replica service address.
    pub replicas: Vec<ReplicaPlacement>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaPlacement {
    pub node: String,
    /// `HOST:PORT` of that node's replica service.
    pub address: String,
}

/// The volume as its engine sees it now. Fields without a value are written as null, so
/// a merge patch of a whole status clears what no longer holds (a Detached volume has no
/// engine node).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReplicatedVolumeStatus {
    /// `Healthy`, `Degraded`, `Rebuilding`, `Failed` (a running engine), or `Detached`
    /// (no engine runs: the volume is not staged anywhere).
    pub state: String,
    /// The node whose Warren runs the volume's engine (where it is staged).
    pub engine_node: Option<String>,
    /// Replicas in the engine's current generation.
    pub in_sync: Option<u32>,
    /// The engine's generation (the last one seen, when Detached).
    pub generation: Option<u64>,
    /// Each replica: where it is and whether it holds all data.
    pub replicas: Vec<ReplicaStatus>,
    /// The last finished rebuild (kept while Detached).
    pub last_rebuild: Option<LastRebuild>,
    /// Why the engine failed, when it has.
    pub message: Option<String>,
    /// When this status was written (RFC 3339); a running engine's node writes it again
    /// at least every few minutes, so an old one says that node's Warren is gone.
    pub updated: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    pub node: String,
    pub address: Option<String>,
    /// `InSync` (a member of the current generation), `Rebuilding`, `Absent`, or
    /// `Unknown` (no engine runs to tell).
    pub state: String,
    /// Bytes the rebuild in progress has copied, of `rebuildBytesTotal`.
    pub rebuild_bytes_done: Option<u64>,
    pub rebuild_bytes_total: Option<u64>,
    /// Whether the rebuild in progress copies only what the replica missed.
    pub rebuild_incremental: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastRebuild {
    pub bytes: u64,
    pub seconds: f64,
    pub incremental: bool,
}
