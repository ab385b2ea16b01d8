//! Snapshots: create, delete, get.

use csi_proto::v1::*;
use tonic::{Request, Response, Status};
use warren_core::ids::{self, Key, SnapshotId, VolumeId};
use warren_core::storage::SnapshotInfo;
use warren_core::validate::validate_name;
use warren_core::{Error, Result};

use warren_nfs::volume_id::NfsSnapshotId;

use crate::records::{SnapshotRecord, State};

use super::replicated::csi_replicated_snapshot;
use super::{parse_id, ControllerService, Reply};

pub(super) fn timestamp(info: &SnapshotInfo) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: info.created_at_secs,
        nanos: info.created_at_nanos,
    }
}

pub(super) fn csi_snapshot(info: &SnapshotInfo) -> Snapshot {
    Snapshot {
        size_bytes: info.size_bytes as i64,
        snapshot_id: info.id.to_string(),
        source_volume_id: info.source_volume.to_string(),
        creation_time: Some(timestamp(info)),
        ready_to_use: info.ready,
        group_snapshot_id: String::new(),
    }
}

impl ControllerService {
    pub(super) async fn create_snapshot_inner(
        &self,
        req: CreateSnapshotRequest,
    ) -> Result<Snapshot> {
        validate_name("snapshot", &req.name)?;
        if let Some(key) = req
            .parameters
            .keys()
            .find(|k| !k.starts_with("csi.storage.k8s.io/"))
        {
            return Err(Error::InvalidArgument(format!(
                "unknown snapshot parameter {key:?}: local snapshots take none"
            )));
        }
        if ids::is_nfs_volume(&req.source_volume_id) {
            let source = crate::nfs::volume_id(&req.source_volume_id).ok_or_else(|| {
                Error::NotFound(format!("volume {:?} does not exist", req.source_volume_id))
            })?;
            return self.nfs.create_snapshot(&req.name, &source).await;
        }
        let _name_lock = self
            .locks
            .lock(&format!("snapshot-name/{}", req.name))
            .await;
        // One namespace of snapshot names for local and replicated volumes.
        let replicated = ids::is_replicated_volume(&req.source_volume_id);
        let taken_by_other_kind = if replicated {
            self.records.snapshot_by_name(&req.name).is_some()
        } else {
            self.records
                .replicated_snapshot_by_name(&req.name)
                .is_some()
        };
        if taken_by_other_kind {
            return Err(Error::AlreadyExists(format!(
                "snapshot {:?} exists for another volume",
                req.name
            )));
        }
        if replicated {
            let rec = self
                .create_replicated_snapshot(&req.name, &req.source_volume_id)
                .await?;
            return Ok(csi_replicated_snapshot(&rec));
        }
        let source_id = parse_id("source_volume_id", &req.source_volume_id, VolumeId::parse)?;
        if let Some(rec) = self.records.snapshot_by_name(&req.name) {
            if Some(&rec.source_volume) != source_id.as_ref() {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {:?} exists for another volume",
                    req.name
                )));
            }
            if let (State::Ready, Some(info)) = (rec.state, rec.info.as_ref()) {
                return Ok(csi_snapshot(info));
            }
            return self.finish_snapshot(rec).await;
        }
        let volume = self.ready_volume(&req.source_volume_id)?;
        let rec = SnapshotRecord {
            id: SnapshotId::new(volume.id.layout, &volume.id.node, Key::random()),
            name: req.name.clone(),
            source_volume: volume.id.clone(),
            state: State::Creating,
            info: None,
        };
        self.records.put_snapshot(&rec)?;
        self.finish_snapshot(rec).await
    }

    pub(super) async fn finish_snapshot(&self, mut rec: SnapshotRecord) -> Result<Snapshot> {
        let node = self.nodes.get(&rec.id.node)?;
        match node
            .create_snapshot(rec.id.clone(), rec.name.clone(), rec.source_volume.clone())
            .await
        {
            Ok(info) => {
                let snapshot = csi_snapshot(&info);
                rec.state = State::Ready;
                rec.info = Some(info);
                self.records.put_snapshot(&rec)?;
                Ok(snapshot)
            }
            Err(e @ Error::Unavailable(_)) => Err(e),
            Err(e) => {
                if node.delete_snapshot(rec.id.clone()).await.is_ok() {
                    self.records.remove_snapshot(&rec.id.key)?;
                }
                Err(e)
            }
        }
    }

    pub(super) async fn delete_snapshot_inner(&self, req: DeleteSnapshotRequest) -> Result<()> {
        if ids::is_replicated_snapshot(&req.snapshot_id) {
            return self.delete_replicated_snapshot(&req.snapshot_id).await;
        }
        if ids::is_nfs_snapshot(&req.snapshot_id) {
            return match NfsSnapshotId::parse(&req.snapshot_id) {
                Ok(id) => self.nfs.delete_snapshot(&id).await,
                Err(_) => Ok(()),
            };
        }
        let Some(id) = parse_id("snapshot_id", &req.snapshot_id, SnapshotId::parse)? else {
            return Ok(());
        };
        let _lock = self.locks.lock(id.key.as_str()).await;
        let Some(mut rec) = self.records.snapshot(&id.key).filter(|r| r.id == id) else {
            return Ok(());
        };
        let _name_lock = self
            .locks
            .lock(&format!("snapshot-name/{}", rec.name))
            .await;
        rec.state = State::Deleting;
        self.records.put_snapshot(&rec)?;
        self.nodes
            .get(&id.node)?
            .delete_snapshot(id.clone())
            .await?;
        self.records.remove_snapshot(&id.key)
    }

    pub(super) async fn get_snapshot_inner(
        &self,
        req: Request<GetSnapshotRequest>,
    ) -> Reply<GetSnapshotResponse> {
        let req = req.into_inner();
        if ids::is_replicated_snapshot(&req.snapshot_id) {
            let rec = self.ready_replicated_snapshot(&req.snapshot_id)?;
            return Ok(Response::new(GetSnapshotResponse {
                snapshot: Some(csi_replicated_snapshot(&rec)),
            }));
        }
        if ids::is_nfs_snapshot(&req.snapshot_id) {
            let snapshot = self.nfs.snapshot(&req.snapshot_id).ok_or_else(|| {
                Status::not_found(format!("snapshot {:?} does not exist", req.snapshot_id))
            })?;
            return Ok(Response::new(GetSnapshotResponse {
                snapshot: Some(snapshot),
            }));
        }
        let info = parse_id("snapshot_id", &req.snapshot_id, SnapshotId::parse)?
            .and_then(|id| self.records.snapshot(&id.key).filter(|r| r.id == id))
            .filter(|r| r.state == State::Ready)
            .and_then(|r| r.info)
            .ok_or_else(|| {
                Status::not_found(format!("snapshot {:?} does not exist", req.snapshot_id))
            })?;
        Ok(Response::new(GetSnapshotResponse {
            snapshot: Some(csi_snapshot(&info)),
        }))
    }
}
