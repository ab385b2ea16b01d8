//! Restore and clone into replicated volumes, also from local volumes: which source a
//! CreateVolume names, and filling the new volume from it.
//!
//! The new volume's replicas are made empty first (as for any replicated volume); then
//! the node that keeps the source starts an engine of its own on them and streams the
//! source's data over the replication protocol (`NodeStorage::seed_replicated`). Only
//! then is the volume `Ready`: until the CO has its ID, no other engine can open it. A
//! crash mid-seed leaves the record `Creating`: a retry seeds again (the same bytes),
//! reconciliation removes the replicas.
//!
//! A replicated volume's clone is seeded from a snapshot taken for it (so the source may
//! stay in use), deleted once the clone is filled; a local volume is copied at one point
//! by its own node.

use csi_proto::v1::{volume_content_source, VolumeContentSource};
use warren_core::ids::{self, Layout, ReplicatedSnapshotId, SnapshotId, VolumeId};
use warren_core::storage::{SeedSource, SeedTarget};
use warren_core::{Error, Result};

use crate::replicated_record::{ReplicatedRecord, ReplicatedSource};
use crate::service::{parse_id, ControllerService};

use super::fanout::from_node;

/// The name of the snapshot a clone of a replicated volume is seeded from. A CO's names
/// never start with `warren-clone-` in practice; a clash is refused as any name clash is.
fn clone_snapshot_name(rec: &ReplicatedRecord) -> String {
    format!("warren-clone-{}", rec.id.key)
}

fn not_an_image(id: &str) -> Error {
    Error::InvalidArgument(format!(
        "{id} is a `dir` volume: it has no block image to copy into a replicated volume"
    ))
}

impl ControllerService {
    /// The source a CreateVolume of a replicated volume names, checked: NOT_FOUND when it
    /// does not exist, INVALID_ARGUMENT when it cannot be copied into a block volume,
    /// OUT_OF_RANGE when it is larger than the new volume.
    pub(super) async fn replicated_source(
        &self,
        source: Option<&VolumeContentSource>,
        capacity: u64,
    ) -> Result<Option<ReplicatedSource>> {
        use volume_content_source::Type;
        let Some(source) = source else {
            return Ok(None);
        };
        let (found, size) = match &source.r#type {
            Some(Type::Snapshot(s)) if ids::is_replicated_snapshot(&s.snapshot_id) => {
                let snap = self.ready_replicated_snapshot(&s.snapshot_id)?;
                (ReplicatedSource::Snapshot(snap.id), snap.size_bytes)
            }
            Some(Type::Volume(v)) if ids::is_replicated_volume(&v.volume_id) => {
                let vol = self.ready_replicated(&v.volume_id)?;
                (ReplicatedSource::Volume(vol.id), vol.capacity_bytes)
            }
            // A local source's record may be another process's (in the edge mode each
            // node makes its own local volumes): its node is asked.
            Some(Type::Snapshot(s)) => {
                let missing =
                    || Error::NotFound(format!("source snapshot {} does not exist", s.snapshot_id));
                let id = parse_id("snapshot source id", &s.snapshot_id, SnapshotId::parse)?
                    .ok_or_else(missing)?;
                if id.layout != Layout::Image {
                    return Err(not_an_image(&s.snapshot_id));
                }
                let node = self.nodes().get(&id.node).map_err(|_| missing())?;
                let info = node
                    .list_snapshots()
                    .await
                    .map_err(|e| from_node(&id.node, e))?
                    .into_iter()
                    .find(|info| info.id == id && info.ready)
                    .ok_or_else(missing)?;
                (ReplicatedSource::LocalSnapshot(id), info.size_bytes)
            }
            Some(Type::Volume(v)) => {
                let missing =
                    || Error::NotFound(format!("source volume {} does not exist", v.volume_id));
                let id = parse_id("source volume id", &v.volume_id, VolumeId::parse)?
                    .ok_or_else(missing)?;
                if id.layout != Layout::Image {
                    return Err(not_an_image(&v.volume_id));
                }
                let node = self.nodes().get(&id.node).map_err(|_| missing())?;
                let info = node.get_volume(id.clone()).await.map_err(|e| match e {
                    Error::NotFound(_) => missing(),
                    e => from_node(&id.node, e),
                })?;
                (ReplicatedSource::LocalVolume(id), info.capacity_bytes)
            }
            None => {
                return Err(Error::InvalidArgument(
                    "volume_content_source has no type".into(),
                ))
            }
        };
        if size > capacity {
            return Err(Error::OutOfRange(format!(
                "the new volume ({capacity} bytes) is smaller than its source {} ({size} bytes)",
                found.id()
            )));
        }
        Ok(Some(found))
    }

    /// Fills the new volume from its source (see the module comment).
    pub(super) async fn seed(
        &self,
        rec: &ReplicatedRecord,
        source: &ReplicatedSource,
    ) -> Result<()> {
        let target = SeedTarget {
            volume: rec.id.clone(),
            size_bytes: rec.capacity_bytes,
            replicas: rec.endpoints(),
        };
        match source {
            ReplicatedSource::Snapshot(id) => self.seed_from_snapshot(target, id).await,
            ReplicatedSource::Volume(id) => {
                let name = clone_snapshot_name(rec);
                let snapshot = {
                    let _name_lock = self.locks().lock(&format!("snapshot-name/{name}")).await;
                    self.create_replicated_snapshot(&name, &id.to_string())
                        .await?
                };
                self.seed_from_snapshot(target, &snapshot.id).await?;
                self.delete_replicated_snapshot(&snapshot.id.to_string())
                    .await
            }
            ReplicatedSource::LocalSnapshot(id) => {
                let node = self.nodes().get(&id.node)?;
                node.seed_replicated(target, SeedSource::LocalSnapshot(id.clone()))
                    .await
                    .map_err(|e| from_node(&id.node, e))
                    .map(drop)
            }
            ReplicatedSource::LocalVolume(id) => {
                let node = self.nodes().get(&id.node)?;
                node.seed_replicated(target, SeedSource::LocalVolume(id.clone()))
                    .await
                    .map_err(|e| from_node(&id.node, e))
                    .map(drop)
            }
        }
    }

    /// What an abandoned seed may leave on the source's node: a local volume is copied
    /// from a point-in-time local snapshot its node makes for the seed
    /// (`snap#image#<node>#<new volume key>`) and keeps until the seed succeeds, so that a
    /// retry copies the same point. Removed when the new volume is undone.
    pub(crate) async fn remove_seed_leftovers(&self, rec: &ReplicatedRecord) -> Result<()> {
        let Some(ReplicatedSource::LocalVolume(source)) = &rec.source else {
            return Ok(());
        };
        let temporary = SnapshotId::new(Layout::Image, &source.node, rec.id.key.clone());
        self.nodes()
            .get(&source.node)?
            .delete_snapshot(temporary)
            .await
            .map_err(|e| from_node(&source.node, e))
    }

    /// Seeds from one copy of the snapshot: the first node that keeps one and answers.
    async fn seed_from_snapshot(
        &self,
        target: SeedTarget,
        id: &ReplicatedSnapshotId,
    ) -> Result<()> {
        let snapshot = self.ready_replicated_snapshot(&id.to_string())?;
        let mut last = Error::NotFound(format!("snapshot {id} has no copy left"));
        for copy in &snapshot.copies {
            let answer = match self.nodes().get(&copy.node) {
                Ok(node) => {
                    node.seed_replicated(target.clone(), SeedSource::ReplicaSnapshot(id.clone()))
                        .await
                }
                Err(e) => Err(e),
            };
            match answer {
                Ok(report) => {
                    tracing::info!(volume = %target.volume, snapshot = %id, node = copy.node,
                        source_bytes = report.source_bytes, written_bytes = report.written_bytes,
                        "replicated volume seeded");
                    return Ok(());
                }
                // Another copy may do: the same bytes are on every kept copy.
                Err(e @ (Error::Unavailable(_) | Error::NotFound(_))) => {
                    last = from_node(&copy.node, e)
                }
                Err(e) => return Err(from_node(&copy.node, e)),
            }
        }
        Err(last)
    }
}
