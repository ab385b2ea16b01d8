//! Snapshots of replicated volumes: create, delete, and their CSI view.
//!
//! A snapshot is one copy per replica, all at one point in the volume's write order:
//! 1. The record, naming every node that may be asked for a copy, is written first
//!    (`Creating`), so a crash at any point leaves no copy that no record names.
//! 2. Every node is asked whether it runs the volume's engine (the volume is staged
//!    there); that node freezes the file system and has its engine copy every in-sync
//!    member while no write is in flight.
//! 3. When no node runs it, each replica's node copies its replica as the last engine
//!    left it; `snapshot_copies::choose_copies` keeps the copies that are the same bytes.
//!    A replica an engine opened meanwhile refuses (ABORTED): the partial snapshot is
//!    removed and the CO retries, which then finds the engine.

use csi_proto::v1::Snapshot;
use warren_core::ids::{Key, ReplicatedSnapshotId};
use warren_core::storage::ReplicaSnapshotInfo;
use warren_core::{Error, Result};

use crate::records::State;
use crate::replicated_snapshot_record::ReplicatedSnapshotRecord;
use crate::service::ControllerService;
use crate::snapshot_copies::choose_copies;

use super::fanout::{from_node, on_each};

/// The CSI view of a snapshot that is ready.
pub(in crate::service) fn csi_replicated_snapshot(rec: &ReplicatedSnapshotRecord) -> Snapshot {
    let (seconds, nanos) = rec.created_at();
    Snapshot {
        size_bytes: i64::try_from(rec.size_bytes).unwrap_or(i64::MAX),
        snapshot_id: rec.id.to_string(),
        source_volume_id: rec.id.volume.to_string(),
        creation_time: Some(prost_types::Timestamp { seconds, nanos }),
        ready_to_use: rec.state == State::Ready,
        group_snapshot_id: String::new(),
    }
}

impl ControllerService {
    /// CreateSnapshot of a replicated volume (`source` its ID). Names are shared with
    /// local snapshots: the caller holds the name's lock and has checked local records.
    pub(in crate::service) async fn create_replicated_snapshot(
        &self,
        name: &str,
        source: &str,
    ) -> Result<ReplicatedSnapshotRecord> {
        if let Some(rec) = self.records().replicated_snapshot_by_name(name) {
            if rec.id.volume.to_string() != source {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {name:?} exists for another volume"
                )));
            }
            return match rec.state {
                State::Ready => Ok(rec),
                State::Creating => self.finish_replicated_snapshot(rec).await,
                State::Deleting => Err(Error::Aborted(format!(
                    "snapshot {name:?} is being deleted; retry later"
                ))),
            };
        }
        let volume = self.ready_replicated(source)?;
        let rec = ReplicatedSnapshotRecord {
            id: ReplicatedSnapshotId::new(volume.id.clone(), Key::random()),
            name: name.to_string(),
            nodes: volume.nodes(),
            copies: Vec::new(),
            size_bytes: volume.capacity_bytes,
            state: State::Creating,
        };
        self.records().put_replicated_snapshot(&rec)?;
        self.finish_replicated_snapshot(rec).await
    }

    async fn finish_replicated_snapshot(
        &self,
        mut rec: ReplicatedSnapshotRecord,
    ) -> Result<ReplicatedSnapshotRecord> {
        let copies = match self.snapshot_through_engine(&rec).await? {
            Some(copies) => copies,
            None => self.snapshot_idle_replicas(&rec).await?,
        };
        if copies.is_empty() {
            return Err(Error::Unavailable(format!(
                "no replica of {} could be copied for snapshot {:?}",
                rec.id.volume, rec.name
            )));
        }
        rec.copies = copies;
        rec.state = State::Ready;
        self.records().put_replicated_snapshot(&rec)?;
        Ok(rec)
    }

    /// Asks every node whether it runs the volume's engine and, if one does, has it take
    /// the snapshot. None when no node runs it.
    async fn snapshot_through_engine(
        &self,
        rec: &ReplicatedSnapshotRecord,
    ) -> Result<Option<Vec<ReplicaSnapshotInfo>>> {
        let names = self.nodes().names();
        let answers = on_each(self.nodes(), &names, None, |node| {
            let id = rec.id.clone();
            async move { node.snapshot_through_engine(id).await }
        })
        .await;
        for (node, answer) in names.iter().zip(answers) {
            match answer {
                Ok(copies) => {
                    let copies = self.note_copy_nodes(rec, copies)?;
                    return Ok(Some(copies));
                }
                Err(Error::NotFound(_)) => {}
                // Unreachable: it may run the engine, but then its replicas refuse the
                // copies below (an engine holds them open) and the call is retried.
                Err(Error::Unavailable(_)) => {}
                Err(e) => return Err(from_node(node, e)),
            }
        }
        Ok(None)
    }

    /// A node whose copy is not in the record yet (a replica moved) is recorded before
    /// its copy is kept, so a later delete asks it too.
    fn note_copy_nodes(
        &self,
        rec: &ReplicatedSnapshotRecord,
        copies: Vec<ReplicaSnapshotInfo>,
    ) -> Result<Vec<ReplicaSnapshotInfo>> {
        let missing: Vec<String> = copies
            .iter()
            .map(|c| c.node.clone())
            .filter(|n| !rec.nodes.contains(n))
            .collect();
        if !missing.is_empty() {
            let mut widened = rec.clone();
            widened.nodes.extend(missing);
            self.records().put_replicated_snapshot(&widened)?;
        }
        Ok(copies)
    }

    /// No engine runs: each replica's node copies its replica; the copies that agree are
    /// kept and the others deleted.
    async fn snapshot_idle_replicas(
        &self,
        rec: &ReplicatedSnapshotRecord,
    ) -> Result<Vec<ReplicaSnapshotInfo>> {
        let answers = on_each(self.nodes(), &rec.nodes, None, |node| {
            let id = rec.id.clone();
            async move { node.snapshot_replica(id).await }
        })
        .await;
        let (mut copies, mut in_use, mut failed) = (Vec::new(), None, None);
        for (node, answer) in rec.nodes.iter().zip(answers) {
            match answer {
                Ok(copy) => copies.push(copy),
                Err(e @ Error::Aborted(_)) => {
                    in_use.get_or_insert(from_node(node, e));
                }
                // Holds no replica (any more): nothing to copy there.
                Err(Error::NotFound(_)) => {}
                Err(e) => {
                    failed.get_or_insert(from_node(node, e));
                }
            }
        }
        if let Some(e) = in_use {
            // An engine started while the copies were taken: they may not be one point.
            self.remove_snapshot_copies(rec).await?;
            return Err(e);
        }
        let choice = choose_copies(copies);
        if choice.keep.is_empty() {
            return Err(failed.unwrap_or_else(|| {
                Error::NotFound(format!("no node holds a replica of {}", rec.id.volume))
            }));
        }
        for copy in choice.discard {
            let answer = match self.nodes().get(&copy.node) {
                Ok(node) => node.delete_replica_snapshot(rec.id.clone()).await,
                Err(e) => Err(e),
            };
            if let Err(e) = answer {
                // Still in the record's nodes: deleting the snapshot removes it later.
                tracing::warn!(snapshot = %rec.id, node = copy.node, error = %e,
                    "could not remove a copy that is not kept");
            }
        }
        Ok(choice.keep)
    }

    /// Deletes the copy on every node the record names; the first error, if any.
    pub(crate) async fn remove_snapshot_copies(
        &self,
        rec: &ReplicatedSnapshotRecord,
    ) -> Result<()> {
        let answers = on_each(self.nodes(), &rec.nodes, None, |node| {
            let id = rec.id.clone();
            async move { node.delete_replica_snapshot(id).await }
        })
        .await;
        for (node, answer) in rec.nodes.iter().zip(answers) {
            answer.map_err(|e| from_node(node, e))?;
        }
        Ok(())
    }

    /// DeleteSnapshot of a replicated volume's snapshot. A malformed or unknown ID is
    /// success (nothing of it exists); an unknown one is still asked of every node, as a
    /// previous controller may have made it.
    pub(in crate::service) async fn delete_replicated_snapshot(&self, raw: &str) -> Result<()> {
        let Ok(id) = ReplicatedSnapshotId::parse(raw) else {
            return Ok(());
        };
        let _lock = self.locks().lock(id.key.as_str()).await;
        let Some(mut rec) = self
            .records()
            .replicated_snapshot(&id.key)
            .filter(|r| r.id == id)
        else {
            let orphan = ReplicatedSnapshotRecord {
                id,
                name: String::new(),
                nodes: self.nodes().names(),
                copies: Vec::new(),
                size_bytes: 0,
                state: State::Deleting,
            };
            return self.remove_snapshot_copies(&orphan).await;
        };
        let _name_lock = self
            .locks()
            .lock(&format!("snapshot-name/{}", rec.name))
            .await;
        rec.state = State::Deleting;
        self.records().put_replicated_snapshot(&rec)?;
        self.remove_snapshot_copies(&rec).await?;
        self.records().remove_replicated_snapshot(&rec.id.key)
    }

    /// Ready snapshots of replicated volumes, by key, for ListSnapshots.
    pub(in crate::service) fn replicated_snapshot_entries(&self) -> Vec<(Key, Snapshot)> {
        self.records()
            .replicated_snapshots()
            .into_iter()
            .filter(|r| r.state == State::Ready)
            .map(|r| (r.id.key.clone(), csi_replicated_snapshot(&r)))
            .collect()
    }

    /// A ready snapshot of a replicated volume, NOT_FOUND otherwise.
    pub(in crate::service) fn ready_replicated_snapshot(
        &self,
        raw: &str,
    ) -> Result<ReplicatedSnapshotRecord> {
        ReplicatedSnapshotId::parse(raw)
            .ok()
            .and_then(|id| {
                self.records()
                    .replicated_snapshot(&id.key)
                    .filter(|r| r.id == id)
            })
            .filter(|r| r.state == State::Ready)
            .ok_or_else(|| Error::NotFound(format!("snapshot {raw:?} does not exist")))
    }
}
