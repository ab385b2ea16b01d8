//! The one interface through which the controller reaches a node's storage. It is served
//! in-process (`warren all`) or over the authenticated agent channel (`crate::agent`) when
//! the controller runs apart from the nodes. Every method is idempotent.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::ids::{Layout, ReplicatedSnapshotId, ReplicatedVolumeId, SnapshotId, VolumeId};
use crate::params::ReplicaEndpoint;

/// Whether an image volume's blocks are reserved up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Allocation {
    /// fallocate the whole image: the node can never run out of space under the volume.
    #[default]
    Thick,
    /// A sparse image: blocks are taken as they are written (overcommit is possible).
    Thin,
}

/// Where a new volume's first contents come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentSource {
    Snapshot(SnapshotId),
    Volume(VolumeId),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub id: VolumeId,
    pub name: String,
    pub capacity_bytes: u64,
    pub allocation: Allocation,
    pub source: Option<ContentSource>,
    /// `backend: share`: the node serves the volume over NFS to the other nodes.
    #[serde(default)]
    pub shared: bool,
    /// The file system a shared volume gets (its node makes it to serve it); None: ext4.
    #[serde(default)]
    pub fs_type: Option<String>,
}

/// Health of a volume as its node sees it; maps to CSI's VolumeCondition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Condition {
    pub abnormal: bool,
    pub message: String,
}

impl Condition {
    pub fn healthy() -> Self {
        Condition {
            abnormal: false,
            message: "volume is healthy".into(),
        }
    }
    pub fn abnormal(message: impl Into<String>) -> Self {
        Condition {
            abnormal: true,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub id: VolumeId,
    pub name: String,
    pub capacity_bytes: u64,
    pub source: Option<ContentSource>,
    pub condition: Condition,
    /// Where the node serves a shared volume (`IP:PORT` of its share), if it does.
    #[serde(default)]
    pub share_endpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub id: SnapshotId,
    pub name: String,
    pub source_volume: VolumeId,
    pub size_bytes: u64,
    /// Seconds since the Unix epoch.
    pub created_at_secs: i64,
    pub created_at_nanos: i32,
    pub ready: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Bytes a new volume can still take on this node.
    pub available_bytes: u64,
    pub total_bytes: u64,
    /// The largest single volume this node could hold now.
    pub maximum_volume_bytes: u64,
    /// Where this node's replica service listens (`HOST:PORT`), when it hosts one: only
    /// such nodes can hold replicas of replicated volumes.
    #[serde(default)]
    pub replica_endpoint: Option<String>,
}

/// One node's replica of a replicated volume, as the controller asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSpec {
    pub volume: ReplicatedVolumeId,
    /// The volume's size in bytes (a multiple of 4096).
    pub size_bytes: u64,
    /// Every replica of the volume (node names), this one included: committed as the
    /// first generation's members on each, so the first engine finds them all in sync.
    pub members: Vec<String>,
}

/// A node's replica of a replicated volume, as its node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    pub volume: ReplicatedVolumeId,
    /// The node (and replica name) that holds it.
    pub node: String,
    /// Where engines reach it: the node's replica service, `HOST:PORT`.
    pub endpoint: String,
    pub size_bytes: u64,
    /// The last generation committed on this replica and its member list then.
    pub gen: u64,
    pub members: Vec<String>,
    /// Whether it holds all the data of its generation (not mid-rebuild).
    pub in_sync: bool,
}

/// One node's copy of a replicated volume's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSnapshotInfo {
    pub snapshot: ReplicatedSnapshotId,
    /// The node (and replica name) that keeps this copy.
    pub node: String,
    pub size_bytes: u64,
    /// The generation of the replica it was copied from, and that generation's members.
    pub gen: u64,
    pub members: Vec<String>,
    /// The replica held exactly its generation's data when copied: it was closed clean,
    /// or the copy was taken through the running engine with no write in flight. Clean
    /// copies of one generation are the same bytes; an unclean one may differ from
    /// another in writes that were never acknowledged.
    pub clean: bool,
    /// When the copy was taken, seconds since the Unix epoch.
    pub created_at_secs: i64,
    pub created_at_nanos: i32,
}

/// What a new replicated volume is filled from (restore, clone, and local → replicated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SeedSource {
    /// This node's copy of a replicated volume's snapshot.
    ReplicaSnapshot(ReplicatedSnapshotId),
    /// A local snapshot this node keeps (image layout).
    LocalSnapshot(SnapshotId),
    /// A local volume this node keeps (image layout), copied at one point in time.
    LocalVolume(VolumeId),
}

/// A new replicated volume to fill: its replicas exist (made empty by `create_replica`)
/// and no one has been told its ID, so no engine but the seeding one can open it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedTarget {
    pub volume: ReplicatedVolumeId,
    pub size_bytes: u64,
    pub replicas: Vec<ReplicaEndpoint>,
}

/// What a seed copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedReport {
    /// The source's size.
    pub source_bytes: u64,
    /// Bytes written into the volume (holes and zeros of the source are skipped).
    pub written_bytes: u64,
}

/// A node's storage, as the controller sees it.
#[async_trait]
pub trait NodeStorage: Send + Sync + 'static {
    /// Creates the volume, or returns it if it exists with the same spec; ALREADY_EXISTS
    /// if a volume with this id exists with another size or source.
    async fn create_volume(&self, spec: VolumeSpec) -> Result<VolumeInfo>;
    /// Deletes the volume; a missing volume is success. FAILED_PRECONDITION while it is
    /// staged or has snapshots that depend on it (never for image volumes: snapshots are copies).
    async fn delete_volume(&self, id: VolumeId) -> Result<()>;
    /// Grows the backing store to at least `capacity_bytes`; returns the new size.
    async fn expand_volume(&self, id: VolumeId, capacity_bytes: u64) -> Result<u64>;
    async fn get_volume(&self, id: VolumeId) -> Result<VolumeInfo>;
    async fn list_volumes(&self) -> Result<Vec<VolumeInfo>>;
    /// Takes a point-in-time copy (the file system is frozen while it is taken).
    async fn create_snapshot(
        &self,
        id: SnapshotId,
        name: String,
        source: VolumeId,
    ) -> Result<SnapshotInfo>;
    async fn delete_snapshot(&self, id: SnapshotId) -> Result<()>;
    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>>;
    async fn capacity(&self, layout: Layout) -> Result<Capacity>;
    /// Creates this node's replica of a replicated volume, or returns it if it exists
    /// with the same size; ALREADY_EXISTS with another size. FAILED_PRECONDITION on a node
    /// that hosts no replica service (the defaults are what such a node answers: only the
    /// node's replica layer, in warren-node, overrides these four).
    async fn create_replica(&self, spec: ReplicaSpec) -> Result<ReplicaInfo> {
        Err(no_replica_service(&spec.volume))
    }
    /// Deletes this node's replica; a missing one is success (so, on a node without a
    /// replica service, every one is). FAILED_PRECONDITION while an engine has it open.
    async fn delete_replica(&self, _volume: ReplicatedVolumeId) -> Result<()> {
        Ok(())
    }
    /// Grows this node's replica to `size_bytes` (a multiple of 4096), also while an
    /// engine has it open (the engine serves the new size once every replica has it and
    /// it is told). Idempotent: a replica already that large or larger is left as it is
    /// (the answer gives its size); never shrinks.
    /// NOT_FOUND if the node holds no replica; FAILED_PRECONDITION on a node that hosts
    /// no replica service.
    async fn expand_replica(
        &self,
        volume: ReplicatedVolumeId,
        _size_bytes: u64,
    ) -> Result<ReplicaInfo> {
        Err(no_replica_service(&volume))
    }
    /// This node's replica, NOT_FOUND if it holds none.
    async fn get_replica(&self, volume: ReplicatedVolumeId) -> Result<ReplicaInfo> {
        Err(crate::Error::NotFound(format!(
            "this node hosts no replica service, so it holds no replica of {volume}"
        )))
    }
    /// Takes `snapshot` of its volume through the volume's engine, when this node runs it
    /// (the volume is staged here): a mounted file system is frozen, the engine lets no
    /// write be in flight, and every in-sync member copies its replica at that one point
    /// in the write order. One entry per replica that took it. Idempotent (copies already
    /// taken are returned as they are). NOT_FOUND when the engine does not run here.
    async fn snapshot_through_engine(
        &self,
        snapshot: ReplicatedSnapshotId,
    ) -> Result<Vec<ReplicaSnapshotInfo>> {
        Err(crate::Error::NotFound(format!(
            "the engine of {} does not run on this node",
            snapshot.volume
        )))
    }
    /// Copies this node's replica into `snapshot`, when no engine has it open (it then
    /// holds what its last engine left). ABORTED while an engine has it open (the engine's
    /// node takes the snapshot instead); NOT_FOUND when the node holds no replica; an
    /// engine that opens the replica while the copy runs waits for it. Idempotent.
    async fn snapshot_replica(
        &self,
        snapshot: ReplicatedSnapshotId,
    ) -> Result<ReplicaSnapshotInfo> {
        Err(no_replica_service(&snapshot.volume))
    }
    /// Deletes this node's copy of `snapshot`; a missing one is success.
    async fn delete_replica_snapshot(&self, _snapshot: ReplicatedSnapshotId) -> Result<()> {
        Ok(())
    }
    /// Fills the new replicated volume `target` from `source` (which this node keeps),
    /// through an engine of its own, then closes the volume clean. Safe to repeat on the
    /// same target (a retry after a crash writes the same bytes again). NOT_FOUND when this
    /// node does not keep the source; INVALID_ARGUMENT when it cannot be copied into a
    /// block volume (a `dir` layout) or is larger than the target.
    async fn seed_replicated(&self, target: SeedTarget, _source: SeedSource) -> Result<SeedReport> {
        Err(no_replica_service(&target.volume))
    }
}

fn no_replica_service(volume: &ReplicatedVolumeId) -> crate::Error {
    crate::Error::FailedPrecondition(format!(
        "this node hosts no replica service, so it holds no replica of {volume}"
    ))
}
