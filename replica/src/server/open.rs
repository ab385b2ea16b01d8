//! Opening a volume for a session (an engine's `Open`): found in the table of open
//! volumes or opened into it, taken over from any other session, and never while the
//! replica is being copied into a snapshot outside an engine (the open waits for it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{OpenVolume, ReplicaService, MAX_VOLUME_SIZE};
use crate::error::{Error, Result};
use crate::locks::lock;
use crate::messages::OpenRequest;
use crate::volume::ReplicaVolume;

impl ReplicaService {
    /// Opens a volume for `session`, taking it over from any other session.
    pub(crate) async fn open(&self, request: OpenRequest, session: u64) -> Result<Arc<OpenVolume>> {
        crate::names::check_volume(&request.volume)?;
        if request.size > MAX_VOLUME_SIZE {
            return Err(Error::InvalidArgument(format!(
                "volume size {} exceeds {MAX_VOLUME_SIZE}",
                request.size
            )));
        }
        // Checked here too, not only when the files are opened: a replica already open
        // would otherwise take any size as "at least".
        if request.size == 0 || !request.size.is_multiple_of(4096) {
            return Err(Error::InvalidArgument(format!(
                "volume size {} must be a positive multiple of 4096",
                request.size
            )));
        }
        // While the replica is being copied into a snapshot outside any engine
        // (`snapshot_replica`), an open waits for the copy, a bounded time: an engine
        // never writes while a copy runs. The check and taking the volume happen under the
        // table's lock, as the copy's own check does, so neither can slip past the other.
        let deadline = std::time::Instant::now() + COPY_WAIT;
        let mut opened: Option<ReplicaVolume> = None;
        let volume = loop {
            let found = {
                let mut volumes = lock(&self.volumes);
                if self.snapshots.is_copying(&request.volume) {
                    Found::Copying
                } else if let Some(volume) = volumes.get(&request.volume) {
                    Found::Open(volume.clone())
                } else if let Some(opened) = opened.take() {
                    // Two connections may race to open it: the first one's files win.
                    Found::Open(
                        volumes
                            .entry(request.volume.clone())
                            .or_insert_with(|| self.open_volume(opened))
                            .clone(),
                    )
                } else {
                    Found::Closed
                }
            };
            match found {
                Found::Open(volume) => break volume,
                Found::Closed => {
                    let (root, replica) = (self.root.clone(), self.replica.clone());
                    let req = request.clone();
                    opened = Some(
                        tokio::task::spawn_blocking(move || {
                            ReplicaVolume::open(&root, &replica, &req.volume, req.size, req.create)
                        })
                        .await
                        .map_err(|e| Error::Internal(e.to_string()))??,
                    );
                }
                Found::Copying if std::time::Instant::now() >= deadline => {
                    return Err(Error::Busy(format!(
                        "the replica of {} is being copied into a snapshot; retry",
                        request.volume
                    )))
                }
                Found::Copying => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        // An open asks for at least `size` bytes and learns the replica's own size from
        // the reply: a grown replica is still found by an engine that knows the older
        // size (see `ReplicaVolume::open`).
        if volume.volume.size() < request.size {
            return Err(Error::InvalidArgument(format!(
                "replica of {} has {} bytes, fewer than {}",
                request.volume,
                volume.volume.size(),
                request.size
            )));
        }
        let previous = volume.session.swap(session, Ordering::AcqRel);
        if previous != 0 && previous != session {
            tracing::warn!(volume = %request.volume, "a new engine took the volume over");
        }
        Ok(volume)
    }
}

/// How long an `Open` waits for a snapshot copy of its replica before it is refused
/// (`Busy`, which an engine's start treats as "not yet" and retries): below the engines'
/// default request timeout (5 s), so the refusal, not a timeout, is what they see.
const COPY_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// What `open` found of a volume in the table.
enum Found {
    Open(Arc<OpenVolume>),
    /// Not open: its files are to be opened.
    Closed,
    /// Being copied into a snapshot.
    Copying,
}

impl ReplicaService {
    /// A replica this service opened, as the table keeps it.
    pub(super) fn open_volume(&self, volume: ReplicaVolume) -> Arc<OpenVolume> {
        Arc::new(OpenVolume {
            volume,
            session: AtomicU64::new(0),
            snapshots: self.snapshots.clone(),
        })
    }
}
