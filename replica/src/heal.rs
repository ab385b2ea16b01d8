//! Healing in the background: rebuild replicas that are not members (after a failure, a
//! restart, or a new node), and forget history once every replica is whole again.
//!
//! A rebuild runs while the volume stays online:
//! 1. Under the membership write lock (no I/O in flight): decide incremental or full from
//!    the source's and the target's bitmaps (`plan_rebuild`), tell the target it is being
//!    rebuilt at the current generation, and add it to the write fan-out. From here on it
//!    gets every new write.
//! 2. Copy each region from a member to the target, holding that region's lock
//!    exclusively: a write to the region waits, so a copy can never overwrite newer data
//!    with older. Regions of zeros are sent as discards, keeping the target sparse.
//! 3. Flush the target, then commit a new generation that lists it as a member.
//!
//! The copy is rate-limited (`rebuild_rate`); the volume's own I/O only waits for the one
//! region being copied. While it runs, its progress (bytes copied of bytes to copy) is on
//! its engine's board, which status readers see in `EngineStatus::rebuilds`
//! (`rebuild_progress.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::stream::{self, TryStreamExt};

use crate::bitmap::{regions_for, RegionBitmap};
use crate::client::ReplicaClient;
use crate::engine::{open_replica, Engine, ReplicaAddress};
use crate::error::{Error, Result};
use crate::locks::lock;
use crate::plan::{plan_rebuild, RebuildPlan};
use crate::target::BlockTarget;

mod rebuild_progress;
use rebuild_progress::OnBoard;
pub(crate) use rebuild_progress::RebuildBoard;
pub use rebuild_progress::RebuildProgress;

/// Regions copied at once: enough to keep both replicas' disks and the network busy.
const COPY_PARALLELISM: usize = 4;

pub(crate) async fn heal_loop(engine: Arc<Engine>) {
    let interval = engine.config.heal_interval;
    loop {
        tokio::select! {
            _ = engine.stopped() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if engine.status().await.failed.is_some() {
            return;
        }
        let status = engine.status().await;
        for address in engine.config.replicas.clone() {
            if status.members.contains(&address.replica) || engine.is_stopped() {
                continue;
            }
            match rebuild(&engine, &address).await {
                Ok(stats) => {
                    *lock(&engine.last_rebuild) = Some(stats);
                    tracing::info!(
                    volume = %engine.config.volume,
                    replica = %address.replica,
                    incremental = stats.incremental,
                    regions = stats.regions,
                    mib_per_s = stats.mib_per_s(),
                    "replica rebuilt"
                    )
                }
                Err(e) => tracing::debug!(
                    volume = %engine.config.volume,
                    replica = %address.replica,
                    error = %e,
                    "replica not rebuilt yet"
                ),
            }
        }
        if engine.written.load(Ordering::Acquire) && engine.idle_for() >= interval {
            engine.checkpoint_if_whole().await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildStats {
    pub incremental: bool,
    pub regions: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl RebuildStats {
    pub fn mib_per_s(&self) -> u64 {
        let secs = self.elapsed.as_secs_f64().max(1e-6);
        (self.bytes as f64 / secs / (1 << 20) as f64) as u64
    }
}

/// Rebuilds one replica; see the module comment for the steps.
pub async fn rebuild(engine: &Arc<Engine>, address: &ReplicaAddress) -> Result<RebuildStats> {
    let started = Instant::now();
    // At least the size the engine was configured with: a replica that missed a growth
    // (away while the volume grew) is still found, and grown below.
    let (target, state) = open_replica(&engine.config, address, engine.config.size, true).await?;
    let state = state.ok_or_else(|| Error::Internal("a created replica has a state".into()))?;

    // Step 1.
    let mut membership = engine.membership.write().await;
    // Read under the lock: the volume does not grow while it is held.
    let size = engine.size();
    let state = if state.size < size {
        // It must hold every byte the volume may be written at before it takes writes.
        target.grow(size).await?
    } else {
        state
    };
    let regions = regions_for(size);
    if membership
        .members
        .iter()
        .any(|m| m.replica == address.replica)
        || membership
            .rebuilding
            .iter()
            .any(|m| m.replica == address.replica)
    {
        return Err(Error::Busy(format!("{} is not absent", address.replica)));
    }
    let source = engine.primary(&membership)?.clone();
    let (since, source_bits) = source.bitmap().await?;
    let (_, target_bits) = target.bitmap().await?;
    let plan = plan_rebuild(regions, since, &source_bits, Some((&state, &target_bits)));
    let (copy, incremental) = match plan {
        RebuildPlan::Incremental(bits) => (bits, true),
        RebuildPlan::Full => (RegionBitmap::full(regions), false),
    };
    let ids = membership.member_ids();
    target
        .begin_rebuild(state.gen, membership.gen, &ids)
        .await?;
    membership.rebuilding.push(target.clone());
    engine.rebuilding_now.store(true, Ordering::Release);
    // On the board from the moment it takes writes until this function returns.
    let to_copy = copy.iter().map(|region| engine.region_span(region).1).sum();
    let progress = OnBoard::new(&engine.rebuilds, &address.replica, incremental, to_copy);
    drop(membership);
    tracing::info!(volume = %engine.config.volume, replica = %address.replica, incremental, regions = copy.count(), "rebuild started");

    let result = copy_regions(engine, &target, &copy, started, &progress).await;
    let result = match result {
        Ok(bytes) => finish(engine, &target).await.map(|_| bytes),
        Err(e) => {
            let mut membership = engine.membership.write().await;
            membership.rebuilding.retain(|r| !Arc::ptr_eq(r, &target));
            Err(e)
        }
    };
    engine.rebuilding_now.store(false, Ordering::Release);
    let bytes = result?;
    engine.checkpoint_if_whole().await;
    Ok(RebuildStats {
        incremental,
        regions: copy.count(),
        bytes,
        elapsed: started.elapsed(),
    })
}

/// Step 2: copies the marked regions, counting them on `progress`; returns the bytes
/// copied.
async fn copy_regions(
    engine: &Arc<Engine>,
    target: &Arc<ReplicaClient>,
    copy: &RegionBitmap,
    started: Instant,
    progress: &OnBoard<'_>,
) -> Result<u64> {
    let rate = engine.config.rebuild_rate;
    stream::iter(copy.iter().map(Ok::<u64, Error>))
        .map_ok(|region| {
            async move {
                let bytes = copy_region(engine, target, region).await?;
                let total = progress.copied(bytes);
                if rate > 0 {
                    // Stay at or under the rate: sleep until the bytes so far are due.
                    let due = Duration::from_secs_f64(total as f64 / rate as f64);
                    let elapsed = started.elapsed();
                    if due > elapsed {
                        tokio::time::sleep(due - elapsed).await;
                    }
                }
                if engine.is_stopped() {
                    return Err(Error::Busy("the engine is closing".into()));
                }
                Ok(())
            }
        })
        .try_buffer_unordered(COPY_PARALLELISM)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(progress.done())
}

async fn copy_region(
    engine: &Arc<Engine>,
    target: &Arc<ReplicaClient>,
    region: u64,
) -> Result<u64> {
    let (offset, len) = engine.region_span(region);
    let _exclusive = engine.lock_region_exclusive(region).await;
    loop {
        let membership = engine.membership.read().await;
        if !membership.rebuilding.iter().any(|r| Arc::ptr_eq(r, target)) {
            return Err(Error::Unavailable("the rebuild target was cut out".into()));
        }
        let gen = membership.gen;
        let source = engine.primary(&membership)?.clone();
        let data = match source.read(gen, offset, len as usize).await {
            Ok(data) => data,
            Err(e) => {
                drop(membership);
                engine.cut_out(gen, vec![(source.replica.clone(), e)]).await;
                continue; // from another member, if any is left
            }
        };
        let result = if data.iter().all(|&b| b == 0) {
            target.discard(gen, offset, len).await
        } else {
            target.write(gen, offset, data, false).await
        };
        drop(membership);
        return match result {
            Ok(()) => Ok(len),
            Err(e) => {
                engine.cut_out(gen, vec![(target.replica.clone(), e)]).await;
                Err(Error::Unavailable("rebuild target failed".into()))
            }
        };
    }
}

/// Step 3: the target holds everything; make it a member.
async fn finish(engine: &Arc<Engine>, target: &Arc<ReplicaClient>) -> Result<()> {
    let mut membership = engine.membership.write().await;
    if !membership.rebuilding.iter().any(|r| Arc::ptr_eq(r, target)) {
        return Err(Error::Unavailable("the rebuild target was cut out".into()));
    }
    let gen = membership.gen;
    target.flush(gen).await?;
    let mut ids = membership.member_ids();
    ids.push(target.replica.clone());
    let next = gen + 1;
    let all: Vec<Arc<ReplicaClient>> = membership
        .members
        .iter()
        .chain(membership.rebuilding.iter())
        .cloned()
        .collect();
    let results = join_all(all.iter().map(|r| r.commit(gen, next, &ids))).await;
    let failed: Vec<(String, Error)> = all
        .iter()
        .zip(results)
        .filter_map(|(r, result)| result.err().map(|e| (r.replica.clone(), e)))
        .collect();
    membership.gen = next;
    membership.rebuilding.retain(|r| !Arc::ptr_eq(r, target));
    membership.members.push(target.clone());
    drop(membership);
    if !failed.is_empty() {
        engine.cut_out(next, failed).await;
    }
    Ok(())
}
