//! Early writeback: once a few MiB of a replica's data file are dirty, start writing them
//! to disk instead of leaving them for the kernel's flusher (which waits until 10 % of
//! memory is dirty, or 30 s) or for the engine's next flush. A flush then waits for at
//! most that much data, and the disk works while the network and the page cache do.
//!
//! The kick is `sync_file_range(SYNC_FILE_RANGE_WRITE)`: it starts writeback and waits for
//! nothing to be durable. It does not consume write-back errors (only the WAIT flags do):
//! they stay recorded on the file for the next fsync, which is what reports them to the
//! engine. It can still block while it queues I/O, so it runs on one background thread per
//! process, never on the thread that wrote (which may be the replica's network thread).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, OnceLock, Weak};

/// Dirty bytes that start a kick: small enough that a flush finds little to write, large
/// enough that random 4 KiB writes cost one syscall per 2048 of them.
pub(crate) const KICK_BYTES: u64 = 8 << 20;

/// A data file's early-writeback account.
pub(crate) struct EarlyWriteback {
    file: Weak<File>,
    unkicked: AtomicU64,
    shared: Arc<Shared>,
}

/// What the file's account shares with the kicker thread.
#[derive(Default)]
struct Shared {
    /// A kick for this file is waiting in the queue; it covers every byte written so far.
    queued: AtomicBool,
    /// Kicks the thread made that the kernel accepted.
    kicks: AtomicU64,
}

struct Kick {
    file: Weak<File>,
    shared: Arc<Shared>,
}

impl EarlyWriteback {
    pub(crate) fn new(file: &Arc<File>) -> Self {
        Self {
            file: Arc::downgrade(file),
            unkicked: AtomicU64::new(0),
            shared: Arc::default(),
        }
    }

    /// Accounts `len` bytes just written; queues a kick once enough are dirty. Never blocks.
    pub(crate) fn wrote(&self, len: u64) {
        if self.unkicked.fetch_add(len, Ordering::Relaxed) + len < KICK_BYTES {
            return;
        }
        // A queued kick has not run yet, so it will cover these bytes too.
        if self.shared.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        self.unkicked.store(0, Ordering::Relaxed);
        let kick = Kick {
            file: self.file.clone(),
            shared: self.shared.clone(),
        };
        let sent = kicker().is_some_and(|tx| tx.send(kick).is_ok());
        if !sent {
            // No kicker thread: the kernel's flusher and the next flush still write it all.
            self.shared.queued.store(false, Ordering::Release);
        }
    }

    #[cfg(test)]
    fn kicks(&self) -> u64 {
        self.shared.kicks.load(Ordering::Acquire)
    }
}

/// The process's kicker thread, started on first use; `None` if it could not be started.
fn kicker() -> Option<&'static Sender<Kick>> {
    static KICKER: OnceLock<Option<Sender<Kick>>> = OnceLock::new();
    KICKER
        .get_or_init(|| {
            let (tx, rx) = channel::<Kick>();
            std::thread::Builder::new()
                .name("warren-writeback".into())
                .spawn(move || {
                    for kick in rx {
                        // Cleared first: bytes written during the call queue the next kick.
                        kick.shared.queued.store(false, Ordering::Release);
                        let Some(file) = kick.file.upgrade() else {
                            continue; // the volume was closed meanwhile
                        };
                        // SAFETY: a plain syscall on a descriptor `file` keeps open.
                        let rc = unsafe {
                            libc::sync_file_range(
                                file.as_raw_fd(),
                                0,
                                0,
                                libc::SYNC_FILE_RANGE_WRITE,
                            )
                        };
                        if rc == 0 {
                            kick.shared.kicks.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::time::{Duration, Instant};

    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn kicks_once_enough_is_dirty_and_coalesces() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("data"))
            .unwrap();
        let file = Arc::new(file);
        let account = EarlyWriteback::new(&file);
        let mib = vec![0x5au8; 1 << 20];
        // Under the threshold: no kick.
        for i in 0..(KICK_BYTES >> 20) - 1 {
            file.write_all_at(&mib, i << 20).unwrap();
            account.wrote(1 << 20);
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(account.kicks(), 0);
        // Crossing it kicks; 56 more MiB kick at most once per 8 MiB.
        for i in (KICK_BYTES >> 20) - 1..64 {
            file.write_all_at(&mib, i << 20).unwrap();
            account.wrote(1 << 20);
        }
        wait_for("a kick", || account.kicks() >= 1);
        assert!(
            account.kicks() <= 64 / (KICK_BYTES >> 20),
            "{}",
            account.kicks()
        );
        // The data is still there and a flush still works after the kicks.
        file.sync_data().unwrap();
        let mut back = vec![0u8; 1 << 20];
        file.read_exact_at(&mut back, 63 << 20).unwrap();
        assert_eq!(back, mib);
    }

    #[test]
    fn a_kick_for_a_closed_file_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(File::create(dir.path().join("data")).unwrap());
        let account = EarlyWriteback::new(&file);
        drop(file);
        account.wrote(KICK_BYTES);
        wait_for("the queued kick to be taken", || {
            !account.shared.queued.load(Ordering::Acquire)
        });
        assert_eq!(account.kicks(), 0);
    }
}
