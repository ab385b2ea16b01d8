//! Replicated volumes: what the CO learns about them (the Volume it is given, validation,
//! health, listing, capacity), and what placement learns about the nodes.

use std::collections::HashMap;

use csi_proto::v1::*;
use warren_core::ids::{Key, Layout, ReplicatedVolumeId};
use warren_core::params::DataLocality;
use warren_core::params::{parse_replicated_params, ReplicatedContext, CONTEXT_FS_TYPE};
use warren_core::storage::ReplicaInfo;
use warren_core::validate::MIN_IMAGE_BYTES;
use warren_core::{Error, Result};

use crate::records::State;
use crate::replica_placement::{NodeFacts, Seen};
use crate::replicated_record::{ReplicatedRecord, ReplicatedSource};

use super::super::volumes::{confirm, topology};
use super::super::ControllerService;
use super::fanout::{on_each, PROBE_TIMEOUT};
use super::single_node_capabilities;

/// The Volume the CO is given: the context the node starts the engine from, and where
/// it may be used (anywhere, unless data locality is strict: then on its replicas' nodes).
pub(super) fn csi_replicated_volume(rec: &ReplicatedRecord) -> Volume {
    let mut volume_context = HashMap::new();
    ReplicatedContext {
        replicas: rec.endpoints(),
        size_bytes: rec.capacity_bytes,
        rebuild_rate: rec.rebuild_rate,
    }
    .write(&mut volume_context);
    if let Some(fs) = &rec.fs_type {
        volume_context.insert(CONTEXT_FS_TYPE.to_string(), fs.clone());
    }
    let accessible_topology = match rec.data_locality {
        DataLocality::Strict => rec.replicas.iter().map(|r| topology(&r.node)).collect(),
        DataLocality::BestEffort | DataLocality::Disabled => vec![],
    };
    Volume {
        capacity_bytes: rec.capacity_bytes as i64,
        volume_id: rec.id.to_string(),
        volume_context,
        content_source: rec.source.as_ref().map(content_source),
        accessible_topology,
    }
}

/// The content source as the CO named it.
fn content_source(source: &ReplicatedSource) -> VolumeContentSource {
    use volume_content_source::{SnapshotSource, Type, VolumeSource};
    let r#type = if source.is_snapshot() {
        Type::Snapshot(SnapshotSource {
            snapshot_id: source.id(),
        })
    } else {
        Type::Volume(VolumeSource {
            volume_id: source.id(),
        })
    };
    VolumeContentSource {
        r#type: Some(r#type),
    }
}

/// How healthy the volume is from its replicas' own answers. The newest generation's
/// member list is the truth: a replica the engine cut out still believes itself in sync
/// (it never heard of the newer generation), so its own flag alone is not enough.
fn condition(rec: &ReplicatedRecord, answers: Vec<Result<ReplicaInfo>>) -> VolumeCondition {
    let newest = answers
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .max_by_key(|info| info.gen)
        .map(|info| (info.gen, info.members.clone()));
    let mut in_sync = 0usize;
    let mut problems = Vec::new();
    for (replica, answer) in rec.replicas.iter().zip(answers) {
        let node = &replica.node;
        match (answer, &newest) {
            (Ok(info), Some((gen, members))) if !members.contains(node) => problems.push(format!(
                "{node}: not a member of generation {gen} (left at {})",
                info.gen
            )),
            (Ok(info), _) if info.in_sync => in_sync += 1,
            (Ok(_), _) => problems.push(format!("{node}: not in sync (rebuilding)")),
            (Err(Error::NotFound(_)), _) => problems.push(format!("{node}: holds no replica")),
            (Err(e), _) => problems.push(format!("{node}: {e}")),
        }
    }
    let wanted = usize::from(rec.replica_count);
    if in_sync >= wanted {
        return VolumeCondition {
            abnormal: false,
            message: format!("all {wanted} replicas in sync"),
        };
    }
    VolumeCondition {
        abnormal: true,
        message: format!(
            "{in_sync} of {wanted} replicas in sync; {}",
            problems.join("; ")
        ),
    }
}

impl ControllerService {
    /// A replicated volume the CO was told about; NOT_FOUND otherwise.
    pub(super) fn ready_replicated(&self, raw: &str) -> Result<ReplicatedRecord> {
        ReplicatedVolumeId::parse(raw)
            .ok()
            .and_then(|id| self.records().replicated(&id.key).filter(|r| r.id == id))
            .filter(|r| r.state == State::Ready)
            .ok_or_else(|| Error::NotFound(format!("volume {raw:?} does not exist")))
    }

    /// Every known node's free space and replica service, asked concurrently; a node
    /// that does not answer in time is unreachable (and named as such by placement).
    pub(super) async fn observe_nodes(&self) -> Vec<NodeFacts> {
        let names = self.nodes().names();
        let answers = on_each(
            self.nodes(),
            &names,
            Some(PROBE_TIMEOUT),
            |node| async move { node.capacity(Layout::Image).await },
        )
        .await;
        names
            .into_iter()
            .zip(answers)
            .map(|(name, answer)| NodeFacts {
                // From the Node objects in a cluster; empty otherwise (a soft spread then
                // falls back to free space, and a required one cannot be met).
                labels: self.nodes().labels(&name),
                name,
                seen: match answer {
                    Ok(c) => Seen::Answered {
                        available_bytes: c.available_bytes,
                        replica_endpoint: c.replica_endpoint,
                    },
                    Err(e) => Seen::Unreachable(e.to_string()),
                },
            })
            .collect()
    }

    pub(in crate::service) fn validate_replicated(
        &self,
        req: ValidateVolumeCapabilitiesRequest,
    ) -> Result<ValidateVolumeCapabilitiesResponse> {
        self.ready_replicated(&req.volume_id)?;
        let params = (!req.parameters.is_empty())
            .then(|| parse_replicated_params(&req.parameters).err())
            .flatten();
        let problem = params
            .or_else(|| single_node_capabilities(&req.volume_capabilities).err())
            .map(|e| e.to_string());
        Ok(confirm(req, problem))
    }

    pub(in crate::service) async fn get_replicated(
        &self,
        raw: &str,
    ) -> Result<ControllerGetVolumeResponse> {
        let rec = self.ready_replicated(raw)?;
        let id = rec.id.clone();
        let answers = on_each(self.nodes(), &rec.nodes(), Some(PROBE_TIMEOUT), |node| {
            let id = id.clone();
            async move { node.get_replica(id).await }
        })
        .await;
        Ok(ControllerGetVolumeResponse {
            volume: Some(csi_replicated_volume(&rec)),
            status: Some(controller_get_volume_response::VolumeStatus {
                published_node_ids: vec![],
                volume_condition: Some(condition(&rec, answers)),
            }),
        })
    }

    /// The replicated volumes the CO was told about, by key (for ListVolumes).
    pub(in crate::service) fn replicated_list(&self) -> Vec<(Key, Volume)> {
        self.records()
            .replicated_volumes()
            .into_iter()
            .filter(|r| r.state == State::Ready)
            .map(|r| (r.id.key.clone(), csi_replicated_volume(&r)))
            .collect()
    }

    /// What one new volume of this class can get: the N-th largest free space among the
    /// nodes hosting a replica service (it needs N of them). The topology in the request
    /// is not narrowed to: a replicated volume is (unless strict) usable from any node.
    pub(in crate::service) async fn replicated_capacity(
        &self,
        req: &GetCapacityRequest,
    ) -> Result<GetCapacityResponse> {
        let params = parse_replicated_params(&req.parameters)?;
        if !req.volume_capabilities.is_empty() {
            single_node_capabilities(&req.volume_capabilities)?;
        }
        let mut free: Vec<u64> = self
            .observe_nodes()
            .await
            .into_iter()
            .filter_map(|n| match n.seen {
                Seen::Answered {
                    available_bytes,
                    replica_endpoint: Some(_),
                } => Some(available_bytes),
                _ => None,
            })
            .collect();
        free.sort_unstable_by(|a, b| b.cmp(a));
        let nth = usize::from(params.replicas)
            .checked_sub(1)
            .and_then(|i| free.get(i))
            .copied()
            .unwrap_or(0);
        Ok(GetCapacityResponse {
            available_capacity: nth as i64,
            maximum_volume_size: Some(nth as i64),
            minimum_volume_size: Some(MIN_IMAGE_BYTES as i64),
        })
    }
}
