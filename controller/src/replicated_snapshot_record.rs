//! The controller's record of one snapshot of a replicated volume, kept under
//! `<state-dir>/controller/replicated-snapshots/` (see `Records`).
//!
//! A snapshot is a copy of the volume's replicas, one per node that held one, all taken
//! at one point in the volume's write order. The record names every node asked to make a
//! copy *before* any is asked (state `Creating`), so after `kill -9` every copy can be
//! found and removed; once taken, it lists the copies that make the snapshot.

use serde::{Deserialize, Serialize};
use warren_core::ids::{Key, ReplicatedSnapshotId};
use warren_core::storage::ReplicaSnapshotInfo;

use crate::record_dir::Record;
use crate::records::State;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicatedSnapshotRecord {
    pub id: ReplicatedSnapshotId,
    pub name: String,
    /// Every node asked for a copy: DeleteSnapshot and reconciliation ask each of them,
    /// so a copy made by a node whose answer was lost is still removed.
    pub nodes: Vec<String>,
    /// The copies that make the snapshot (every one the same bytes), once taken.
    pub copies: Vec<ReplicaSnapshotInfo>,
    /// The source volume's size when taken.
    pub size_bytes: u64,
    pub state: State,
}

impl ReplicatedSnapshotRecord {
    /// When the snapshot was taken: its copies' earliest time (they are taken within one
    /// call, at the same point of the write order).
    pub fn created_at(&self) -> (i64, i32) {
        self.copies
            .iter()
            .map(|c| (c.created_at_secs, c.created_at_nanos))
            .min()
            .unwrap_or((0, 0))
    }
}

impl Record for ReplicatedSnapshotRecord {
    fn key(&self) -> &Key {
        &self.id.key
    }
    fn name(&self) -> Option<&str> {
        Some(&self.name)
    }
}
