//! `backend: replicated` in the Controller service: create and delete (expansion is in
//! `replicated/expand.rs`). A replicated
//! volume is one replica on each of N nodes; the controller picks the nodes
//! (`replica_placement`), records them, then asks each node's replica service for its
//! replica. The node that later stages the volume starts its engine from the volume
//! context written here.
//!
//! Crash safety is the local volumes' write-ahead rule over N nodes: the record naming
//! every chosen node is written (`Creating`) before any node is asked, and dropped only
//! once every node has answered that its replica is gone. So after `kill -9` at any point
//! no replica exists that no record names, and reconciliation undoes `Creating` records
//! (nobody was told their ID) and finishes `Deleting` ones.
//!
//! The queries (validate, get, list, capacity) are in `replicated/queries.rs`.

use csi_proto::v1::*;
use warren_core::capability::{parse_capability, parse_shared_capabilities, Access};
use warren_core::ids::{Key, Layout, ReplicatedVolumeId};
use warren_core::params::parse_replicated_params;
use warren_core::storage::ReplicaSpec;
use warren_core::validate::validate_name;
use warren_core::{Error, Result};

use crate::records::State;
use crate::replica_placement::{place_replicas, ReplicaRequest};
use crate::replicated_record::{ReplicaLocation, ReplicatedRecord};

use super::capacity::volume_capacity;
use super::ControllerService;

mod expand;
mod fanout;
mod queries;
mod seed;
mod snapshots;

use fanout::{from_node, on_each};
use queries::csi_replicated_volume;
pub(super) use snapshots::csi_replicated_snapshot;

/// Parses the capabilities of a replicated volume: one node uses it at a time (the engine
/// runs where it is staged), as a file system or a raw block device. Whether it is block.
fn single_node_capabilities(caps: &[VolumeCapability]) -> Result<bool> {
    let parsed = parse_shared_capabilities(caps)?;
    if caps.iter().any(|cap| parse_capability(cap).is_err()) {
        return Err(Error::InvalidArgument(
            "replicated volumes are used by one node at a time: only single-node access \
             modes (ReadWriteOnce, ReadWriteOncePod) are supported"
                .into(),
        ));
    }
    Ok(parsed.iter().any(|c| c.access == Access::Block))
}

impl ControllerService {
    pub(super) async fn create_replicated(&self, req: CreateVolumeRequest) -> Result<Volume> {
        validate_name("volume", &req.name)?;
        let params = parse_replicated_params(&req.parameters)?;
        let block = single_node_capabilities(&req.volume_capabilities)?;
        let capacity = volume_capacity(req.capacity_range.as_ref(), Layout::Image)?;
        // A source that does not exist is NOT_FOUND, as the spec asks.
        let source = self
            .replicated_source(req.volume_content_source.as_ref(), capacity)
            .await?;

        let _name_lock = self
            .locks()
            .lock(&format!("volume-name/{}", req.name))
            .await;
        // One namespace of names for every kind the controller records.
        if self.records().volume_by_name(&req.name).is_some() {
            return Err(Error::AlreadyExists(format!(
                "volume {:?} exists as a local volume",
                req.name
            )));
        }
        if let Some(rec) = self.records().replicated_by_name(&req.name) {
            if !rec.same_request(&params, capacity, source.as_ref()) {
                return Err(Error::AlreadyExists(format!(
                    "volume {:?} exists with another size, parameters or source",
                    req.name
                )));
            }
            return match rec.state {
                State::Ready => Ok(csi_replicated_volume(&rec)),
                // A crash or an unreachable node left it half made: finish it now.
                State::Creating => self.finish_replicated(rec).await,
                State::Deleting => Err(Error::Aborted(format!(
                    "volume {:?} is being deleted; retry later",
                    req.name
                ))),
            };
        }

        let nodes = self.observe_nodes().await;
        let placed = place_replicas(
            &ReplicaRequest {
                replicas: usize::from(params.replicas),
                size_bytes: capacity,
                topology: req.accessibility_requirements.as_ref(),
                locality: params.data_locality,
                spread: params.spread.as_ref(),
            },
            &nodes,
        )?;
        let rec = ReplicatedRecord {
            id: ReplicatedVolumeId::new(Key::random()),
            name: req.name.clone(),
            capacity_bytes: capacity,
            replicas: placed
                .into_iter()
                .map(|p| ReplicaLocation {
                    node: p.node,
                    endpoint: p.endpoint,
                })
                .collect(),
            replica_count: params.replicas,
            fs_type: params.fs_type.clone(),
            data_locality: params.data_locality,
            spread_key: params.spread.as_ref().map(|s| s.key.clone()),
            spread_required: params.spread.as_ref().is_some_and(|s| s.required),
            rebuild_rate: params.rebuild_rate,
            block,
            source,
            state: State::Creating,
        };
        self.records().put_replicated(&rec)?;
        self.finish_replicated(rec).await
    }

    /// Asks every recorded node for its replica, then marks the volume ready. A node that
    /// refuses undoes the whole volume (a volume short of replicas is not what was asked);
    /// an unreachable one leaves the record `Creating` for a retry or reconciliation.
    async fn finish_replicated(&self, mut rec: ReplicatedRecord) -> Result<Volume> {
        let spec = ReplicaSpec {
            volume: rec.id.clone(),
            size_bytes: rec.capacity_bytes,
            members: rec.nodes(),
        };
        let answers = on_each(self.nodes(), &rec.nodes(), None, |node| {
            let spec = spec.clone();
            async move { node.create_replica(spec).await }
        })
        .await;
        let mut infos = Vec::new();
        let (mut refused, mut unreachable) = (None, None);
        for (replica, answer) in rec.replicas.iter().zip(answers) {
            match answer {
                Ok(info) => infos.push(info),
                Err(e @ Error::Unavailable(_)) => {
                    unreachable.get_or_insert(from_node(&replica.node, e));
                }
                Err(e) => {
                    refused.get_or_insert(from_node(&replica.node, e));
                }
            }
        }
        if let Some(e) = refused {
            // The nodes that made their replica take it back; the record goes only when
            // every node is known to hold none (else reconciliation finishes the undo).
            match self.remove_replicas(&rec).await {
                Ok(()) => self.records().remove_replicated(&rec.id.key)?,
                Err(undo) => tracing::warn!(volume = %rec.id, error = %undo,
                    "could not undo a refused replicated volume yet; reconciliation will"),
            }
            return Err(e);
        }
        if let Some(e) = unreachable {
            // Kept `Creating`: a retry (same name) or reconciliation finishes or undoes it.
            return Err(e);
        }
        // The nodes' own word on where they serve the replica.
        for (replica, info) in rec.replicas.iter_mut().zip(infos) {
            replica.endpoint = info.endpoint;
        }
        if let Some(source) = rec.source.clone() {
            match self.seed(&rec, &source).await {
                Ok(()) => {}
                // Kept `Creating`: a retry seeds again, or reconciliation undoes it.
                Err(e @ (Error::Unavailable(_) | Error::Aborted(_))) => return Err(e),
                Err(e) => {
                    let undo = match self.remove_replicas(&rec).await {
                        Ok(()) => self.remove_seed_leftovers(&rec).await,
                        Err(e) => Err(e),
                    };
                    match undo {
                        Ok(()) => self.records().remove_replicated(&rec.id.key)?,
                        Err(undo) => tracing::warn!(volume = %rec.id, error = %undo,
                            "could not undo a volume whose seed failed yet; reconciliation will"),
                    }
                    return Err(e);
                }
            }
        }
        rec.state = State::Ready;
        self.records().put_replicated(&rec)?;
        Ok(csi_replicated_volume(&rec))
    }

    /// Deletes the replica on every recorded node, concurrently. The error, if any: one
    /// that leaves the outcome open (unreachable, failed) before an in-use refusal
    /// (FAILED_PRECONDITION), which alone means nothing needs finishing later.
    pub(crate) async fn remove_replicas(&self, rec: &ReplicatedRecord) -> Result<()> {
        let id = rec.id.clone();
        let answers = on_each(self.nodes(), &rec.nodes(), None, |node| {
            let id = id.clone();
            async move { node.delete_replica(id).await }
        })
        .await;
        let (mut in_use, mut other) = (None, None);
        for (replica, answer) in rec.replicas.iter().zip(answers) {
            match answer {
                Ok(()) => {}
                Err(e @ Error::FailedPrecondition(_)) => {
                    in_use.get_or_insert(from_node(&replica.node, e));
                }
                Err(e) => {
                    other.get_or_insert(from_node(&replica.node, e));
                }
            }
        }
        match other.or(in_use) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A replicated ID without a record: deleted before, or made by another controller
    /// (the edge mode's previous leader; a standard controller whose records were lost).
    /// Its replicas, if any, are on nodes no record names: every known node is asked to
    /// delete it (a node without it answers success), and any node that cannot answer
    /// makes the call fail, to be retried, rather than leave a replica behind.
    async fn remove_unrecorded(&self, id: &ReplicatedVolumeId) -> Result<()> {
        let names = self.nodes().names();
        let answers = on_each(self.nodes(), &names, None, |node| {
            let id = id.clone();
            async move { node.delete_replica(id).await }
        })
        .await;
        for (node, answer) in names.iter().zip(answers) {
            answer.map_err(|e| from_node(node, e))?;
        }
        Ok(())
    }

    pub(super) async fn delete_replicated(&self, raw: &str) -> Result<()> {
        // Malformed: it cannot name a volume Warren made, so it is already gone.
        let Ok(id) = ReplicatedVolumeId::parse(raw) else {
            return Ok(());
        };
        let _lock = self.locks().lock(id.key.as_str()).await;
        let Some(mut rec) = self.records().replicated(&id.key) else {
            return self.remove_unrecorded(&id).await;
        };
        let _name_lock = self
            .locks()
            .lock(&format!("volume-name/{}", rec.name))
            .await;
        let previous = rec.state;
        rec.state = State::Deleting;
        self.records().put_replicated(&rec)?;
        match self.remove_replicas(&rec).await {
            Ok(()) => self.records().remove_replicated(&id.key),
            Err(e @ Error::FailedPrecondition(_)) => {
                // In use: the volume stays as it was. (The engine holds every replica
                // open, so in practice every node refuses alike.)
                rec.state = previous;
                self.records().put_replicated(&rec)?;
                Err(e)
            }
            // Unreachable: kept `Deleting`; reconciliation finishes it.
            Err(e) => Err(e),
        }
    }
}
