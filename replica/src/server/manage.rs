//! Making, growing and removing the replicas a service keeps, for the node that hosts it (the
//! controller asks through the node's storage interface; engines never call these).
//!
//! Both go through the service's table of open volumes, so a replica is never held by two
//! `ReplicaVolume`s at once: a create opens it into the table (where an engine's `Open`
//! finds the same one), and a remove takes it out of the table only while nothing else
//! holds it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{OpenVolume, ReplicaService, MAX_VOLUME_SIZE};
use crate::blocking::blocking;
use crate::error::{Error, Result};
use crate::locks::lock;
use crate::volume::{ReplicaState, ReplicaVolume};

/// What `create_replica` found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum CreateOutcome {
    /// Made now, at generation 1 with the members asked for.
    Created(ReplicaState),
    /// There already, with the size asked for (at whatever generation it has reached).
    Existed(ReplicaState),
    /// There already with another size: the caller refuses (ALREADY_EXISTS in CSI terms).
    OtherSize(ReplicaState),
}

/// How long `remove_replica` waits for the last holder of a replica to let go: an engine
/// that just closed drops its connection at once, but the service notices a moment later.
pub(super) const RELEASE_GRACE: Duration = Duration::from_secs(1);

/// A replica being removed is first renamed to this (not a valid volume name: it starts
/// with '.'), so a crash halfway leaves nothing an engine could open, and a retry finishes.
fn removing_dir(root: &Path, volume: &str) -> PathBuf {
    root.join(format!(".removing-{volume}"))
}

/// A replica's metadata on disk; `None` when there is none (never made, or a creation
/// that stopped before its metadata, which `ReplicaVolume::open` makes again).
pub(super) fn read_state(dir: &Path) -> Result<Option<ReplicaState>> {
    let path = dir.join("meta.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Internal(format!("{} is damaged: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", path.display()))(e)),
    }
}

impl ReplicaService {
    /// Creates an empty replica of `volume` and commits generation 1 with `members` (every
    /// replica of the volume, this one included), so the first engine finds them all in
    /// sync and clean. Idempotent: an existing replica of the same size is returned as it
    /// is now. Crash-safe: data and bitmap are made before the metadata, and a replica
    /// still at generation 0 (stopped before its commit) is committed by a retry.
    pub async fn create_replica(
        &self,
        volume: &str,
        size: u64,
        members: Vec<String>,
    ) -> Result<CreateOutcome> {
        crate::names::check_volume(volume)?;
        for member in &members {
            crate::names::check_replica(member)?;
        }
        if !members.contains(&self.replica) {
            return Err(Error::InvalidArgument(format!(
                "members {members:?} of {volume} do not include this replica ({})",
                self.replica
            )));
        }
        check_size(size)?;
        let existing = lock(&self.volumes).get(volume).cloned();
        let open = match existing {
            Some(open) => open,
            None => {
                let (root, replica, name) =
                    (self.root.clone(), self.replica.clone(), volume.to_string());
                let opened = blocking(move || {
                    if let Some(state) = read_state(&root.join(&name))? {
                        if state.size != size {
                            return Ok(Err(state));
                        }
                    }
                    ReplicaVolume::open(&root, &replica, &name, size, true).map(Ok)
                })
                .await?;
                let opened = match opened {
                    Ok(opened) => opened,
                    Err(state) => return Ok(CreateOutcome::OtherSize(state)),
                };
                self.keep_open(volume, opened)
            }
        };
        let state = open.state();
        if state.size != size {
            return Ok(CreateOutcome::OtherSize(state));
        }
        if state.gen > 0 {
            return Ok(CreateOutcome::Existed(state));
        }
        let state = blocking(move || {
            open.volume.commit(0, 1, members)?;
            // A commit marks the replica not clean (an engine is about to write); nothing
            // was written, so say so, or the first engine would resync for nothing.
            open.volume.close_clean(1)?;
            Ok(open.volume.state())
        })
        .await?;
        tracing::info!(volume, size, members = ?state.members, "replica created");
        Ok(CreateOutcome::Created(state))
    }

    /// Removes this service's replica of `volume`: only `<root>/<volume>`. A missing one is
    /// success. Refused (`Busy`) while an engine's session holds it open.
    pub async fn remove_replica(&self, volume: &str) -> Result<()> {
        crate::names::check_volume(volume)?;
        let (dir, doomed) = (self.root.join(volume), removing_dir(&self.root, volume));
        let deadline = Instant::now() + RELEASE_GRACE;
        loop {
            let held = {
                let mut volumes = lock(&self.volumes);
                // Only the table holds it: no connection or in-process client has it open.
                let held = volumes
                    .get(volume)
                    .is_some_and(|open| Arc::strong_count(open) > 1);
                if !held {
                    // Out of the table and renamed under the table's lock: an `Open` that
                    // comes after finds neither.
                    volumes.remove(volume);
                    match std::fs::rename(&dir, &doomed) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(Error::io(format!("rename {}", dir.display()))(e)),
                    }
                }
                held
            };
            if !held {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::Busy(format!(
                    "the replica of {volume} is open by an engine; close the volume first"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let gone = doomed.clone();
        blocking(move || match std::fs::remove_dir_all(&gone) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", gone.display()))(e)),
        })
        .await?;
        tracing::info!(volume, "replica removed");
        Ok(())
    }

    /// Grows this service's replica of `volume` to `size` bytes (see `ReplicaVolume::grow`:
    /// idempotent, crash-safe, never shrinks). Allowed while an engine has the volume open:
    /// the engine goes on serving its old size until it is told to grow
    /// (`Engine::grow_to_replicas`), and never serves more than every member holds.
    /// NOT_FOUND when this service keeps no replica of `volume`.
    pub async fn grow_replica(&self, volume: &str, size: u64) -> Result<ReplicaState> {
        crate::names::check_volume(volume)?;
        check_size(size)?;
        let open = self.open_existing(volume).await?;
        blocking(move || open.volume.grow(size)).await
    }

    /// Puts a replica this call opened into the table of open volumes, so an engine's
    /// `Open` finds this same replica, never a second copy of its files; if an engine's
    /// `Open` raced this call, the one already there wins.
    pub(super) fn keep_open(&self, volume: &str, opened: ReplicaVolume) -> Arc<OpenVolume> {
        lock(&self.volumes)
            .entry(volume.to_string())
            .or_insert_with(|| self.open_volume(opened))
            .clone()
    }

    /// This service's replica of `volume` as it is now; `None` when it keeps none.
    pub async fn replica_state(&self, volume: &str) -> Result<Option<ReplicaState>> {
        crate::names::check_volume(volume)?;
        if let Some(open) = lock(&self.volumes).get(volume) {
            return Ok(Some(open.state()));
        }
        let dir = self.root.join(volume);
        blocking(move || read_state(&dir)).await
    }
}

/// A volume size a replica can have: whole 4 KiB blocks, and a bitmap that fits a frame.
fn check_size(size: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(4096) || size > MAX_VOLUME_SIZE {
        return Err(Error::InvalidArgument(format!(
            "volume size {size} must be a positive multiple of 4096 up to {MAX_VOLUME_SIZE}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
