//! The controller's durable records of volumes and snapshots: one JSON file per object
//! under `<state-dir>/controller/{volumes,snapshots,replicated,replicated-snapshots}/`, kept by `RecordDir`.
//!
//! A record is written *before* the node is asked to act (state `Creating` / `Deleting`),
//! so after `kill -9` startup knows exactly which node operations may be half done and
//! finishes or undoes them (see `reconcile`). Names map to records, which is what makes
//! CreateVolume and CreateSnapshot idempotent by name.

use std::path::Path;

use serde::{Deserialize, Serialize};
use warren_core::ids::{Key, SnapshotId, VolumeId};
use warren_core::storage::{Allocation, ContentSource, SnapshotInfo};
use warren_core::Result;

use crate::record_dir::{Record, RecordDir};
use crate::replicated_record::ReplicatedRecord;
use crate::replicated_snapshot_record::ReplicatedSnapshotRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Recorded; the node may or may not have the object yet.
    Creating,
    Ready,
    /// Being removed from its node.
    Deleting,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub id: VolumeId,
    pub name: String,
    pub capacity_bytes: u64,
    pub allocation: Allocation,
    pub source: Option<ContentSource>,
    /// Created for raw block access (no node-side file system growth).
    pub block: bool,
    /// The StorageClass's `fsType`, handed to the node in the volume context.
    #[serde(default)]
    pub fs_type: Option<String>,
    /// `backend: share`: its node serves it over NFS to the other nodes.
    #[serde(default)]
    pub shared: bool,
    /// Where its node serves it (`IP:PORT`), once created.
    #[serde(default)]
    pub share_endpoint: Option<String>,
    pub state: State,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: SnapshotId,
    pub name: String,
    pub source_volume: VolumeId,
    pub state: State,
    /// Filled in once the node has taken the snapshot.
    pub info: Option<SnapshotInfo>,
}

/// The volumes' and snapshots' records, each kind in its own record directory. Local and
/// replicated volumes share one namespace of CSI names; the handlers check both.
pub struct Records {
    volumes: RecordDir<VolumeRecord>,
    snapshots: RecordDir<SnapshotRecord>,
    replicated: RecordDir<ReplicatedRecord>,
    replicated_snapshots: RecordDir<ReplicatedSnapshotRecord>,
}

impl Record for VolumeRecord {
    fn key(&self) -> &Key {
        &self.id.key
    }
    fn name(&self) -> Option<&str> {
        Some(&self.name)
    }
}

impl Record for SnapshotRecord {
    fn key(&self) -> &Key {
        &self.id.key
    }
    fn name(&self) -> Option<&str> {
        Some(&self.name)
    }
}

impl Records {
    pub fn open(state_dir: &Path) -> Result<Records> {
        let base = state_dir.join("controller");
        Ok(Records {
            volumes: RecordDir::open(&base.join("volumes"))?,
            snapshots: RecordDir::open(&base.join("snapshots"))?,
            replicated: RecordDir::open(&base.join("replicated"))?,
            replicated_snapshots: RecordDir::open(&base.join("replicated-snapshots"))?,
        })
    }

    pub fn volume(&self, key: &Key) -> Option<VolumeRecord> {
        self.volumes.get(key)
    }

    pub fn volume_by_name(&self, name: &str) -> Option<VolumeRecord> {
        self.volumes.by_name(name)
    }

    /// Volumes in key order (stable for paging).
    pub fn volumes(&self) -> Vec<VolumeRecord> {
        self.volumes.all()
    }

    /// Writes the record durably, then makes it visible.
    pub fn put_volume(&self, rec: &VolumeRecord) -> Result<()> {
        self.volumes.put(rec)
    }

    pub fn remove_volume(&self, key: &Key) -> Result<()> {
        self.volumes.remove(key)
    }

    pub fn snapshot(&self, key: &Key) -> Option<SnapshotRecord> {
        self.snapshots.get(key)
    }

    pub fn snapshot_by_name(&self, name: &str) -> Option<SnapshotRecord> {
        self.snapshots.by_name(name)
    }

    pub fn snapshots(&self) -> Vec<SnapshotRecord> {
        self.snapshots.all()
    }

    pub fn put_snapshot(&self, rec: &SnapshotRecord) -> Result<()> {
        self.snapshots.put(rec)
    }

    pub fn remove_snapshot(&self, key: &Key) -> Result<()> {
        self.snapshots.remove(key)
    }

    pub fn replicated(&self, key: &Key) -> Option<ReplicatedRecord> {
        self.replicated.get(key)
    }

    pub fn replicated_by_name(&self, name: &str) -> Option<ReplicatedRecord> {
        self.replicated.by_name(name)
    }

    /// Replicated volumes in key order.
    pub fn replicated_volumes(&self) -> Vec<ReplicatedRecord> {
        self.replicated.all()
    }

    /// Writes the record durably, then makes it visible.
    pub fn put_replicated(&self, rec: &ReplicatedRecord) -> Result<()> {
        self.replicated.put(rec)
    }

    pub fn remove_replicated(&self, key: &Key) -> Result<()> {
        self.replicated.remove(key)
    }

    pub fn replicated_snapshot(&self, key: &Key) -> Option<ReplicatedSnapshotRecord> {
        self.replicated_snapshots.get(key)
    }

    pub fn replicated_snapshot_by_name(&self, name: &str) -> Option<ReplicatedSnapshotRecord> {
        self.replicated_snapshots.by_name(name)
    }

    /// Snapshots of replicated volumes in key order.
    pub fn replicated_snapshots(&self) -> Vec<ReplicatedSnapshotRecord> {
        self.replicated_snapshots.all()
    }

    /// Writes the record durably, then makes it visible.
    pub fn put_replicated_snapshot(&self, rec: &ReplicatedSnapshotRecord) -> Result<()> {
        self.replicated_snapshots.put(rec)
    }

    pub fn remove_replicated_snapshot(&self, key: &Key) -> Result<()> {
        self.replicated_snapshots.remove(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_core::ids::Layout;

    fn record(name: &str) -> VolumeRecord {
        VolumeRecord {
            id: VolumeId::new(Layout::Image, "n1", Key::random()),
            name: name.into(),
            capacity_bytes: 1 << 30,
            allocation: Allocation::Thick,
            source: None,
            block: false,
            fs_type: None,
            shared: false,
            share_endpoint: None,
            state: State::Creating,
        }
    }

    #[test]
    fn records_survive_reopen_and_names_index() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::open(dir.path()).unwrap();
        let mut a = record("pvc-a");
        records.put_volume(&a).unwrap();
        a.state = State::Ready;
        records.put_volume(&a).unwrap();
        let b = record("pvc-b");
        records.put_volume(&b).unwrap();
        records.remove_volume(&b.id.key).unwrap();
        drop(records);

        let reopened = Records::open(dir.path()).unwrap();
        assert_eq!(reopened.volume_by_name("pvc-a"), Some(a));
        assert_eq!(reopened.volume_by_name("pvc-b"), None);
        assert_eq!(reopened.volumes().len(), 1);
    }
}
