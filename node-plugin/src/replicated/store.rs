//! `ReplicatingStore`: the node's storage as the controller reaches it, with this node's
//! replicas of replicated volumes served by its `ReplicaHost`, and their snapshots and
//! seeding (`snapshot.rs`, `seed.rs`). Everything else is the inner store's.

use std::sync::Arc;

use async_trait::async_trait;
use warren_core::ids::{Layout, ReplicatedSnapshotId, ReplicatedVolumeId, SnapshotId, VolumeId};
use warren_core::storage::{
    Capacity, NodeStorage, ReplicaInfo, ReplicaSnapshotInfo, ReplicaSpec, SeedReport, SeedSource,
    SeedTarget, SnapshotInfo, VolumeInfo, VolumeSpec,
};
use warren_core::{Error as CoreError, Result};
use warren_replica::server::CreateOutcome;
use warren_replica::volume::ReplicaState;

use super::seed::Seeder;
use super::{replica_error, snapshot, ReplicaHost};
use crate::local::LocalStore;

pub struct ReplicatingStore {
    inner: Arc<dyn NodeStorage>,
    host: Option<Arc<ReplicaHost>>,
    /// The node's local volumes, read as files when one seeds a replicated volume.
    local: Option<LocalStore>,
}

impl ReplicatingStore {
    pub fn new(inner: Arc<dyn NodeStorage>, host: Option<Arc<ReplicaHost>>) -> Self {
        ReplicatingStore {
            inner,
            host,
            local: None,
        }
    }

    /// Lets seeds read this node's local volumes and snapshots (a local volume copied
    /// into a replicated class); without it such a source is NOT_FOUND here.
    pub fn with_local(mut self, local: LocalStore) -> Self {
        self.local = Some(local);
        self
    }
}

/// What the controller learns of a replica.
fn replica_info(id: ReplicatedVolumeId, host: &ReplicaHost, state: ReplicaState) -> ReplicaInfo {
    ReplicaInfo {
        volume: id,
        node: host.node().to_string(),
        endpoint: host.endpoint().to_string(),
        size_bytes: state.size,
        gen: state.gen,
        in_sync: state.in_sync(),
        members: state.members,
    }
}

/// A create's outcome as the trait documents it: an existing replica of another size is
/// ALREADY_EXISTS.
fn created(
    id: ReplicatedVolumeId,
    host: &ReplicaHost,
    outcome: CreateOutcome,
    size: u64,
) -> Result<ReplicaInfo> {
    match outcome {
        CreateOutcome::Created(s) | CreateOutcome::Existed(s) => Ok(replica_info(id, host, s)),
        CreateOutcome::OtherSize(s) => Err(CoreError::AlreadyExists(format!(
            "replica of {id} on {} has {} bytes, not {size}",
            host.node(),
            s.size
        ))),
    }
}

#[async_trait]
impl NodeStorage for ReplicatingStore {
    async fn create_volume(&self, spec: VolumeSpec) -> Result<VolumeInfo> {
        self.inner.create_volume(spec).await
    }

    async fn delete_volume(&self, id: VolumeId) -> Result<()> {
        self.inner.delete_volume(id).await
    }

    async fn expand_volume(&self, id: VolumeId, capacity_bytes: u64) -> Result<u64> {
        self.inner.expand_volume(id, capacity_bytes).await
    }

    async fn get_volume(&self, id: VolumeId) -> Result<VolumeInfo> {
        self.inner.get_volume(id).await
    }

    async fn list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        self.inner.list_volumes().await
    }

    async fn create_snapshot(
        &self,
        id: SnapshotId,
        name: String,
        source: VolumeId,
    ) -> Result<SnapshotInfo> {
        self.inner.create_snapshot(id, name, source).await
    }

    async fn delete_snapshot(&self, id: SnapshotId) -> Result<()> {
        self.inner.delete_snapshot(id).await
    }

    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        self.inner.list_snapshots().await
    }

    async fn capacity(&self, layout: Layout) -> Result<Capacity> {
        let mut capacity = self.inner.capacity(layout).await?;
        capacity.replica_endpoint = self.host.as_ref().map(|h| h.endpoint().to_string());
        Ok(capacity)
    }

    async fn create_replica(&self, spec: ReplicaSpec) -> Result<ReplicaInfo> {
        let Some(host) = &self.host else {
            return self.inner.create_replica(spec).await;
        };
        let name = spec.volume.replica_name().to_string();
        let _guard = host.lock(&name).await;
        let outcome = host
            .service()
            .create_replica(&name, spec.size_bytes, spec.members)
            .await
            .map_err(replica_error)?;
        created(spec.volume, host, outcome, spec.size_bytes)
    }

    async fn delete_replica(&self, volume: ReplicatedVolumeId) -> Result<()> {
        let Some(host) = &self.host else {
            return self.inner.delete_replica(volume).await;
        };
        let name = volume.replica_name().to_string();
        let _guard = host.lock(&name).await;
        match host.service().remove_replica(&name).await {
            Ok(()) => Ok(()),
            Err(warren_replica::Error::Busy(m)) => Err(CoreError::FailedPrecondition(m)),
            Err(e) => Err(replica_error(e)),
        }
    }

    async fn expand_replica(
        &self,
        volume: ReplicatedVolumeId,
        size_bytes: u64,
    ) -> Result<ReplicaInfo> {
        let Some(host) = &self.host else {
            return self.inner.expand_replica(volume, size_bytes).await;
        };
        let name = volume.replica_name().to_string();
        let _guard = host.lock(&name).await;
        // Grown in place, also while this node's engine (or another's) has it open: the
        // engine serves the new size once NodeExpandVolume tells it.
        let state = host
            .service()
            .grow_replica(&name, size_bytes)
            .await
            .map_err(|e| match e {
                warren_replica::Error::NotFound(_) => CoreError::NotFound(format!(
                    "node {} holds no replica of {volume}",
                    host.node()
                )),
                other => replica_error(other),
            })?;
        Ok(replica_info(volume, host, state))
    }

    async fn snapshot_through_engine(
        &self,
        snapshot: ReplicatedSnapshotId,
    ) -> Result<Vec<ReplicaSnapshotInfo>> {
        let Some(host) = &self.host else {
            return self.inner.snapshot_through_engine(snapshot).await;
        };
        Ok(snapshot::through_engine(host, snapshot).await?)
    }

    async fn snapshot_replica(
        &self,
        snapshot: ReplicatedSnapshotId,
    ) -> Result<ReplicaSnapshotInfo> {
        let Some(host) = &self.host else {
            return self.inner.snapshot_replica(snapshot).await;
        };
        Ok(snapshot::of_replica(host, snapshot).await?)
    }

    async fn delete_replica_snapshot(&self, snapshot: ReplicatedSnapshotId) -> Result<()> {
        let Some(host) = &self.host else {
            return self.inner.delete_replica_snapshot(snapshot).await;
        };
        Ok(snapshot::delete(host, snapshot).await?)
    }

    async fn seed_replicated(&self, target: SeedTarget, source: SeedSource) -> Result<SeedReport> {
        let Some(host) = &self.host else {
            return self.inner.seed_replicated(target, source).await;
        };
        let seeder = Seeder {
            host,
            local: self.local.as_ref(),
            inner: &self.inner,
        };
        Ok(seeder.seed(target, source).await?)
    }

    async fn get_replica(&self, volume: ReplicatedVolumeId) -> Result<ReplicaInfo> {
        let Some(host) = &self.host else {
            return self.inner.get_replica(volume).await;
        };
        let state = host
            .service()
            .replica_state(volume.replica_name())
            .await
            .map_err(replica_error)?;
        match state {
            Some(state) => Ok(replica_info(volume, host, state)),
            None => Err(CoreError::NotFound(format!(
                "node {} holds no replica of {volume}",
                host.node()
            ))),
        }
    }
}
