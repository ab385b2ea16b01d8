//! Filling a new replicated volume from a source this node keeps (restore, clone, and a
//! local volume copied into a replicated class): the source's bytes are read from a file
//! here and written through an engine of this node's own (`warren_replica::seed`), which
//! reaches this node's replica in process and the others over the replication protocol.
//!
//! Sources, as files:
//! - a replicated volume's snapshot: this node's copy of it;
//! - a local snapshot of `layout: image`: its image file;
//! - a local volume of `layout: image`: a point-in-time copy of it, made as a local
//!   snapshot is (its file system frozen while the image is copied), named after the
//!   target volume (`snap#image#<node>#<target key>`). It is deleted once the seed has
//!   finished; a seed that failed leaves it, so that its retry copies the same point in
//!   time (the target skips the source's zeros, so two different points could mix).
//!
//! A `dir` layout has no block image to copy.

use std::path::PathBuf;
use std::sync::Arc;

use warren_core::durable::read_json;
use warren_core::ids::{Layout, SnapshotId, VolumeId};
use warren_core::storage::{NodeStorage, SeedReport, SeedSource, SeedTarget};
use warren_core::Error as CoreError;

use super::stage::engine_config;
use super::{replica_error, ReplicaHost};
use crate::error::Result;
use crate::local::{LocalStore, SnapshotMeta, IMAGE, META};

/// What a seed needs of this node.
pub(super) struct Seeder<'a> {
    pub host: &'a ReplicaHost,
    /// The node's local volumes, when the caller wired them in.
    pub local: Option<&'a LocalStore>,
    /// The node's storage below the replicas (local volumes, shares): it makes the
    /// point-in-time copy of a local volume.
    pub inner: &'a Arc<dyn NodeStorage>,
}

fn no_dir_layout() -> CoreError {
    CoreError::InvalidArgument(
        "a dir volume has no block image to copy into a replicated volume".into(),
    )
}

impl Seeder<'_> {
    pub async fn seed(&self, target: SeedTarget, source: SeedSource) -> Result<SeedReport> {
        for replica in &target.replicas {
            warren_replica::names::check_replica(&replica.node).map_err(replica_error)?;
        }
        let name = target.volume.replica_name().to_string();
        let _guard = self.host.lock(&name).await;
        match source {
            SeedSource::ReplicaSnapshot(snapshot) => {
                let (meta, data) = self
                    .host
                    .service()
                    .snapshot_data(snapshot.snapshot_name())
                    .await
                    .map_err(|e| match e {
                        warren_replica::Error::NotFound(_) => CoreError::NotFound(format!(
                            "node {} keeps no copy of {snapshot}",
                            self.host.node()
                        )),
                        other => replica_error(other),
                    })?;
                if meta.volume != snapshot.volume.replica_name() {
                    return Err(CoreError::NotFound(format!(
                        "the copy of {snapshot} on node {} is of another volume",
                        self.host.node()
                    ))
                    .into());
                }
                self.fill(&target, data).await
            }
            SeedSource::LocalSnapshot(snapshot) => {
                let image = self.local_snapshot_image(&snapshot)?;
                self.fill(&target, image).await
            }
            SeedSource::LocalVolume(volume) => self.seed_from_local_volume(target, volume).await,
        }
    }

    fn local(&self, what: &str) -> Result<&LocalStore> {
        self.local.ok_or_else(|| {
            CoreError::NotFound(format!("node {} keeps no local {what}", self.host.node())).into()
        })
    }

    /// The image file of a local snapshot this node keeps.
    fn local_snapshot_image(&self, id: &SnapshotId) -> Result<PathBuf> {
        let local = self.local("snapshots")?;
        if id.node != local.node_id() {
            return Err(CoreError::NotFound(format!(
                "snapshot {id} lives on node {}, not on {}",
                id.node,
                local.node_id()
            ))
            .into());
        }
        if id.layout == Layout::Dir {
            return Err(no_dir_layout().into());
        }
        let dir = local.dirs().snapshot(&id.key);
        let meta_path = dir.join(META);
        if !meta_path.exists() {
            return Err(CoreError::NotFound(format!("snapshot {id} does not exist")).into());
        }
        let meta: SnapshotMeta = read_json(&meta_path)?;
        if meta.id != *id {
            return Err(CoreError::NotFound(format!("snapshot {id} does not exist")).into());
        }
        Ok(dir.join(IMAGE))
    }

    async fn seed_from_local_volume(
        &self,
        target: SeedTarget,
        volume: VolumeId,
    ) -> Result<SeedReport> {
        let local = self.local("volumes")?;
        if volume.node != local.node_id() {
            return Err(CoreError::NotFound(format!(
                "volume {volume} lives on node {}, not on {}",
                volume.node,
                local.node_id()
            ))
            .into());
        }
        if volume.layout == Layout::Dir {
            return Err(no_dir_layout().into());
        }
        local.volume_meta(&volume)?; // NOT_FOUND when this node does not keep it
        let copy = SnapshotId::new(Layout::Image, local.node_id(), target.volume.key.clone());
        self.inner
            .create_snapshot(
                copy.clone(),
                format!("seed of {}", target.volume),
                volume.clone(),
            )
            .await?;
        let image = self.local_snapshot_image(&copy)?;
        let report = self.fill(&target, image).await?;
        self.inner.delete_snapshot(copy).await?;
        Ok(report)
    }

    /// Writes `file` into the target through an engine of this node's own.
    async fn fill(&self, target: &SeedTarget, file: PathBuf) -> Result<SeedReport> {
        let config = engine_config(
            self.host,
            target.volume.replica_name(),
            target.size_bytes,
            &target.replicas,
        );
        let outcome = warren_replica::seed::seed_from_file(config, &file)
            .await
            .map_err(|e| match e {
                warren_replica::Error::Busy(m) => CoreError::Unavailable(m),
                other => replica_error(other),
            })?;
        Ok(SeedReport {
            source_bytes: outcome.source_bytes,
            written_bytes: outcome.written_bytes,
        })
    }
}
