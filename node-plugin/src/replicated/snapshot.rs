//! Snapshots of replicated volumes on this node: through the volume's engine when it runs
//! here (the mounted file system frozen meanwhile, so the copies hold a consistent file
//! system, as local snapshots do), of this node's replica on its own when no engine has
//! it open, and deleting this node's copy.

use std::path::{Path, PathBuf};

use warren_core::ids::ReplicatedSnapshotId;
use warren_core::storage::ReplicaSnapshotInfo;
use warren_core::Error as CoreError;
use warren_replica::snapshots::SnapshotMeta;

use super::stage::blocking;
use super::{replica_error, ReplicaHost};
use crate::error::Result;
use crate::freeze::{freeze, Frozen};
use crate::mountinfo;

/// What the controller learns of one copy.
fn info(snapshot: &ReplicatedSnapshotId, meta: SnapshotMeta) -> ReplicaSnapshotInfo {
    ReplicaSnapshotInfo {
        snapshot: snapshot.clone(),
        node: meta.replica,
        size_bytes: meta.size,
        gen: meta.gen,
        members: meta.members,
        clean: meta.clean,
        created_at_secs: meta.created_at_secs,
        created_at_nanos: meta.created_at_nanos,
    }
}

/// A snapshot call's replication error as its CSI code: `Busy` (an engine has the
/// replica open, or the same snapshot is being taken) is ABORTED, a fenced engine or a
/// replica away UNAVAILABLE.
fn snapshot_error(e: warren_replica::Error) -> CoreError {
    match e {
        warren_replica::Error::Busy(m) => CoreError::Aborted(m),
        warren_replica::Error::Fenced(m) => CoreError::Unavailable(m),
        other => replica_error(other),
    }
}

/// Freezes the file system mounted from `device`, if one is (any of its mount points
/// freezes it whole).
fn freeze_mounted(device: &Path) -> Result<Option<Frozen>> {
    let mounts = mountinfo::read()?;
    match mounts.iter().find(|m| Path::new(&m.source) == device) {
        Some(m) => Ok(Some(freeze(&m.mount_point)?)),
        None => Ok(None),
    }
}

pub(super) async fn through_engine(
    host: &ReplicaHost,
    snapshot: ReplicatedSnapshotId,
) -> Result<Vec<ReplicaSnapshotInfo>> {
    let name = snapshot.volume.replica_name();
    let _guard = host.lock(name).await;
    let running = host.running();
    let (Some(seen), Some(device)) = (running.seen(name), running.device(name)) else {
        return Err(CoreError::NotFound(format!(
            "the engine of {} does not run on this node",
            snapshot.volume
        ))
        .into());
    };
    let device: PathBuf = device;
    let frozen = blocking(move || freeze_mounted(&device)).await?;
    let taken = seen.engine.snapshot(snapshot.snapshot_name()).await;
    // Thawed whatever the snapshot's outcome (the guard thaws when dropped).
    blocking(move || {
        drop(frozen);
        Ok(())
    })
    .await?;
    let copies = taken.map_err(snapshot_error)?;
    Ok(copies.into_iter().map(|m| info(&snapshot, m)).collect())
}

pub(super) async fn of_replica(
    host: &ReplicaHost,
    snapshot: ReplicatedSnapshotId,
) -> Result<ReplicaSnapshotInfo> {
    let name = snapshot.volume.replica_name();
    let _guard = host.lock(name).await;
    let meta = host
        .service()
        .snapshot_replica(name, snapshot.snapshot_name())
        .await
        .map_err(|e| match e {
            warren_replica::Error::NotFound(_) => CoreError::NotFound(format!(
                "node {} holds no replica of {}",
                host.node(),
                snapshot.volume
            )),
            other => snapshot_error(other),
        })?;
    Ok(info(&snapshot, meta))
}

pub(super) async fn delete(host: &ReplicaHost, snapshot: ReplicatedSnapshotId) -> Result<()> {
    host.service()
        .delete_snapshot(snapshot.snapshot_name())
        .await
        .map_err(|e| snapshot_error(e).into())
}
