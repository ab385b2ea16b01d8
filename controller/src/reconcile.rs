//! Reconciliation of the controller's records with the nodes, at startup and periodically.
//!
//! A record in `Creating` means the CO never got an answer: nobody knows its ID, so the
//! safe move is to undo it on its node (every replica's node, for a replicated volume)
//! and drop the record (a retried CreateVolume simply makes it again). A record in `Deleting` is finished. A node that cannot be reached
//! keeps its records as they are until the next pass. Nothing here ever deletes a volume
//! that the CO was told about. Each record is handled under the same locks the handlers
//! take (id, then name), so a pass never races a live CreateVolume or DeleteVolume.

use warren_core::Error;

use crate::records::State;
use crate::service::ControllerService;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub undone: usize,
    pub deleted: usize,
    /// Records left for a later pass (node unreachable or refusing).
    pub pending: usize,
}

impl Report {
    fn count(&mut self, state: State, result: Result<(), Error>, what: &str, id: String) {
        match result {
            Ok(()) if state == State::Creating => self.undone += 1,
            Ok(()) => self.deleted += 1,
            Err(e) => {
                self.pending += 1;
                tracing::warn!(kind = what, id, error = %e, "could not reconcile; will retry");
            }
        }
    }
}

impl ControllerService {
    /// Whether `name` is the snapshot a clone of a replicated volume was seeded from
    /// (`warren-clone-<volume key>`) and that clone is no longer being made: the clone
    /// deletes it when done, so one left over is a crash's leftover.
    fn clone_snapshot_done(&self, name: &str) -> bool {
        let Some(key) = name
            .strip_prefix("warren-clone-")
            .and_then(warren_core::ids::Key::parse)
        else {
            return false;
        };
        self.records()
            .replicated(&key)
            .is_none_or(|clone| clone.state != State::Creating)
    }

    /// The locks a handler holds on a record: its key's, then its name's (`<kind>-name/…`),
    /// so a reconciliation never settles a record a call is working on.
    async fn lock_record(
        &self,
        key: &warren_core::ids::Key,
        kind: &str,
        name: &str,
    ) -> (warren_core::lock::KeyGuard, warren_core::lock::KeyGuard) {
        let id = self.locks().lock(key.as_str()).await;
        let name = self.locks().lock(&format!("{kind}-name/{name}")).await;
        (id, name)
    }

    pub async fn reconcile(&self) -> Report {
        let mut report = Report::default();
        for stale in self.records().volumes() {
            if stale.state == State::Ready {
                continue;
            }
            let _locks = self.lock_record(&stale.id.key, "volume", &stale.name).await;
            // Re-read under the locks: a handler may have finished it meanwhile.
            let Some(rec) = self.records().volume(&stale.id.key) else {
                continue;
            };
            if rec.state == State::Ready {
                continue;
            }
            let result = match self.nodes().get(&rec.id.node) {
                Ok(node) => node.delete_volume(rec.id.clone()).await,
                Err(e) => Err(e),
            }
            .and_then(|()| self.records().remove_volume(&rec.id.key));
            report.count(rec.state, result, "volume", rec.id.to_string());
        }
        for stale in self.records().snapshots() {
            if stale.state == State::Ready {
                continue;
            }
            let _locks = self
                .lock_record(&stale.id.key, "snapshot", &stale.name)
                .await;
            let Some(rec) = self.records().snapshot(&stale.id.key) else {
                continue;
            };
            if rec.state == State::Ready {
                continue;
            }
            let result = match self.nodes().get(&rec.id.node) {
                Ok(node) => node.delete_snapshot(rec.id.clone()).await,
                Err(e) => Err(e),
            }
            .and_then(|()| self.records().remove_snapshot(&rec.id.key));
            report.count(rec.state, result, "snapshot", rec.id.to_string());
        }
        for stale in self.records().replicated_volumes() {
            if stale.state == State::Ready {
                continue;
            }
            let _locks = self.lock_record(&stale.id.key, "volume", &stale.name).await;
            let Some(rec) = self.records().replicated(&stale.id.key) else {
                continue;
            };
            if rec.state == State::Ready {
                continue;
            }
            // Undoing a `Creating` volume and finishing a `Deleting` one are the same
            // work: every recorded node's replica goes, then the record.
            let mut result = self.remove_replicas(&rec).await;
            if result.is_ok() && rec.state == State::Creating {
                result = self.remove_seed_leftovers(&rec).await;
            }
            let result = result.and_then(|()| self.records().remove_replicated(&rec.id.key));
            report.count(rec.state, result, "replicated volume", rec.id.to_string());
        }
        for stale in self.records().replicated_snapshots() {
            if stale.state == State::Ready && !self.clone_snapshot_done(&stale.name) {
                continue;
            }
            let _locks = self
                .lock_record(&stale.id.key, "snapshot", &stale.name)
                .await;
            let Some(rec) = self.records().replicated_snapshot(&stale.id.key) else {
                continue;
            };
            if rec.state == State::Ready && !self.clone_snapshot_done(&rec.name) {
                continue;
            }
            // A half-taken snapshot (nobody was told its ID), one being deleted, or the
            // snapshot a clone was seeded from after a crash: every copy goes.
            let result = self
                .remove_snapshot_copies(&rec)
                .await
                .and_then(|()| self.records().remove_replicated_snapshot(&rec.id.key));
            let state = if rec.state == State::Ready {
                State::Deleting
            } else {
                rec.state
            };
            report.count(state, result, "replicated snapshot", rec.id.to_string());
        }
        if report != Report::default() {
            tracing::info!(?report, "reconciled records with nodes");
        }
        report
    }
}
