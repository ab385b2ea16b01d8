//! The rebuilds running in this process, and how far each has got: bytes copied of the
//! bytes it has to copy. Status readers (the node's metrics, the status object kubectl
//! shows) read it as often as they like; a rebuild only adds to one atomic counter per
//! region copied, never takes a lock for it.
//!
//! Each engine keeps its own board (`Engine::rebuilds`, seen in `EngineStatus::rebuilds`).
//! A rebuild is on it for exactly as long as it runs (its `OnBoard` entry leaves when the
//! rebuild ends, by success, failure or the engine closing), so a reader can never see a
//! finished or abandoned rebuild as running.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// The rebuilds one engine runs.
#[derive(Default)]
pub(crate) struct RebuildBoard {
    running: Mutex<Vec<Running>>,
    next_id: AtomicU64,
}

impl RebuildBoard {
    /// The rebuilds running now, oldest first.
    pub(crate) fn view(&self) -> Vec<RebuildProgress> {
        lock(&self.running).iter().map(Running::view).collect()
    }
}

/// A rebuild's place on its engine's board, for as long as it lives.
pub(crate) struct OnBoard<'a> {
    board: &'a RebuildBoard,
    id: u64,
    done: Arc<AtomicU64>,
}

impl<'a> OnBoard<'a> {
    pub(crate) fn new(
        board: &'a RebuildBoard,
        replica: &str,
        incremental: bool,
        total: u64,
    ) -> OnBoard<'a> {
        let id = board.next_id.fetch_add(1, Ordering::Relaxed);
        let done = Arc::new(AtomicU64::new(0));
        lock(&board.running).push(Running {
            id,
            replica: replica.to_string(),
            incremental,
            total,
            done: done.clone(),
            started: Instant::now(),
        });
        OnBoard { board, id, done }
    }

    /// Counts `bytes` more copied; returns the bytes copied so far.
    pub(crate) fn copied(&self, bytes: u64) -> u64 {
        self.done.fetch_add(bytes, Ordering::Relaxed) + bytes
    }

    pub(crate) fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
}

impl Drop for OnBoard<'_> {
    fn drop(&mut self) {
        lock(&self.board.running).retain(|r| r.id != self.id);
    }
}

impl crate::engine::Engine {
    /// The rebuilds this engine runs now, oldest first (also in `EngineStatus::rebuilds`).
    pub fn rebuild_progress(&self) -> Vec<RebuildProgress> {
        self.rebuilds.view()
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
