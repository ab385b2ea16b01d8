//! The node agent: `NodeStorage` over gRPC, for a controller that does not share a process
//! with the node. The server side wraps any `NodeStorage`; the client side *is* a
//! `NodeStorage`, so the controller cannot tell the two apart.
//!
//! Authentication: a pre-shared token (from a Kubernetes Secret, or a file) sent as
//! `authorization: Bearer <token>` and compared in constant time. Unauthenticated calls
//! are refused before any storage code runs.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{de::DeserializeOwned, Serialize};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::error::{Error, Result};
use crate::ids::{Layout, ReplicatedSnapshotId, ReplicatedVolumeId, SnapshotId, VolumeId};
use crate::storage::{
    Capacity, NodeStorage, ReplicaInfo, ReplicaSnapshotInfo, ReplicaSpec, SeedReport, SeedSource,
    SeedTarget, SnapshotInfo, VolumeInfo, VolumeSpec,
};

pub mod pb {
    tonic::include_proto!("warren.agent.v1");
}

use pb::node_storage_client::NodeStorageClient;
use pb::node_storage_server::{NodeStorage as AgentService, NodeStorageServer};
use pb::Json;

/// How long a controller waits to reach a node before calling it unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Upper bound on one call; snapshot copies of large non-reflink images are the slow ones.
const CALL_TIMEOUT: Duration = Duration::from_secs(600);

fn encode<T: Serialize>(value: &T) -> Result<Json> {
    serde_json::to_vec(value)
        .map(|body| Json { body })
        .map_err(|e| Error::Internal(format!("agent encode: {e}")))
}

/// A message on the agent channel that does not decode is not the CO's bad input: the
/// controller and the node disagree about the protocol (different versions, or a bug), so
/// it is INTERNAL, never INVALID_ARGUMENT (which would tell the CO not to retry its call).
fn decode<T: DeserializeOwned>(json: &Json) -> Result<T> {
    serde_json::from_slice(&json.body).map_err(|e| {
        Error::Internal(format!(
            "agent message does not decode (controller and node versions differ?): {e}"
        ))
    })
}

/// Checks the bearer token on every incoming call.
#[derive(Clone)]
pub struct TokenCheck {
    expected: Arc<[u8]>,
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> std::result::Result<Request<()>, Status> {
        self.check(&req).map(|()| req)
    }
}

impl TokenCheck {
    pub fn check(&self, req: &Request<()>) -> std::result::Result<(), Status> {
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !given.is_empty() && bool::from(given.as_bytes().ct_eq(&self.expected)) {
            Ok(())
        } else {
            Err(Status::unauthenticated("missing or wrong agent token"))
        }
    }
}

/// Validates a token at startup: an empty or short token is a configuration error.
pub fn validate_token(token: &str) -> Result<()> {
    if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::InvalidArgument(
            "agent token must be at least 16 printable, non-space characters".into(),
        ));
    }
    Ok(())
}

pub type AgentServer =
    tonic::service::interceptor::InterceptedService<NodeStorageServer<Agent>, TokenCheck>;

/// Wraps a node's storage as an authenticated gRPC service.
pub fn server(storage: Arc<dyn NodeStorage>, token: &str) -> Result<AgentServer> {
    validate_token(token)?;
    let check = TokenCheck {
        expected: token.as_bytes().into(),
    };
    Ok(NodeStorageServer::with_interceptor(
        Agent { storage },
        check,
    ))
}

pub struct Agent {
    storage: Arc<dyn NodeStorage>,
}

type Reply = std::result::Result<Response<Json>, Status>;

fn reply<T: Serialize>(result: Result<T>) -> Reply {
    Ok(Response::new(encode(&result?)?))
}

#[async_trait]
impl AgentService for Agent {
    async fn create_volume(&self, req: Request<Json>) -> Reply {
        let spec: VolumeSpec = decode(req.get_ref())?;
        reply(self.storage.create_volume(spec).await)
    }
    async fn delete_volume(&self, req: Request<Json>) -> Reply {
        reply(self.storage.delete_volume(decode(req.get_ref())?).await)
    }
    async fn expand_volume(&self, req: Request<Json>) -> Reply {
        let (id, size): (VolumeId, u64) = decode(req.get_ref())?;
        reply(self.storage.expand_volume(id, size).await)
    }
    async fn get_volume(&self, req: Request<Json>) -> Reply {
        reply(self.storage.get_volume(decode(req.get_ref())?).await)
    }
    async fn list_volumes(&self, _req: Request<Json>) -> Reply {
        reply(self.storage.list_volumes().await)
    }
    async fn create_snapshot(&self, req: Request<Json>) -> Reply {
        let (id, name, source): (SnapshotId, String, VolumeId) = decode(req.get_ref())?;
        reply(self.storage.create_snapshot(id, name, source).await)
    }
    async fn delete_snapshot(&self, req: Request<Json>) -> Reply {
        reply(self.storage.delete_snapshot(decode(req.get_ref())?).await)
    }
    async fn list_snapshots(&self, _req: Request<Json>) -> Reply {
        reply(self.storage.list_snapshots().await)
    }
    async fn capacity(&self, req: Request<Json>) -> Reply {
        reply(self.storage.capacity(decode(req.get_ref())?).await)
    }
    async fn create_replica(&self, req: Request<Json>) -> Reply {
        reply(self.storage.create_replica(decode(req.get_ref())?).await)
    }
    async fn delete_replica(&self, req: Request<Json>) -> Reply {
        reply(self.storage.delete_replica(decode(req.get_ref())?).await)
    }
    async fn get_replica(&self, req: Request<Json>) -> Reply {
        reply(self.storage.get_replica(decode(req.get_ref())?).await)
    }
    async fn expand_replica(&self, req: Request<Json>) -> Reply {
        let (volume, size): (ReplicatedVolumeId, u64) = decode(req.get_ref())?;
        reply(self.storage.expand_replica(volume, size).await)
    }
    async fn snapshot_through_engine(&self, req: Request<Json>) -> Reply {
        reply(
            self.storage
                .snapshot_through_engine(decode(req.get_ref())?)
                .await,
        )
    }
    async fn snapshot_replica(&self, req: Request<Json>) -> Reply {
        reply(self.storage.snapshot_replica(decode(req.get_ref())?).await)
    }
    async fn delete_replica_snapshot(&self, req: Request<Json>) -> Reply {
        reply(
            self.storage
                .delete_replica_snapshot(decode(req.get_ref())?)
                .await,
        )
    }
    async fn seed_replicated(&self, req: Request<Json>) -> Reply {
        let (target, source): (SeedTarget, SeedSource) = decode(req.get_ref())?;
        reply(self.storage.seed_replicated(target, source).await)
    }
}

/// A node's storage reached over the network.
#[derive(Clone)]
pub struct RemoteNodeStorage {
    node: String,
    client: NodeStorageClient<Channel>,
    auth: MetadataValue<tonic::metadata::Ascii>,
}

impl RemoteNodeStorage {
    /// `address` is `http://host:port`. Connection is lazy: an unreachable node makes
    /// calls fail with UNAVAILABLE, it does not stop the controller from starting.
    pub fn new(node: &str, address: &str, token: &str) -> Result<Self> {
        validate_token(token)?;
        let endpoint = Endpoint::from_shared(address.to_string())
            .map_err(|e| Error::InvalidArgument(format!("agent address {address:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true);
        let auth = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::InvalidArgument("agent token is not valid ASCII".into()))?;
        Ok(RemoteNodeStorage {
            node: node.to_string(),
            client: NodeStorageClient::new(endpoint.connect_lazy()),
            auth,
        })
    }

    fn request<T: Serialize>(&self, value: &T) -> Result<Request<Json>> {
        let mut req = Request::new(encode(value)?);
        req.metadata_mut()
            .insert("authorization", self.auth.clone());
        Ok(req)
    }

    fn failed(&self, status: Status) -> Error {
        match Error::from(status) {
            Error::Unavailable(msg) => {
                Error::Unavailable(format!("node {} is unreachable: {msg}", self.node))
            }
            other => other,
        }
    }
}

macro_rules! remote_call {
    ($self:ident, $method:ident, $arg:expr) => {{
        let req = $self.request(&$arg)?;
        let resp = $self
            .client
            .clone()
            .$method(req)
            .await
            .map_err(|s| $self.failed(s))?;
        decode(resp.get_ref())
    }};
}

#[async_trait]
impl NodeStorage for RemoteNodeStorage {
    async fn create_volume(&self, spec: VolumeSpec) -> Result<VolumeInfo> {
        remote_call!(self, create_volume, spec)
    }
    async fn delete_volume(&self, id: VolumeId) -> Result<()> {
        remote_call!(self, delete_volume, id)
    }
    async fn expand_volume(&self, id: VolumeId, capacity_bytes: u64) -> Result<u64> {
        remote_call!(self, expand_volume, (id, capacity_bytes))
    }
    async fn get_volume(&self, id: VolumeId) -> Result<VolumeInfo> {
        remote_call!(self, get_volume, id)
    }
    async fn list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        remote_call!(self, list_volumes, ())
    }
    async fn create_snapshot(
        &self,
        id: SnapshotId,
        name: String,
        source: VolumeId,
    ) -> Result<SnapshotInfo> {
        remote_call!(self, create_snapshot, (id, name, source))
    }
    async fn delete_snapshot(&self, id: SnapshotId) -> Result<()> {
        remote_call!(self, delete_snapshot, id)
    }
    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        remote_call!(self, list_snapshots, ())
    }
    async fn capacity(&self, layout: Layout) -> Result<Capacity> {
        remote_call!(self, capacity, layout)
    }
    async fn create_replica(&self, spec: ReplicaSpec) -> Result<ReplicaInfo> {
        remote_call!(self, create_replica, spec)
    }
    async fn delete_replica(&self, volume: ReplicatedVolumeId) -> Result<()> {
        remote_call!(self, delete_replica, volume)
    }
    async fn get_replica(&self, volume: ReplicatedVolumeId) -> Result<ReplicaInfo> {
        remote_call!(self, get_replica, volume)
    }
    async fn expand_replica(
        &self,
        volume: ReplicatedVolumeId,
        size_bytes: u64,
    ) -> Result<ReplicaInfo> {
        remote_call!(self, expand_replica, (volume, size_bytes))
    }
    async fn snapshot_through_engine(
        &self,
        snapshot: ReplicatedSnapshotId,
    ) -> Result<Vec<ReplicaSnapshotInfo>> {
        remote_call!(self, snapshot_through_engine, snapshot)
    }
    async fn snapshot_replica(
        &self,
        snapshot: ReplicatedSnapshotId,
    ) -> Result<ReplicaSnapshotInfo> {
        remote_call!(self, snapshot_replica, snapshot)
    }
    async fn delete_replica_snapshot(&self, snapshot: ReplicatedSnapshotId) -> Result<()> {
        remote_call!(self, delete_replica_snapshot, snapshot)
    }
    async fn seed_replicated(&self, target: SeedTarget, source: SeedSource) -> Result<SeedReport> {
        remote_call!(self, seed_replicated, (target, source))
    }
}

#[cfg(test)]
mod tests;
