//! JSON bodies of the control frames.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenRequest {
    pub volume: String,
    /// With `create`, the size of a replica made now. Otherwise the least size accepted:
    /// the replica is opened at its own size (it may have grown), which the reply's
    /// state carries.
    pub size: u64,
    /// Create an empty replica when there is none.
    pub create: bool,
}

/// `Grow`: the size the replica grows to (never shrinks; idempotent).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrowRequest {
    pub size: u64,
}

/// `Commit` and `BeginRebuild`: compare-and-set of the generation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerationChange {
    pub expect: u64,
    pub gen: u64,
    pub members: Vec<String>,
}

/// `Snapshot`: copy the open replica into the snapshot `name`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub name: String,
    /// Names the one point in the volume's write order the copies are taken at: every copy
    /// an engine takes under one hold of its membership lock carries the same point.
    pub point: String,
    /// A copy of `name` at another point is replaced by one taken now (the engine
    /// completing a set that an earlier, interrupted attempt began).
    pub replace: bool,
}
