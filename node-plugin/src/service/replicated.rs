//! The Node service's side of replicated volumes: wiring the node's replica host in, and
//! handing stage requests to `ReplicatedStager` (the work is in `crate::replicated`).

use std::path::PathBuf;
use std::sync::Arc;

use csi_proto::v1::{NodeStageVolumeRequest, NodeStageVolumeResponse};
use tonic::{Response, Status};
use warren_core::capability::Requested;
use warren_core::ids::ReplicatedVolumeId;

use super::{default_fs_type, NodeService};
use crate::replicated::{ReplicaHost, ReplicatedStager};

impl NodeService {
    /// Makes this node run replicated volumes: their engines keep the node's own replica
    /// (served by `host`) in process. Without it, replicated volumes are refused here.
    pub fn with_replicas(mut self, host: Arc<ReplicaHost>) -> Self {
        self.replicated = Some(Arc::new(ReplicatedStager::new(host, self.mounter.clone())));
        self
    }

    pub(super) fn replicas(&self) -> Result<&Arc<ReplicatedStager>, Status> {
        self.replicated.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this node hosts no replica service, so it cannot use replicated volumes",
            )
        })
    }

    pub(super) async fn stage_replicated(
        &self,
        id: ReplicatedVolumeId,
        staging: PathBuf,
        mut cap: Requested,
        req: &NodeStageVolumeRequest,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        default_fs_type(&mut cap, &req.volume_context);
        self.replicas()?
            .stage(&id, staging, cap, &req.volume_context)
            .await?;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }
}
