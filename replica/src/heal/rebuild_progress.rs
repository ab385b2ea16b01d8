//! The rebuilds running in this process, and how far each has got: bytes copied of the
//! bytes it has to copy. Status readers (the node's metrics, the status object kubectl
//! shows) read it as often as they like; a rebuild only adds to one atomic counter per
//! region copied, never takes a lock for it.
//!
//! Why a board of its own rather than a field of the engine: a rebuild registers itself
//! for exactly as long as it runs (its `OnBoard` entry leaves when the rebuild ends, by
//! success, failure or the engine closing), so a reader can never see a finished or
//! abandoned rebuild as running. It is looked up by engine (`Engine::rebuild_progress`)
//! or by volume name (`rebuilds_in_progress`, for readers that see a volume's status but
//! not its engine).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::engine::Engine;
use crate::locks::lock;

/// One rebuild in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildProgress {
    /// The replica being rebuilt (its node name).
    pub replica: String,
    /// Only the regions it missed (true), or everything (a full rebuild).
    pub incremental: bool,
    /// Bytes copied so far.
    pub bytes_done: u64,
    /// Bytes this rebuild has to copy in all.
    pub bytes_total: u64,
    /// Since it started copying.
    pub elapsed: Duration,
}

impl RebuildProgress {
    /// The copy rate so far, in bytes per second (0 before the first second's worth).
    pub fn bytes_per_second(&self) -> u64 {
        let secs = self.elapsed.as_secs_f64();
        if secs < 1e-3 {
            return 0;
        }
        (self.bytes_done as f64 / secs) as u64
    }
}

struct Running {
    id: u64,
    /// The engine's address: which engine the rebuild belongs to (the entry holds no
    /// reference, and leaves before the rebuild lets its engine go).
    engine: usize,
    volume: String,
    replica: String,
    incremental: bool,
    total: u64,
    done: Arc<AtomicU64>,
    started: Instant,
}

impl Running {
    fn view(&self) -> RebuildProgress {
        RebuildProgress {
            replica: self.replica.clone(),
            incremental: self.incremental,
            bytes_done: self.done.load(Ordering::Relaxed),
            bytes_total: self.total,
            elapsed: self.started.elapsed(),
        }
    }
}

static BOARD: Mutex<Vec<Running>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn engine_key(engine: &Engine) -> usize {
    std::ptr::from_ref(engine) as usize
}

/// A rebuild's place on the board, for as long as it lives.
pub(crate) struct OnBoard {
    id: u64,
    done: Arc<AtomicU64>,
}

impl OnBoard {
    pub(crate) fn new(
        engine: &Arc<Engine>,
        replica: &str,
        incremental: bool,
        total: u64,
    ) -> OnBoard {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let done = Arc::new(AtomicU64::new(0));
        lock(&BOARD).push(Running {
            id,
            engine: engine_key(engine),
            volume: engine.config.volume.clone(),
            replica: replica.to_string(),
            incremental,
            total,
            done: done.clone(),
            started: Instant::now(),
        });
        OnBoard { id, done }
    }

    /// Counts `bytes` more copied; returns the bytes copied so far.
    pub(crate) fn copied(&self, bytes: u64) -> u64 {
        self.done.fetch_add(bytes, Ordering::Relaxed) + bytes
    }

    pub(crate) fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
}

impl Drop for OnBoard {
    fn drop(&mut self) {
        lock(&BOARD).retain(|r| r.id != self.id);
    }
}

/// The rebuilds running now for the volume named `volume` (its engine's
/// `EngineConfig::volume`), oldest first.
pub fn rebuilds_in_progress(volume: &str) -> Vec<RebuildProgress> {
    lock(&BOARD)
        .iter()
        .filter(|r| r.volume == volume)
        .map(Running::view)
        .collect()
}

impl Engine {
    /// The rebuilds this engine runs now, oldest first.
    pub fn rebuild_progress(&self) -> Vec<RebuildProgress> {
        let key = engine_key(self);
        lock(&BOARD)
            .iter()
            .filter(|r| r.engine == key)
            .map(Running::view)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_bytes_over_elapsed_and_zero_at_the_start() {
        let mut p = RebuildProgress {
            replica: "r1".into(),
            incremental: false,
            bytes_done: 64 << 20,
            bytes_total: 128 << 20,
            elapsed: Duration::from_secs(4),
        };
        assert_eq!(p.bytes_per_second(), 16 << 20);
        p.elapsed = Duration::ZERO;
        assert_eq!(p.bytes_per_second(), 0);
    }
}
