//! The CSI Controller service. Handlers validate, then drive `Records` and the node's
//! `NodeStorage`; calls for one name or one volume are serialized with keyed locks.
//!
//! This file holds the service and its thin gRPC handlers; the work is split by what it
//! is about: `volumes` (create, delete, expand, validate, get), `snapshots` (create,
//! delete, get), `listing` (ListVolumes, ListSnapshots and their paging), `capacity`
//! (GetCapacity, sizes and placement by free space) and `replicated` (everything about
//! `backend: replicated` volumes, which the others dispatch to by backend or ID prefix).

use std::sync::Arc;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::controller_service_capability::{rpc, Rpc, Type as CapType};
use csi_proto::v1::*;
use tonic::{Request, Response, Status};
use warren_core::lock::KeyedLocks;
use warren_core::{Error, Result};

use crate::nfs::NfsVolumes;
use crate::nodes::Nodes;
use crate::records::Records;

mod capacity;
mod listing;
mod replicated;
mod snapshots;
mod volumes;

/// Size of a volume whose request gives no capacity range.
pub const DEFAULT_VOLUME_BYTES: u64 = 1 << 30;
/// Image volumes are whole MiB (loop devices and file systems like aligned sizes).
const IMAGE_ALIGN: u64 = 1 << 20;

pub struct ControllerService {
    records: Arc<Records>,
    nodes: Nodes,
    locks: KeyedLocks,
    nfs: NfsVolumes,
}

type Reply<T> = std::result::Result<Response<T>, Status>;

fn ctl_cap(t: rpc::Type) -> ControllerServiceCapability {
    ControllerServiceCapability {
        r#type: Some(CapType::Rpc(Rpc { r#type: t as i32 })),
    }
}

/// An id from a controller request: empty is INVALID_ARGUMENT, malformed is None (it cannot
/// name anything Warren made; callers answer NOT_FOUND or, for deletes, success).
fn parse_id<T>(field: &str, raw: &str, parse: impl Fn(&str) -> Result<T>) -> Result<Option<T>> {
    if raw.is_empty() {
        return Err(Error::InvalidArgument(format!("{field} is required")));
    }
    Ok(parse(raw).ok())
}

impl ControllerService {
    pub fn new(records: Arc<Records>, nodes: Nodes, nfs: NfsVolumes) -> Self {
        ControllerService {
            records,
            nodes,
            locks: KeyedLocks::default(),
            nfs,
        }
    }

    pub(crate) fn records(&self) -> &Records {
        &self.records
    }

    pub(crate) fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    pub(crate) fn locks(&self) -> &KeyedLocks {
        &self.locks
    }
}

// Every call runs in a `csi{method, volume}` span made where the binary wraps the services
// (driver/src/calls.rs), so the handlers make none of their own.
#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        req: Request<CreateVolumeRequest>,
    ) -> Reply<CreateVolumeResponse> {
        let volume = self.create_volume_inner(req.into_inner()).await?;
        tracing::info!(volume = %volume.volume_id, bytes = volume.capacity_bytes, "CreateVolume done");
        Ok(Response::new(CreateVolumeResponse {
            volume: Some(volume),
        }))
    }

    async fn delete_volume(
        &self,
        req: Request<DeleteVolumeRequest>,
    ) -> Reply<DeleteVolumeResponse> {
        self.delete_volume_inner(req.into_inner()).await?;
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Reply<ValidateVolumeCapabilitiesResponse> {
        self.validate_inner(req).await
    }

    async fn list_volumes(&self, req: Request<ListVolumesRequest>) -> Reply<ListVolumesResponse> {
        self.list_volumes_inner(req).await
    }

    async fn get_capacity(&self, req: Request<GetCapacityRequest>) -> Reply<GetCapacityResponse> {
        self.get_capacity_inner(req).await
    }

    async fn controller_get_capabilities(
        &self,
        _req: Request<ControllerGetCapabilitiesRequest>,
    ) -> Reply<ControllerGetCapabilitiesResponse> {
        use rpc::Type as T;
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: [
                T::CreateDeleteVolume,
                T::CreateDeleteSnapshot,
                T::ListSnapshots,
                T::GetSnapshot,
                T::CloneVolume,
                T::ExpandVolume,
                T::ListVolumes,
                T::GetCapacity,
                T::GetVolume,
                T::VolumeCondition,
                T::SingleNodeMultiWriter,
            ]
            .into_iter()
            .map(ctl_cap)
            .collect(),
        }))
    }

    async fn create_snapshot(
        &self,
        req: Request<CreateSnapshotRequest>,
    ) -> Reply<CreateSnapshotResponse> {
        let snapshot = self.create_snapshot_inner(req.into_inner()).await?;
        Ok(Response::new(CreateSnapshotResponse {
            snapshot: Some(snapshot),
        }))
    }

    async fn delete_snapshot(
        &self,
        req: Request<DeleteSnapshotRequest>,
    ) -> Reply<DeleteSnapshotResponse> {
        self.delete_snapshot_inner(req.into_inner()).await?;
        Ok(Response::new(DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        req: Request<ListSnapshotsRequest>,
    ) -> Reply<ListSnapshotsResponse> {
        Ok(Response::new(self.list_snapshots_inner(req.into_inner())?))
    }

    async fn get_snapshot(&self, req: Request<GetSnapshotRequest>) -> Reply<GetSnapshotResponse> {
        self.get_snapshot_inner(req).await
    }

    async fn controller_expand_volume(
        &self,
        req: Request<ControllerExpandVolumeRequest>,
    ) -> Reply<ControllerExpandVolumeResponse> {
        let (size, node_expansion_required) = self.expand_inner(req.into_inner()).await?;
        Ok(Response::new(ControllerExpandVolumeResponse {
            capacity_bytes: size as i64,
            node_expansion_required,
        }))
    }

    async fn controller_get_volume(
        &self,
        req: Request<ControllerGetVolumeRequest>,
    ) -> Reply<ControllerGetVolumeResponse> {
        self.get_volume_inner(req).await
    }
}
