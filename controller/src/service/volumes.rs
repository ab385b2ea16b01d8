//! Volumes: create (with a source), delete, expand, validate capabilities, get.

use std::collections::HashMap;

use csi_proto::v1::*;
use tonic::{Request, Response, Status};
use warren_core::capability::{
    parse_capabilities, parse_capability, parse_shared_capabilities, parse_shared_capability,
    Access,
};
use warren_core::ids::{self, Key, Layout, SnapshotId, VolumeId};
use warren_core::params::{
    backend, parse_params, Backend, VolumeParams, CONTEXT_FS_TYPE, CONTEXT_SHARE,
};
use warren_core::storage::{ContentSource, VolumeSpec};
use warren_core::validate::{resolve_capacity, validate_name};
use warren_core::{Error, Result, TOPOLOGY_KEY};

use crate::placement::candidates;
use crate::records::{State, VolumeRecord};

use super::capacity::volume_capacity;
use super::{parse_id, ControllerService, Reply, IMAGE_ALIGN};

pub(super) fn topology(node: &str) -> Topology {
    Topology {
        segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node.to_string())]),
    }
}

pub(super) fn csi_volume(rec: &VolumeRecord) -> Volume {
    let mut volume_context =
        HashMap::from([("layout".to_string(), rec.id.layout.as_str().to_string())]);
    if let Some(fs) = &rec.fs_type {
        volume_context.insert(CONTEXT_FS_TYPE.to_string(), fs.clone());
    }
    if let Some(endpoint) = &rec.share_endpoint {
        volume_context.insert(CONTEXT_SHARE.to_string(), endpoint.clone());
    }
    let content_source = rec.source.as_ref().map(|s| VolumeContentSource {
        r#type: Some(match s {
            ContentSource::Snapshot(id) => {
                volume_content_source::Type::Snapshot(volume_content_source::SnapshotSource {
                    snapshot_id: id.to_string(),
                })
            }
            ContentSource::Volume(id) => {
                volume_content_source::Type::Volume(volume_content_source::VolumeSource {
                    volume_id: id.to_string(),
                })
            }
        }),
    });
    Volume {
        capacity_bytes: rec.capacity_bytes as i64,
        volume_id: rec.id.to_string(),
        volume_context,
        content_source,
        // A shared volume is reachable from every node (over NFS from its own).
        accessible_topology: if rec.shared {
            vec![]
        } else {
            vec![topology(&rec.id.node)]
        },
    }
}

/// ValidateVolumeCapabilities' answer: confirmed as asked, or not, with the reason.
pub(super) fn confirm(
    req: ValidateVolumeCapabilitiesRequest,
    problem: Option<String>,
) -> ValidateVolumeCapabilitiesResponse {
    match problem {
        Some(message) => ValidateVolumeCapabilitiesResponse {
            confirmed: None,
            message,
        },
        None => ValidateVolumeCapabilitiesResponse {
            confirmed: Some(validate_volume_capabilities_response::Confirmed {
                volume_context: req.volume_context,
                volume_capabilities: req.volume_capabilities,
                parameters: req.parameters,
                mutable_parameters: req.mutable_parameters,
            }),
            message: String::new(),
        },
    }
}

impl ControllerService {
    pub(super) fn content_source(
        &self,
        source: Option<&VolumeContentSource>,
    ) -> Result<Option<ContentSource>> {
        use volume_content_source::Type;
        let Some(source) = source else {
            return Ok(None);
        };
        match &source.r#type {
            Some(Type::Snapshot(s)) if ids::is_replicated_snapshot(&s.snapshot_id) => {
                Err(Error::InvalidArgument(
                    "a snapshot of a replicated volume restores into a replicated volume \
                     (a `backend: replicated` class), not into a local one"
                        .into(),
                ))
            }
            Some(Type::Snapshot(s)) => {
                let id = parse_id("snapshot source id", &s.snapshot_id, SnapshotId::parse)?
                    .filter(|id| {
                        self.records
                            .snapshot(&id.key)
                            .is_some_and(|r| r.id == *id && r.state == State::Ready)
                    })
                    .ok_or_else(|| {
                        Error::NotFound(format!("source snapshot {} does not exist", s.snapshot_id))
                    })?;
                Ok(Some(ContentSource::Snapshot(id)))
            }
            Some(Type::Volume(v)) if ids::is_replicated_volume(&v.volume_id) => {
                Err(Error::InvalidArgument(
                    "a replicated volume clones into a replicated volume (a `backend: \
                     replicated` class), not into a local one"
                        .into(),
                ))
            }
            Some(Type::Volume(v)) => {
                let id = parse_id("source volume id", &v.volume_id, VolumeId::parse)?
                    .filter(|id| {
                        self.records
                            .volume(&id.key)
                            .is_some_and(|r| r.id == *id && r.state == State::Ready)
                    })
                    .ok_or_else(|| {
                        Error::NotFound(format!("source volume {} does not exist", v.volume_id))
                    })?;
                Ok(Some(ContentSource::Volume(id)))
            }
            None => Err(Error::InvalidArgument(
                "volume_content_source has no type".into(),
            )),
        }
    }

    pub(super) async fn create_volume_inner(&self, req: CreateVolumeRequest) -> Result<Volume> {
        match backend(&req.parameters)? {
            Backend::Nfs => return self.nfs.create_volume(&req).await,
            Backend::Replicated => return self.create_replicated(req).await,
            Backend::Local | Backend::Share => {}
        }
        validate_name("volume", &req.name)?;
        let VolumeParams::Local(params) = parse_params(&req.parameters)?;
        let caps = if params.shared {
            parse_shared_capabilities(&req.volume_capabilities)?
        } else {
            parse_capabilities(&req.volume_capabilities)?
        };
        let block = caps.iter().any(|c| c.access == Access::Block);
        if block && params.shared {
            return Err(Error::InvalidArgument(
                "shared volumes are file systems served over NFS; raw block is not possible".into(),
            ));
        }
        if block && params.layout == Layout::Dir {
            return Err(Error::InvalidArgument(
                "layout \"dir\" cannot serve raw block volumes; use layout \"image\"".into(),
            ));
        }
        let capacity = volume_capacity(req.capacity_range.as_ref(), params.layout)?;
        let source = self.content_source(req.volume_content_source.as_ref())?;

        let _name_lock = self.locks.lock(&format!("volume-name/{}", req.name)).await;
        // One namespace of names for every kind the controller records.
        if self.records.replicated_by_name(&req.name).is_some() {
            return Err(Error::AlreadyExists(format!(
                "volume {:?} exists as a replicated volume",
                req.name
            )));
        }
        if let Some(rec) = self.records.volume_by_name(&req.name) {
            let same = rec.capacity_bytes == capacity
                && rec.source == source
                && rec.id.layout == params.layout
                && rec.allocation == params.allocation
                && rec.fs_type == params.fs_type
                && rec.shared == params.shared;
            if !same {
                return Err(Error::AlreadyExists(format!(
                    "volume {:?} exists with another size, source or parameters",
                    req.name
                )));
            }
            match rec.state {
                State::Ready => return Ok(csi_volume(&rec)),
                // A crash or an unreachable node left it half made: finish it now.
                State::Creating => return self.finish_create(rec).await,
                State::Deleting => {
                    return Err(Error::Aborted(format!(
                        "volume {:?} is being deleted; retry later",
                        req.name
                    )))
                }
            }
        }

        let pinned = source.as_ref().map(|s| match s {
            ContentSource::Snapshot(id) => id.node.clone(),
            ContentSource::Volume(id) => id.node.clone(),
        });
        if let Some(src_layout) = source.as_ref().map(|s| match s {
            ContentSource::Snapshot(id) => id.layout,
            ContentSource::Volume(id) => id.layout,
        }) {
            if src_layout != params.layout {
                return Err(Error::InvalidArgument(format!(
                    "the source has layout {:?} but the StorageClass asks for {:?}",
                    src_layout.as_str(),
                    params.layout.as_str()
                )));
            }
        }
        let fallback = self.nodes_by_free_space(params.layout).await;
        let order = candidates(
            req.accessibility_requirements.as_ref(),
            &self.nodes.names(),
            pinned.as_deref(),
            &fallback,
        )?;
        let rec = VolumeRecord {
            id: VolumeId::new(params.layout, &order[0], Key::random()),
            name: req.name.clone(),
            capacity_bytes: capacity,
            allocation: params.allocation,
            source,
            block,
            fs_type: params.fs_type.clone(),
            shared: params.shared,
            share_endpoint: None,
            state: State::Creating,
        };
        self.records.put_volume(&rec)?;
        self.finish_create(rec).await
    }

    /// Asks the node to create a recorded volume, then marks it ready. If the node refuses,
    /// the record is dropped (after making sure the node holds nothing).
    pub(super) async fn finish_create(&self, mut rec: VolumeRecord) -> Result<Volume> {
        let node = self.nodes.get(&rec.id.node)?;
        let spec = VolumeSpec {
            id: rec.id.clone(),
            name: rec.name.clone(),
            capacity_bytes: rec.capacity_bytes,
            allocation: rec.allocation,
            source: rec.source.clone(),
            shared: rec.shared,
            fs_type: rec.fs_type.clone(),
        };
        match node.create_volume(spec).await {
            Ok(info) => {
                rec.share_endpoint = info.share_endpoint;
                rec.state = State::Ready;
                self.records.put_volume(&rec)?;
                Ok(csi_volume(&rec))
            }
            // Unreachable: keep the record; a retry (or reconcile) finishes or undoes it.
            Err(e @ Error::Unavailable(_)) => Err(e),
            Err(e) => {
                if node.delete_volume(rec.id.clone()).await.is_ok() {
                    self.records.remove_volume(&rec.id.key)?;
                }
                Err(e)
            }
        }
    }

    pub(super) async fn delete_volume_inner(&self, req: DeleteVolumeRequest) -> Result<()> {
        if ids::is_nfs_volume(&req.volume_id) {
            return match crate::nfs::volume_id(&req.volume_id) {
                Some(id) => self.nfs.delete_volume(&id).await,
                None => Ok(()),
            };
        }
        if ids::is_replicated_volume(&req.volume_id) {
            return self.delete_replicated(&req.volume_id).await;
        }
        let Some(id) = parse_id("volume_id", &req.volume_id, VolumeId::parse)? else {
            return Ok(());
        };
        let _lock = self.locks.lock(id.key.as_str()).await;
        let Some(mut rec) = self.records.volume(&id.key).filter(|r| r.id == id) else {
            return Ok(());
        };
        let _name_lock = self.locks.lock(&format!("volume-name/{}", rec.name)).await;
        let previous = rec.state;
        rec.state = State::Deleting;
        self.records.put_volume(&rec)?;
        match self.nodes.get(&id.node)?.delete_volume(id.clone()).await {
            Ok(()) => self.records.remove_volume(&id.key),
            Err(e) => {
                if matches!(e, Error::FailedPrecondition(_)) {
                    // Still in use: nothing was deleted, the volume stays usable.
                    rec.state = previous;
                    self.records.put_volume(&rec)?;
                }
                Err(e)
            }
        }
    }

    pub(super) fn ready_volume(&self, raw: &str) -> Result<VolumeRecord> {
        parse_id("volume_id", raw, VolumeId::parse)?
            .and_then(|id| self.records.volume(&id.key).filter(|r| r.id == id))
            .filter(|r| r.state == State::Ready)
            .ok_or_else(|| Error::NotFound(format!("volume {raw:?} does not exist")))
    }

    pub(super) async fn expand_inner(
        &self,
        req: ControllerExpandVolumeRequest,
    ) -> Result<(u64, bool)> {
        if req.volume_id.is_empty() {
            return Err(Error::InvalidArgument("volume_id is required".into()));
        }
        let range = req
            .capacity_range
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("capacity_range is required".into()))?;
        if ids::is_nfs_volume(&req.volume_id) {
            return Ok((self.nfs.expand(&req.volume_id, range).await?, false));
        }
        if ids::is_replicated_volume(&req.volume_id) {
            return self.expand_replicated(&req, range).await;
        }
        let rec = self.ready_volume(&req.volume_id)?;
        let block = match req.volume_capability.as_ref() {
            Some(cap) => parse_capability(cap)?.access == Access::Block,
            None => rec.block,
        };
        let align = if rec.id.layout == Layout::Image {
            IMAGE_ALIGN
        } else {
            1
        };
        let wanted = resolve_capacity(
            range.required_bytes,
            range.limit_bytes,
            rec.capacity_bytes,
            align,
        )?;
        let _lock = self.locks.lock(rec.id.key.as_str()).await;
        let mut rec = self.ready_volume(&req.volume_id)?;
        // A shared volume's node grows the served file system itself.
        let node_expansion = rec.id.layout == Layout::Image && !block && !rec.shared;
        if wanted <= rec.capacity_bytes {
            return Ok((rec.capacity_bytes, node_expansion));
        }
        let size = self
            .nodes
            .get(&rec.id.node)?
            .expand_volume(rec.id.clone(), wanted)
            .await?;
        rec.capacity_bytes = size;
        self.records.put_volume(&rec)?;
        Ok((size, node_expansion))
    }

    pub(super) async fn validate_inner(
        &self,
        req: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Reply<ValidateVolumeCapabilitiesResponse> {
        let req = req.into_inner();
        if req.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is required"));
        }
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities is required"));
        }
        if ids::is_nfs_volume(&req.volume_id) {
            self.nfs.existing(&req.volume_id).await?;
            let problem =
                req.volume_capabilities
                    .iter()
                    .find_map(|cap| match parse_shared_capability(cap) {
                        Err(e) => Some(e.to_string()),
                        Ok(r) if r.access == Access::Block => {
                            Some("NFS volumes cannot be used as raw block devices".into())
                        }
                        Ok(_) => None,
                    });
            return Ok(Response::new(confirm(req, problem)));
        }
        if ids::is_replicated_volume(&req.volume_id) {
            return Ok(Response::new(self.validate_replicated(req)?));
        }
        let rec = self.ready_volume(&req.volume_id)?;
        if let Err(e) = parse_params(&req.parameters) {
            return Ok(Response::new(ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: e.to_string(),
            }));
        }
        for cap in &req.volume_capabilities {
            let parsed = if rec.shared {
                parse_shared_capability(cap)
            } else {
                parse_capability(cap)
            };
            let problem = match parsed {
                Err(e) => Some(e.to_string()),
                Ok(r) if r.access == Access::Block && rec.id.layout == Layout::Dir => {
                    Some("layout \"dir\" volumes cannot be used as raw block devices".into())
                }
                Ok(r) if r.access == Access::Block && rec.shared => {
                    Some("shared volumes cannot be used as raw block devices".into())
                }
                Ok(_) => None,
            };
            if problem.is_some() {
                return Ok(Response::new(confirm(req, problem)));
            }
        }
        Ok(Response::new(confirm(req, None)))
    }

    pub(super) async fn get_volume_inner(
        &self,
        req: Request<ControllerGetVolumeRequest>,
    ) -> Reply<ControllerGetVolumeResponse> {
        if ids::is_nfs_volume(&req.get_ref().volume_id) {
            let (volume, condition) = self.nfs.get_volume(&req.get_ref().volume_id).await?;
            return Ok(Response::new(ControllerGetVolumeResponse {
                volume: Some(volume),
                status: Some(controller_get_volume_response::VolumeStatus {
                    published_node_ids: vec![],
                    volume_condition: Some(condition),
                }),
            }));
        }
        if ids::is_replicated_volume(&req.get_ref().volume_id) {
            return Ok(Response::new(
                self.get_replicated(&req.get_ref().volume_id).await?,
            ));
        }
        let rec = self.ready_volume(&req.get_ref().volume_id)?;
        let condition = match self
            .nodes
            .get(&rec.id.node)?
            .get_volume(rec.id.clone())
            .await
        {
            Ok(info) => VolumeCondition {
                abnormal: info.condition.abnormal,
                message: info.condition.message,
            },
            Err(Error::NotFound(_)) => VolumeCondition {
                abnormal: true,
                message: format!("node {} no longer holds this volume", rec.id.node),
            },
            Err(e) => VolumeCondition {
                abnormal: true,
                message: format!("cannot reach node {}: {e}", rec.id.node),
            },
        };
        Ok(Response::new(ControllerGetVolumeResponse {
            volume: Some(csi_volume(&rec)),
            status: Some(controller_get_volume_response::VolumeStatus {
                published_node_ids: vec![],
                volume_condition: Some(condition),
            }),
        }))
    }
}
