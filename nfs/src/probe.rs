//! Is an NFS mount healthy? A `statvfs` of the mount, under a deadline. On a mount whose
//! server is gone a plain `stat` can block for minutes (hard mounts: until the server
//! returns), so the call runs on its own thread and the caller waits at most the deadline.
//!
//! A thread that is still stuck when the deadline passes is left to finish on its own
//! (nothing can interrupt it); while it is stuck, later probes of the same path answer
//! `Unanswered` at once instead of starting another thread, so a dead server costs one
//! thread per mount, not one per probe.
//!
//! Blocking: call it from `spawn_blocking`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::statvfs::{statvfs, Statvfs};

#[derive(Debug)]
pub enum Probe {
    /// The server answered; the file system's numbers.
    Healthy(Statvfs),
    /// ESTALE: the server no longer knows the mount's root (the export was replaced or
    /// the server lost its handles). Mounting again recovers.
    Stale,
    /// No answer within the deadline (or an earlier probe of this path is still waiting).
    Unanswered,
    /// Another error (EIO from a soft mount whose server is gone, ...).
    Failed(Errno),
}

fn stuck() -> &'static Mutex<HashSet<PathBuf>> {
    static STUCK: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    STUCK.get_or_init(Default::default)
}

/// Probes the mount at `path` within `deadline`.
pub fn probe(path: &Path, deadline: Duration) -> Probe {
    let path = path.to_path_buf();
    if !stuck()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(path.clone())
    {
        return Probe::Unanswered;
    }
    let (tx, rx) = mpsc::channel();
    let thread_path = path.clone();
    let spawned = std::thread::Builder::new()
        .name("nfs-probe".into())
        .spawn(move || {
            let result = statvfs(&thread_path);
            // The thread, not the caller, clears the mark: only when the call is really
            // over may another probe of this path start.
            stuck()
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&thread_path);
            let _ = tx.send(result);
        });
    if spawned.is_err() {
        stuck()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&path);
        return Probe::Failed(Errno::EAGAIN);
    }
    match rx.recv_timeout(deadline) {
        Ok(Ok(st)) => Probe::Healthy(st),
        Ok(Err(Errno::ESTALE)) => Probe::Stale,
        Ok(Err(errno)) => Probe::Failed(errno),
        Err(_) => Probe::Unanswered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_directory_is_healthy_and_a_missing_one_fails() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            probe(dir.path(), Duration::from_secs(5)),
            Probe::Healthy(_)
        ));
        assert!(matches!(
            probe(&dir.path().join("nope"), Duration::from_secs(5)),
            Probe::Failed(Errno::ENOENT)
        ));
        // The mark is cleared once a probe is over: the next one runs again.
        assert!(!stuck().lock().unwrap().contains(dir.path()));
    }

    #[test]
    fn a_path_already_being_probed_answers_at_once() {
        let path = PathBuf::from("/warren-test/probe-in-flight");
        stuck().lock().unwrap().insert(path.clone());
        let started = std::time::Instant::now();
        assert!(matches!(
            probe(&path, Duration::from_secs(30)),
            Probe::Unanswered
        ));
        assert!(started.elapsed() < Duration::from_secs(1));
        stuck().lock().unwrap().remove(&path);
    }
}
