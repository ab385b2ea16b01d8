//! The CSI Node service: thin gRPC handlers over `Stager` (stage/publish work on local
//! volumes), `NfsStager` (NFS volumes), `ReplicatedStager` (replicated volumes, when the
//! node hosts a replica service; `service/replicated.rs`) and `LocalStore` (what this
//! node holds).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use csi_proto::v1::node_server::Node;
use csi_proto::v1::node_service_capability::{rpc, Rpc, Type as CapType};
use csi_proto::v1::*;
use tonic::{Request, Response, Status};
use warren_core::capability::{parse_capability, Requested};
use warren_core::ids::{IdKind, ReplicatedVolumeId, VolumeId};
use warren_core::lock::KeyedLocks;
use warren_core::params::CONTEXT_SHARE;
use warren_core::storage::Condition;
use warren_core::TOPOLOGY_KEY;
use warren_nfs::volume_id::NfsVolumeId;

use crate::error::Result;
use crate::local::LocalStore;
use crate::mounter::Mounter;
use crate::nfs::{Deadlines, NfsStager};
use crate::paths::check_under_root;
use crate::replicated::ReplicatedStager;
use crate::stage::{Stager, Stats};
use requests::{capability, default_fs_type, share_request, usage};

pub struct NodeService {
    store: LocalStore,
    stager: Arc<Stager>,
    nfs: Arc<NfsStager>,
    /// NFS volumes have no local key; their calls are serialized by ID.
    nfs_locks: KeyedLocks,
    kubelet_dir: PathBuf,
    mounter: Arc<dyn Mounter>,
    /// Set by `with_replicas`: this node runs replicated volumes' engines.
    replicated: Option<Arc<ReplicatedStager>>,
}

/// The volume a node call is about.
enum Target {
    /// A volume this node holds.
    Local(VolumeId),
    Nfs(NfsVolumeId),
    /// A volume another node holds: usable here only as that node's shared volume,
    /// mounted over NFS from its share.
    Remote(VolumeId),
    Replicated(ReplicatedVolumeId),
}

impl NodeService {
    pub fn new(
        store: LocalStore,
        mounter: Arc<dyn Mounter>,
        kubelet_dir: PathBuf,
        nfs_deadlines: Deadlines,
    ) -> Self {
        NodeService {
            stager: Arc::new(Stager::new(store.clone(), mounter.clone())),
            nfs: Arc::new(NfsStager::new(mounter.clone(), nfs_deadlines)),
            nfs_locks: KeyedLocks::default(),
            store,
            kubelet_dir,
            mounter,
            replicated: None,
        }
    }

    fn path(&self, field: &str, value: &str) -> Result<PathBuf> {
        check_under_root(field, value, &self.kubelet_dir)
    }

    /// For calls that read what is at a volume path (stats, expand): after the required
    /// fields, an unknown volume is NOT_FOUND, and so is a path that cannot hold it (not
    /// below the kubelet dir): nothing is ever created there.
    fn volume_at_path(&self, raw_id: &str, raw_path: &str) -> Result<(Target, PathBuf), Status> {
        if raw_path.is_empty() {
            return Err(Status::invalid_argument("volume_path is required"));
        }
        let id = self.target(raw_id)?;
        let path = self
            .path("volume_path", raw_path)
            .map_err(|e| Status::not_found(format!("volume {raw_id} is not at that path: {e}")))?;
        Ok((id, path))
    }

    /// The volume a node request names, told by the ID's kind: an NFS volume, else a local
    /// one, of this node or of another.
    fn target(&self, raw: &str) -> Result<Target, Status> {
        match IdKind::of(raw) {
            Some(IdKind::NfsVolume) => NfsVolumeId::parse(raw)
                .map(Target::Nfs)
                .map_err(|e| Status::not_found(format!("no such volume: {e}"))),
            Some(IdKind::Replicated) => ReplicatedVolumeId::parse(raw)
                .map(Target::Replicated)
                .map_err(|e| Status::not_found(format!("no such volume: {e}"))),
            // Only a volume ID names a volume: any other kind (a snapshot) or none at all
            // is refused by the local volume parser, whose message says what is wrong.
            Some(
                IdKind::LocalVolume
                | IdKind::LocalSnapshot
                | IdKind::NfsSnapshot
                | IdKind::ReplicatedSnapshot,
            )
            | None => {
                let id = volume_id(raw)?;
                Ok(if id.node == self.store.node_id() {
                    Target::Local(id)
                } else {
                    Target::Remote(id)
                })
            }
        }
    }

    /// Runs blocking work on a volume mounted over NFS, under its lock (by ID: it has no
    /// key on this node).
    async fn nfs_locked<T: Send + 'static>(
        &self,
        id: String,
        f: impl FnOnce(&NfsStager) -> Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let _guard = self.nfs_locks.lock(&id).await;
        let nfs = self.nfs.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| f(&nfs)))
            .await
            .map_err(|e| Status::internal(format!("node task failed: {e}")))?
            .map_err(Status::from)
    }

    /// Runs blocking stage/publish work under the volume's lock.
    async fn locked<T: Send + 'static>(
        &self,
        id: VolumeId,
        f: impl FnOnce(&Stager, &VolumeId) -> Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let _guard = self.store.lock_volume(&id.key).await;
        let stager = self.stager.clone();
        // The blocking pool does not inherit the call's span; carry it over.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| f(&stager, &id)))
            .await
            .map_err(|e| Status::internal(format!("node task failed: {e}")))?
            .map_err(Status::from)
    }

    /// Stats of a local or NFS-mounted volume. No lock: stats only read, and must answer
    /// while a slow stage holds the lock.
    async fn blocking_stats(
        &self,
        volume: Target,
        path: PathBuf,
    ) -> Result<(Option<Stats>, Condition), Status> {
        let stager = self.stager.clone();
        let nfs = self.nfs.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| match volume {
                Target::Local(id) => stager.stats(&id, &path).map(|(s, c)| (Some(s), c)),
                Target::Nfs(_) | Target::Remote(_) => nfs.stats(&path),
                Target::Replicated(id) => Err(warren_core::Error::Internal(format!(
                    "{id} is not a local or NFS volume"
                ))
                .into()),
            })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::from)
    }

    /// NodeStageVolume of a volume this node holds.
    async fn stage_local(
        &self,
        id: VolumeId,
        staging: PathBuf,
        mut cap: Requested,
        req: &NodeStageVolumeRequest,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        default_fs_type(&mut cap, &req.volume_context);
        self.locked(id, move |s, id| s.stage(id, &staging, &cap))
            .await?;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }
}

/// A volume id from a node request. A malformed id cannot name a volume Warren made, so it
/// is NOT_FOUND (what csi-sanity and the spec expect), except an empty one (INVALID_ARGUMENT).
pub fn volume_id(raw: &str) -> Result<VolumeId, Status> {
    if raw.is_empty() {
        return Err(Status::invalid_argument("volume_id is required"));
    }
    VolumeId::parse(raw).map_err(|e| Status::not_found(format!("no such volume: {e}")))
}

fn required<'a, T>(field: &str, value: Option<&'a T>) -> Result<&'a T, Status> {
    value.ok_or_else(|| Status::invalid_argument(format!("{field} is required")))
}

fn node_cap(t: rpc::Type) -> NodeServiceCapability {
    NodeServiceCapability {
        r#type: Some(CapType::Rpc(Rpc { r#type: t as i32 })),
    }
}

// Every call runs in a `csi{method, volume}` span made where the binary wraps the services
// (driver/src/calls.rs), so the handlers make none of their own.
#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        req: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let req = req.into_inner();
        let staging = self.path("staging_target_path", &req.staging_target_path)?;
        if req.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is required"));
        }
        let target = self.target(&req.volume_id);
        let cap = match &target {
            Ok(t) => capability(t, req.volume_capability.as_ref(), &req.volume_context)?,
            Err(_) => parse_capability(required(
                "volume_capability",
                req.volume_capability.as_ref(),
            )?)
            .map_err(Status::from)?,
        };
        let request = match target? {
            Target::Nfs(id) => {
                NfsStager::nfs_request(&id, &req.volume_context, &cap).map_err(Status::from)?
            }
            Target::Remote(id) => share_request(&id, &req.volume_context, &cap)?,
            Target::Local(id) => return self.stage_local(id, staging, cap, &req).await,
            Target::Replicated(id) => return self.stage_replicated(id, staging, cap, &req).await,
        };
        self.nfs_locked(req.volume_id, move |n| n.stage(&request, &staging))
            .await?;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        req: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let req = req.into_inner();
        let staging = self.path("staging_target_path", &req.staging_target_path)?;
        match self.target(&req.volume_id)? {
            Target::Nfs(_) | Target::Remote(_) => {
                self.nfs_locked(req.volume_id, move |n| n.unstage(&staging))
                    .await?
            }
            Target::Local(id) => {
                self.locked(id, move |s, id| s.unstage(id, &staging))
                    .await?
            }
            Target::Replicated(id) => self.replicas()?.unstage(&id, staging).await?,
        }
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        req: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = req.into_inner();
        // Warren stages every volume, so the staging path is required here too.
        let staging = self.path("staging_target_path", &req.staging_target_path)?;
        let target_path = self.path("target_path", &req.target_path)?;
        if req.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is required"));
        }
        let volume = self.target(&req.volume_id);
        let cap = match &volume {
            Ok(t) => capability(t, req.volume_capability.as_ref(), &req.volume_context)?,
            Err(_) => parse_capability(required(
                "volume_capability",
                req.volume_capability.as_ref(),
            )?)
            .map_err(Status::from)?,
        };
        let read_only = req.readonly || cap.read_only_mode();
        let request = match volume? {
            Target::Nfs(id) => {
                NfsStager::nfs_request(&id, &req.volume_context, &cap).map_err(Status::from)?
            }
            Target::Remote(id) => share_request(&id, &req.volume_context, &cap)?,
            Target::Local(id) => {
                self.locked(id, move |s, id| {
                    s.publish(id, &staging, &target_path, &cap, read_only)
                })
                .await?;
                return Ok(Response::new(NodePublishVolumeResponse {}));
            }
            Target::Replicated(id) => {
                self.replicas()?
                    .publish(&id, staging, target_path, cap, read_only)
                    .await?;
                return Ok(Response::new(NodePublishVolumeResponse {}));
            }
        };
        self.nfs_locked(req.volume_id, move |n| {
            n.publish(&request, &staging, &target_path, &cap, read_only)
        })
        .await?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = req.into_inner();
        let target_path = self.path("target_path", &req.target_path)?;
        match self.target(&req.volume_id)? {
            Target::Nfs(_) | Target::Remote(_) => {
                self.nfs_locked(req.volume_id, move |n| n.unpublish(&target_path))
                    .await?
            }
            Target::Local(id) => {
                self.locked(id, move |s, id| s.unpublish(id, &target_path))
                    .await?
            }
            Target::Replicated(id) => self.replicas()?.unpublish(&id, target_path).await?,
        }
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let req = req.into_inner();
        let (volume, path) = self.volume_at_path(&req.volume_id, &req.volume_path)?;
        let (stats, condition) = match volume {
            Target::Replicated(id) => {
                let (stats, condition) = self.replicas()?.stats(&id, path).await?;
                (Some(stats), condition)
            }
            other => self.blocking_stats(other, path).await?,
        };
        Ok(Response::new(NodeGetVolumeStatsResponse {
            usage: usage(stats),
            volume_condition: Some(VolumeCondition {
                abnormal: condition.abnormal,
                message: condition.message,
            }),
        }))
    }

    async fn node_expand_volume(
        &self,
        req: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        let req = req.into_inner();
        let (volume, path) = self.volume_at_path(&req.volume_id, &req.volume_path)?;
        if let Some(cap) = req.volume_capability.as_ref() {
            // No volume context here: a shared volume's modes are allowed.
            let shared = HashMap::from([(CONTEXT_SHARE.to_string(), String::new())]);
            capability(&volume, Some(cap), &shared)?;
        }
        let required_bytes = req
            .capacity_range
            .as_ref()
            .map(|r| r.required_bytes.max(0) as u64)
            .unwrap_or(0);
        let id = match volume {
            // Nothing to grow on the node: NFS sizes are the server's business (and plain
            // NFS enforces none).
            Target::Nfs(_) | Target::Remote(_) => {
                self.nfs_locked(req.volume_id, move |n| n.stats(&path).map(drop))
                    .await?;
                return Ok(Response::new(NodeExpandVolumeResponse {
                    capacity_bytes: required_bytes as i64,
                }));
            }
            Target::Local(id) => id,
            Target::Replicated(id) => {
                let bytes = self.replicas()?.expand(&id, path, required_bytes).await?;
                return Ok(Response::new(NodeExpandVolumeResponse {
                    capacity_bytes: bytes as i64,
                }));
            }
        };
        let bytes = self
            .locked(id, move |s, id| s.expand(id, &path, required_bytes))
            .await?;
        Ok(Response::new(NodeExpandVolumeResponse {
            capacity_bytes: bytes as i64,
        }))
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![
                node_cap(rpc::Type::StageUnstageVolume),
                node_cap(rpc::Type::GetVolumeStats),
                node_cap(rpc::Type::ExpandVolume),
                node_cap(rpc::Type::VolumeCondition),
                node_cap(rpc::Type::SingleNodeMultiWriter),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _req: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.store.node_id().to_string(),
            max_volumes_per_node: 0,
            accessible_topology: Some(Topology {
                segments: HashMap::from([(
                    TOPOLOGY_KEY.to_string(),
                    self.store.node_id().to_string(),
                )]),
            }),
        }))
    }
}

mod replicated;
mod requests;
#[cfg(test)]
mod tests;
