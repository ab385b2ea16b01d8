//! The CSI Controller service. Handlers validate, then drive `Records` and the node's
//! `NodeStorage`; calls for one name or one volume are serialized with keyed locks.

use std::collections::HashMap;
use std::sync::Arc;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::controller_service_capability::{rpc, Rpc, Type as CapType};
use csi_proto::v1::*;
use tonic::{Request, Response, Status};
use warren_core::capability::{
    parse_capabilities, parse_capability, parse_shared_capabilities, parse_shared_capability,
    Access,
};
use warren_core::ids::{Key, Layout, SnapshotId, VolumeId};
use warren_core::lock::KeyedLocks;
use warren_core::params::{
    backend, parse_params, Backend, VolumeParams, CONTEXT_FS_TYPE, CONTEXT_SHARE,
};
use warren_core::storage::{ContentSource, SnapshotInfo, VolumeSpec};
use warren_core::validate::{resolve_capacity, validate_name, MIN_IMAGE_BYTES};
use warren_core::{Error, Result, TOPOLOGY_KEY};

use warren_nfs::volume_id::{NfsSnapshotId, NfsVolumeId};

use crate::nfs::NfsVolumes;
use crate::nodes::Nodes;
use crate::placement::candidates;
use crate::records::{Records, SnapshotRecord, State, VolumeRecord};

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

fn topology(node: &str) -> Topology {
    Topology {
        segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node.to_string())]),
    }
}

fn timestamp(info: &SnapshotInfo) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: info.created_at_secs,
        nanos: info.created_at_nanos,
    }
}

fn csi_volume(rec: &VolumeRecord) -> Volume {
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
fn confirm(
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

fn csi_snapshot(info: &SnapshotInfo) -> Snapshot {
    Snapshot {
        size_bytes: info.size_bytes as i64,
        snapshot_id: info.id.to_string(),
        source_volume_id: info.source_volume.to_string(),
        creation_time: Some(timestamp(info)),
        ready_to_use: info.ready,
        group_snapshot_id: String::new(),
    }
}

/// One page of `items` after `token` (the last key of the previous page).
fn page<T: Clone>(
    items: &[T],
    key: impl Fn(&T) -> &Key,
    max_entries: i32,
    token: &str,
) -> Result<(Vec<T>, String)> {
    if max_entries < 0 {
        return Err(Error::InvalidArgument(
            "max_entries must not be negative".into(),
        ));
    }
    let start = if token.is_empty() {
        0
    } else {
        let after = Key::parse(token)
            .ok_or_else(|| Error::Aborted(format!("starting_token {token:?} is not valid")))?;
        items.partition_point(|i| key(i) <= &after)
    };
    let rest = &items[start..];
    let take = if max_entries == 0 {
        rest.len()
    } else {
        (max_entries as usize).min(rest.len())
    };
    let next = if take < rest.len() {
        key(&rest[take - 1]).to_string()
    } else {
        String::new()
    };
    Ok((rest[..take].to_vec(), next))
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

    /// Known nodes ordered by free space, most first; unreachable nodes last.
    async fn nodes_by_free_space(&self, layout: Layout) -> Vec<String> {
        let mut scored = Vec::new();
        for (name, node) in self.nodes.snapshot() {
            let free = node
                .capacity(layout)
                .await
                .map(|c| c.available_bytes)
                .unwrap_or(0);
            scored.push((free, name.clone()));
        }
        scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.into_iter().map(|(_, n)| n).collect()
    }

    fn content_source(
        &self,
        source: Option<&VolumeContentSource>,
    ) -> Result<Option<ContentSource>> {
        use volume_content_source::Type;
        let Some(source) = source else {
            return Ok(None);
        };
        match &source.r#type {
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

    async fn create_volume_inner(&self, req: CreateVolumeRequest) -> Result<Volume> {
        if backend(&req.parameters)? == Backend::Nfs {
            return self.nfs.create_volume(&req).await;
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
        let (required, limit) = req
            .capacity_range
            .as_ref()
            .map(|r| (r.required_bytes, r.limit_bytes))
            .unwrap_or((0, 0));
        let (default, align) = match params.layout {
            Layout::Image => (DEFAULT_VOLUME_BYTES, IMAGE_ALIGN),
            Layout::Dir => (DEFAULT_VOLUME_BYTES, 1),
        };
        let mut capacity = resolve_capacity(required, limit, default, align)?;
        if params.layout == Layout::Image && capacity < MIN_IMAGE_BYTES {
            if limit != 0 && (limit as u64) < MIN_IMAGE_BYTES {
                return Err(Error::OutOfRange(format!(
                    "image volumes are at least {MIN_IMAGE_BYTES} bytes; limit_bytes is {limit}"
                )));
            }
            capacity = MIN_IMAGE_BYTES;
        }
        let source = self.content_source(req.volume_content_source.as_ref())?;

        let _name_lock = self.locks.lock(&format!("volume-name/{}", req.name)).await;
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
    async fn finish_create(&self, mut rec: VolumeRecord) -> Result<Volume> {
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

    async fn delete_volume_inner(&self, req: DeleteVolumeRequest) -> Result<()> {
        if NfsVolumeId::is_nfs(&req.volume_id) {
            return match crate::nfs::volume_id(&req.volume_id) {
                Some(id) => self.nfs.delete_volume(&id).await,
                None => Ok(()),
            };
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

    fn ready_volume(&self, raw: &str) -> Result<VolumeRecord> {
        parse_id("volume_id", raw, VolumeId::parse)?
            .and_then(|id| self.records.volume(&id.key).filter(|r| r.id == id))
            .filter(|r| r.state == State::Ready)
            .ok_or_else(|| Error::NotFound(format!("volume {raw:?} does not exist")))
    }

    async fn expand_inner(&self, req: ControllerExpandVolumeRequest) -> Result<(u64, bool)> {
        if req.volume_id.is_empty() {
            return Err(Error::InvalidArgument("volume_id is required".into()));
        }
        let range = req
            .capacity_range
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("capacity_range is required".into()))?;
        if NfsVolumeId::is_nfs(&req.volume_id) {
            return Ok((self.nfs.expand(&req.volume_id, range).await?, false));
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

    async fn create_snapshot_inner(&self, req: CreateSnapshotRequest) -> Result<Snapshot> {
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
        if NfsVolumeId::is_nfs(&req.source_volume_id) {
            let source = crate::nfs::volume_id(&req.source_volume_id).ok_or_else(|| {
                Error::NotFound(format!("volume {:?} does not exist", req.source_volume_id))
            })?;
            return self.nfs.create_snapshot(&req.name, &source).await;
        }
        let source_id = parse_id("source_volume_id", &req.source_volume_id, VolumeId::parse)?;
        let _name_lock = self
            .locks
            .lock(&format!("snapshot-name/{}", req.name))
            .await;
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

    async fn finish_snapshot(&self, mut rec: SnapshotRecord) -> Result<Snapshot> {
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

    async fn delete_snapshot_inner(&self, req: DeleteSnapshotRequest) -> Result<()> {
        if NfsSnapshotId::is_nfs(&req.snapshot_id) {
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

    fn list_snapshots_inner(&self, req: ListSnapshotsRequest) -> Result<ListSnapshotsResponse> {
        let mut ready: Vec<(Key, Snapshot)> = self
            .records
            .snapshots()
            .into_iter()
            .filter(|r| r.state == State::Ready)
            .filter_map(|r| r.info.map(|info| (r.id.key, csi_snapshot(&info))))
            .chain(self.nfs.snapshots())
            .collect();
        ready.sort_by(|a, b| a.0.cmp(&b.0));
        if !req.snapshot_id.is_empty() {
            ready.retain(|(_, s)| s.snapshot_id == req.snapshot_id);
        }
        if !req.source_volume_id.is_empty() {
            ready.retain(|(_, s)| s.source_volume_id == req.source_volume_id);
        }
        let (items, next_token) = page(&ready, |r| &r.0, req.max_entries, &req.starting_token)?;
        Ok(ListSnapshotsResponse {
            entries: items
                .into_iter()
                .map(|(_, snapshot)| list_snapshots_response::Entry {
                    snapshot: Some(snapshot),
                })
                .collect(),
            next_token,
        })
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
        let req = req.into_inner();
        if req.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is required"));
        }
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities is required"));
        }
        if NfsVolumeId::is_nfs(&req.volume_id) {
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

    async fn list_volumes(&self, req: Request<ListVolumesRequest>) -> Reply<ListVolumesResponse> {
        let req = req.into_inner();
        let mut ready: Vec<(Key, Volume)> = self
            .records
            .volumes()
            .into_iter()
            .filter(|r| r.state == State::Ready)
            .map(|r| (r.id.key.clone(), csi_volume(&r)))
            .chain(self.nfs.list())
            .collect();
        ready.sort_by(|a, b| a.0.cmp(&b.0));
        let (items, next_token) = page(&ready, |r| &r.0, req.max_entries, &req.starting_token)?;
        Ok(Response::new(ListVolumesResponse {
            entries: items
                .into_iter()
                .map(|(_, volume)| list_volumes_response::Entry {
                    volume: Some(volume),
                    status: None,
                })
                .collect(),
            next_token,
        }))
    }

    async fn get_capacity(&self, req: Request<GetCapacityRequest>) -> Reply<GetCapacityResponse> {
        let req = req.into_inner();
        if backend(&req.parameters)? == Backend::Nfs {
            let available = self.nfs.capacity(&req.parameters).await?;
            return Ok(Response::new(GetCapacityResponse {
                available_capacity: available as i64,
                maximum_volume_size: None,
                minimum_volume_size: None,
            }));
        }
        let VolumeParams::Local(params) = parse_params(&req.parameters)?;
        for cap in &req.volume_capabilities {
            let r = parse_capability(cap)?;
            if r.access == Access::Block && params.layout == Layout::Dir {
                return Ok(Response::new(GetCapacityResponse::default()));
            }
        }
        let wanted_node = req
            .accessible_topology
            .as_ref()
            .map(|t| t.segments.get(TOPOLOGY_KEY).cloned().unwrap_or_default());
        let (mut available, mut maximum) = (0u64, 0u64);
        for (name, node) in self.nodes.snapshot() {
            if wanted_node.as_ref().is_some_and(|w| *w != name) {
                continue;
            }
            if let Ok(c) = node.capacity(params.layout).await {
                available += c.available_bytes;
                maximum = maximum.max(c.maximum_volume_bytes);
            }
        }
        Ok(Response::new(GetCapacityResponse {
            available_capacity: available as i64,
            maximum_volume_size: Some(maximum as i64),
            minimum_volume_size: Some(match params.layout {
                Layout::Image => MIN_IMAGE_BYTES as i64,
                Layout::Dir => 0,
            }),
        }))
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
        let req = req.into_inner();
        if NfsSnapshotId::is_nfs(&req.snapshot_id) {
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
        if NfsVolumeId::is_nfs(&req.get_ref().volume_id) {
            let (volume, condition) = self.nfs.get_volume(&req.get_ref().volume_id).await?;
            return Ok(Response::new(ControllerGetVolumeResponse {
                volume: Some(volume),
                status: Some(controller_get_volume_response::VolumeStatus {
                    published_node_ids: vec![],
                    volume_condition: Some(condition),
                }),
            }));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_by_key() {
        let keys: Vec<Key> = (0..5)
            .map(|_| Key::random())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let (first, token) = page(&keys, |k| k, 2, "").unwrap();
        assert_eq!(first, keys[..2]);
        let (second, token) = page(&keys, |k| k, 2, &token).unwrap();
        assert_eq!(second, keys[2..4]);
        let (last, token) = page(&keys, |k| k, 2, &token).unwrap();
        assert_eq!((last, token.as_str()), (keys[4..].to_vec(), ""));
        assert_eq!(page(&keys, |k| k, 0, "").unwrap().0.len(), 5);
        assert_eq!(
            page(&keys, |k| k, 1, "bogus").unwrap_err().code(),
            tonic::Code::Aborted
        );
    }
}
