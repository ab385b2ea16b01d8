//! A CSI Controller service that records what it is asked and answers as told, standing
//! in for Warren's own in the reconcilers' unit tests.

use std::sync::{Mutex, MutexGuard, PoisonError};

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::{
    ControllerExpandVolumeRequest, ControllerExpandVolumeResponse, CreateSnapshotRequest,
    CreateSnapshotResponse, CreateVolumeRequest, CreateVolumeResponse, DeleteSnapshotRequest,
    DeleteSnapshotResponse, DeleteVolumeRequest, DeleteVolumeResponse,
};
use tonic::{Request, Response, Status};

/// A call the fake received.
#[derive(Debug, Clone, PartialEq)]
pub enum CsiCall {
    CreateVolume(CreateVolumeRequest),
    DeleteVolume(DeleteVolumeRequest),
    Expand(ControllerExpandVolumeRequest),
    CreateSnapshot(CreateSnapshotRequest),
    DeleteSnapshot(DeleteSnapshotRequest),
}

#[derive(Default)]
pub struct FakeCsi {
    calls: Mutex<Vec<CsiCall>>,
    replies: Replies,
}

/// What each method answers: a success with the default (empty) response unless set.
#[derive(Default)]
pub struct Replies {
    pub create_volume: Option<Result<CreateVolumeResponse, Status>>,
    pub delete_volume: Option<Status>,
    pub expand: Option<Result<ControllerExpandVolumeResponse, Status>>,
    pub create_snapshot: Option<Result<CreateSnapshotResponse, Status>>,
    pub delete_snapshot: Option<Status>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeCsi {
    pub fn answering(replies: Replies) -> FakeCsi {
        FakeCsi {
            calls: Mutex::default(),
            replies,
        }
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<CsiCall> {
        lock(&self.calls).clone()
    }

    fn record(&self, call: CsiCall) {
        lock(&self.calls).push(call);
    }
}

fn answer<T: Default + Clone>(reply: &Option<Result<T, Status>>) -> Result<Response<T>, Status> {
    match reply {
        Some(Ok(r)) => Ok(Response::new(r.clone())),
        Some(Err(status)) => Err(status.clone()),
        None => Ok(Response::new(T::default())),
    }
}

fn answer_empty<T: Default>(error: &Option<Status>) -> Result<Response<T>, Status> {
    match error {
        Some(status) => Err(status.clone()),
        None => Ok(Response::new(T::default())),
    }
}

#[tonic::async_trait]
impl Controller for FakeCsi {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        self.record(CsiCall::CreateVolume(request.into_inner()));
        answer(&self.replies.create_volume)
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        self.record(CsiCall::DeleteVolume(request.into_inner()));
        answer_empty(&self.replies.delete_volume)
    }

    async fn controller_expand_volume(
        &self,
        request: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        self.record(CsiCall::Expand(request.into_inner()));
        answer(&self.replies.expand)
    }

    async fn create_snapshot(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        self.record(CsiCall::CreateSnapshot(request.into_inner()));
        answer(&self.replies.create_snapshot)
    }

    async fn delete_snapshot(
        &self,
        request: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        self.record(CsiCall::DeleteSnapshot(request.into_inner()));
        answer_empty(&self.replies.delete_snapshot)
    }
}
