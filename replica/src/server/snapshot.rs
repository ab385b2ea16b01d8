//! Snapshot copies of the replicas a service keeps (see `snapshots.rs` for where they
//! live): taken through a running engine (its `Snapshot` request, with no I/O in flight),
//! or by the node for a replica no engine has open (`snapshot_replica`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::manage::{read_state, RELEASE_GRACE};
use super::{OpenVolume, ReplicaService};
use crate::blocking::blocking;
use crate::error::{Error, Result};
use crate::locks::lock;
use crate::messages::SnapshotRequest;
use crate::protocol::{Frame, Kind};
use crate::snapshots::{SnapshotMeta, Take};
use crate::volume::ReplicaVolume;

/// An engine's `Snapshot` request: copies the replica at the engine's generation. The
/// engine holds its membership write lock, so none of its I/O is in flight, and the
/// replica's state is held still while the copy runs (`with_data_still`).
pub(super) fn take_for_engine(open: &OpenVolume, frame: &Frame) -> Result<Frame> {
    let request: SnapshotRequest = frame.parse_json()?;
    let _claim = open.snapshots.claim_name(&request.name)?;
    let take = Take {
        name: &request.name,
        point: &request.point,
        replace: request.replace,
        through_engine: true,
    };
    let meta = open
        .volume
        .with_data_still(Some(frame.gen), |data, state| {
            open.snapshots.take(&take, data, state)
        })?;
    Frame::json(Kind::Reply, 0, &meta)
}

impl ReplicaService {
    /// Copies this service's replica of `volume` into the snapshot `name`, when no engine
    /// has it open: it then holds what its last engine left (`clean` says whether that
    /// engine closed it cleanly). While the copy runs, an engine's `Open` of the replica
    /// waits (see `open`). `Busy` while an engine has it open (the engine's node takes
    /// the snapshot through it instead) or while `name` is being taken already;
    /// `NotFound` when there is no replica of `volume`. Idempotent: an existing copy of
    /// `name` is returned as it is.
    pub async fn snapshot_replica(&self, volume: &str, name: &str) -> Result<SnapshotMeta> {
        crate::names::check_volume(volume)?;
        let claim = self.snapshots.claim_name(name)?;
        let (snapshots, wanted) = (self.snapshots.clone(), name.to_string());
        if let Some(existing) = blocking(move || snapshots.get(&wanted)).await? {
            if existing.volume != volume {
                return Err(Error::InvalidArgument(format!(
                    "snapshot {name} is a copy of {}, not of {volume}",
                    existing.volume
                )));
            }
            return Ok(existing);
        }
        let copying = self.hold_for_copy(volume).await?;
        let open = self.open_existing(volume).await?;
        let (snapshots, name, replica) = (
            self.snapshots.clone(),
            name.to_string(),
            self.replica.clone(),
        );
        let meta = blocking(move || {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            // A copy of a closed replica is a point of its own: no other copy shares it.
            let point = format!("{replica}-closed-{}", now.as_nanos());
            let take = Take {
                name: &name,
                point: &point,
                replace: false,
                through_engine: false,
            };
            open.volume
                .with_data_still(None, |data, state| snapshots.take(&take, data, state))
        })
        .await;
        drop(copying);
        drop(claim);
        meta
    }

    /// Marks `volume` as being copied, once no engine holds it open (an engine that just
    /// closed lets go a moment later, so a short grace is given): from then on an `Open`
    /// waits. Checked and marked under the table's lock, which `open` takes too.
    async fn hold_for_copy(&self, volume: &str) -> Result<crate::snapshots::Claim> {
        let deadline = Instant::now() + RELEASE_GRACE;
        loop {
            let claimed = {
                let volumes = lock(&self.volumes);
                // Only the table holds it: no connection or in-process client has it open.
                let held = volumes
                    .get(volume)
                    .is_some_and(|open| Arc::strong_count(open) > 1);
                if held {
                    None
                } else {
                    self.snapshots.begin_copy(volume)
                }
            };
            if let Some(claim) = claimed {
                return Ok(claim);
            }
            if Instant::now() >= deadline {
                return Err(Error::Busy(format!(
                    "an engine has the replica of {volume} open (or it is being copied); \
                     take the snapshot through that engine"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The replica of `volume` from the table, opened into it if it is not there;
    /// NOT_FOUND when this service keeps none (also for growing it, `manage.rs`).
    pub(super) async fn open_existing(&self, volume: &str) -> Result<Arc<OpenVolume>> {
        if let Some(open) = lock(&self.volumes).get(volume).cloned() {
            return Ok(open);
        }
        let (root, replica, name) = (self.root.clone(), self.replica.clone(), volume.to_string());
        let opened = blocking(move || {
            let Some(state) = read_state(&root.join(&name))? else {
                return Err(Error::NotFound(format!(
                    "no replica of {name} on {replica}"
                )));
            };
            ReplicaVolume::open(&root, &replica, &name, state.size, false)
        })
        .await?;
        Ok(self.keep_open(volume, opened))
    }

    /// Deletes this service's copy of the snapshot `name`; a missing one is success.
    pub async fn delete_snapshot(&self, name: &str) -> Result<()> {
        let claim = self.snapshots.claim_name(name)?;
        let (snapshots, name) = (self.snapshots.clone(), name.to_string());
        let removed = blocking(move || snapshots.remove(&name)).await;
        drop(claim);
        removed
    }

    /// This service's copy of the snapshot `name`, if it keeps one.
    pub async fn snapshot(&self, name: &str) -> Result<Option<SnapshotMeta>> {
        let (snapshots, name) = (self.snapshots.clone(), name.to_string());
        blocking(move || snapshots.get(&name)).await
    }

    /// The data file of this service's copy of the snapshot `name` (to read it whole,
    /// as a seed does); `NotFound` when it keeps none.
    pub async fn snapshot_data(&self, name: &str) -> Result<(SnapshotMeta, PathBuf)> {
        let meta = self.snapshot(name).await?.ok_or_else(|| {
            Error::NotFound(format!("no copy of snapshot {name} on {}", self.replica))
        })?;
        Ok((meta, self.snapshots.data_path(name)?))
    }
}

#[cfg(test)]
mod tests;
