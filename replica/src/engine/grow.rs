//! Growing a volume while its engine serves it (online expansion). The controller grows
//! every replica first (`ReplicaService::grow_replica`); the engine is then told, asks
//! its replicas what they hold, and serves that much. It never serves more than every
//! member and rebuild target holds, so no write can land beyond the end of a replica,
//! and a replica that holds less (the controller has not reached it yet) keeps the
//! volume at its size until it has grown too. A node asked for more than the replicas
//! hold grows them itself, through the engine (`Engine::grow`), as a node grows an image
//! volume's file when the CO calls it alone.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::future::join_all;

use super::Engine;
use crate::client::ReplicaClient;
use crate::error::{Error, Result};
use crate::server::MAX_VOLUME_SIZE;
use crate::target::BlockTarget;

/// The size a running engine may serve once its replicas report `sizes`: the smallest of
/// them, and never less than it serves already (`current`): a volume never shrinks.
pub(crate) fn grown_size(current: u64, sizes: &[u64]) -> u64 {
    sizes.iter().copied().min().unwrap_or(current).max(current)
}

impl Engine {
    /// Raises the size served to what every member and rebuild target holds now, and
    /// returns the size served afterwards. Idempotent. The frontend is the caller's to
    /// tell (a block device learns its new size from its frontend, not from here).
    pub async fn grow_to_replicas(&self) -> Result<u64> {
        self.grow_replicas(None).await
    }

    /// Grows every member and rebuild target to `size` bytes first (through this
    /// engine's sessions, so a fenced engine cannot), then serves it: what the node does
    /// when asked for more than the replicas hold (a CO that calls NodeExpandVolume
    /// without ControllerExpandVolume). A replica that is not reached now is grown when
    /// it is rebuilt (`heal.rs`). Returns the size served afterwards.
    pub async fn grow(&self, size: u64) -> Result<u64> {
        if size == 0 || !size.is_multiple_of(4096) || size > MAX_VOLUME_SIZE {
            return Err(Error::InvalidArgument(format!(
                "volume size {size} must be a positive multiple of 4096 up to {MAX_VOLUME_SIZE}"
            )));
        }
        self.grow_replicas(Some(size)).await
    }

    async fn grow_replicas(&self, to: Option<u64>) -> Result<u64> {
        self.check_failed()?;
        // Exclusive: no replica joins or leaves between the question and the new size.
        let membership = self.membership.write().await;
        self.primary(&membership)?;
        let replicas: Vec<Arc<ReplicaClient>> = membership
            .members
            .iter()
            .chain(membership.rebuilding.iter())
            .cloned()
            .collect();
        let states = match to {
            Some(size) if size > self.size() => {
                join_all(replicas.iter().map(|r| r.grow(size))).await
            }
            _ => join_all(replicas.iter().map(|r| r.state())).await,
        };
        let mut sizes = Vec::with_capacity(states.len());
        for (replica, state) in replicas.iter().zip(states) {
            match state {
                Ok(state) => sizes.push(state.size),
                Err(e) => {
                    return Err(Error::Unavailable(format!(
                        "replica {} of {} did not grow or report its size: {e}",
                        replica.replica, self.config.volume
                    )))
                }
            }
        }
        let current = self.size();
        let size = grown_size(current, &sizes);
        if size > current {
            self.size.store(size, Ordering::Release);
            tracing::info!(volume = %self.config.volume, from = current, to = size, "volume grown");
        }
        drop(membership);
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::grown_size;

    #[test]
    fn grows_to_what_every_replica_holds_and_never_shrinks() {
        assert_eq!(grown_size(4, &[8, 8]), 8);
        assert_eq!(grown_size(4, &[8, 6]), 6);
        assert_eq!(grown_size(4, &[4, 8]), 4);
        assert_eq!(grown_size(8, &[4]), 8);
        assert_eq!(grown_size(4, &[]), 4);
    }
}
