//! One replica of one volume, on the replica's node: a sparse data file, its metadata, and
//! its region bitmap.
//!
//! ```text
//! <root>/<volume>/data         the volume's bytes (sparse)
//! <root>/<volume>/meta.json    generation, members, sync state (written atomically)
//! <root>/<volume>/bitmap       regions written since generation `since` (1 bit per MiB)
//! ```
//!
//! Rules enforced here (the engine's side is in `plan.rs` and `engine.rs`):
//! - Reads, writes, flushes and discards carry a generation and are refused (`Fenced`)
//!   unless it is this replica's current generation: an engine that was replaced, or a
//!   replica that was cut out and not told, can never mix old and new data.
//! - A generation only moves forward, by compare-and-set (`commit`, `begin_rebuild`).
//! - A region's bit is on disk (fdatasync'd) before the first byte of a write to it is:
//!   after any crash, every region that may differ from another replica is marked.
//! - `since` is raised before the bitmap is cleared, so the bitmap never claims more
//!   history than it holds.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use warren_durable::write_atomic;

use crate::bitmap::{regions_for, regions_of, RegionBitmap};
use crate::error::{Error, Result};
use crate::locks::{lock, read, write};
use crate::target::check_range;
use crate::writeback::EarlyWriteback;

/// What a replica knows of its volume; also the engine's view of it (`GetState`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaState {
    /// This replica's id (its node).
    pub replica: String,
    pub volume: String,
    pub size: u64,
    /// The generation this replica last accepted. 0: never part of the volume.
    pub gen: u64,
    /// The replicas holding the volume's data in generation `gen`, as the engine that
    /// committed it decided. Every replica told of `gen` got the same list.
    pub members: Vec<String>,
    /// The last generation in which this replica was a full, in-sync member.
    pub synced_gen: u64,
    /// Being rebuilt: takes writes, but holds incomplete data.
    pub rebuilding: bool,
    /// The bitmap covers every write at generations >= `since`.
    pub since: u64,
    /// The last engine closed the volume cleanly: nothing was in flight.
    pub clean: bool,
}

impl ReplicaState {
    /// Holds all of generation `gen`'s acknowledged data.
    pub fn in_sync(&self) -> bool {
        self.gen > 0 && !self.rebuilding && self.members.contains(&self.replica)
    }
}

/// Regions marked ahead of a sequential write (see `mark`): at most this many more regions
/// than were written are copied by a resync or an incremental rebuild, per stream.
pub const MARK_AHEAD: u64 = 8;

pub struct ReplicaVolume {
    dir: PathBuf,
    data: Arc<File>,
    bitmap_file: File,
    /// Replaced whole (under the state's write lock) only when the volume grows.
    bitmap: RwLock<RegionBitmap>,
    /// Held shared by I/O across its generation check and the I/O itself, exclusively by
    /// generation changes: no I/O of an old generation lands after a new one is accepted.
    state: RwLock<ReplicaState>,
    /// Serializes writes of the bitmap file.
    bitmap_write: Mutex<()>,
    /// Whether the file system takes buffered `RWF_NOWAIT` writes (xfs and btrfs do; ext4
    /// and tmpfs refuse them with EOPNOTSUPP): learnt on the first try, so a refusing file
    /// system costs one wasted syscall, not one per write.
    nowait_writes: AtomicBool,
    /// Starts writing dirty data early, so a flush finds little left (writeback.rs).
    writeback: EarlyWriteback,
}

/// `meta.json`'s bytes. Strings, numbers and lists always encode; the error is only
/// passed on so that no path here can panic.
fn encode_state(state: &ReplicaState) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(state)
        .map_err(|e| Error::Internal(format!("encode replica state: {e}")))
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    Error::io(format!("{what} {}", path.display()))
}

impl ReplicaVolume {
    /// Opens the replica of `volume` under `root`, creating an empty one of `size` bytes
    /// when `create`. An existing replica is opened at its own size, which must be at
    /// least `size`: a volume grows (`grow`) but never shrinks, so a caller that knows an
    /// older size still finds it, and one that expects more than is there is refused.
    pub fn open(root: &Path, replica: &str, volume: &str, size: u64, create: bool) -> Result<Self> {
        crate::names::check_volume(volume)?;
        if size == 0 || !size.is_multiple_of(4096) {
            return Err(Error::InvalidArgument(format!(
                "volume size {size} must be a positive multiple of 4096"
            )));
        }
        let dir = root.join(volume);
        let meta_path = dir.join("meta.json");
        let state = match std::fs::read(&meta_path) {
            Ok(bytes) => {
                let state: ReplicaState = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Internal(format!("{} is damaged: {e}", meta_path.display()))
                })?;
                if state.size < size {
                    return Err(Error::InvalidArgument(format!(
                        "replica of {volume} has {} bytes, fewer than {size}",
                        state.size
                    )));
                }
                state
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !create {
                    return Err(Error::NotFound(format!(
                        "no replica of {volume} on {replica}"
                    )));
                }
                Self::create_files(&dir, replica, volume, size)?
            }
            Err(e) => return Err(io_err("read", &meta_path)(e)),
        };
        let data_path = dir.join("data");
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&data_path)
            .map_err(io_err("open", &data_path))?;
        let bitmap_path = dir.join("bitmap");
        let bitmap_file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&bitmap_path)
            .map_err(io_err("open", &bitmap_path))?;
        let raw = std::fs::read(&bitmap_path).map_err(io_err("read", &bitmap_path))?;
        let bitmap = RegionBitmap::from_bytes(regions_for(state.size), &raw);
        let data = Arc::new(data);
        Ok(Self {
            dir,
            writeback: EarlyWriteback::new(&data),
            data,
            bitmap_file,
            bitmap: RwLock::new(bitmap),
            state: RwLock::new(state),
            bitmap_write: Mutex::new(()),
            nowait_writes: AtomicBool::new(true),
        })
    }

    /// Data and bitmap first, metadata last: a directory without meta.json is an
    /// unfinished creation and is simply made again.
    fn create_files(dir: &Path, replica: &str, volume: &str, size: u64) -> Result<ReplicaState> {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let data_path = dir.join("data");
        let data = File::create(&data_path).map_err(io_err("create", &data_path))?;
        data.set_len(size).map_err(io_err("size", &data_path))?;
        data.sync_all().map_err(io_err("sync", &data_path))?;
        let bitmap_path = dir.join("bitmap");
        write_atomic(
            &bitmap_path,
            &vec![0u8; regions_for(size).div_ceil(8) as usize],
        )
        .map_err(io_err("write", &bitmap_path))?;
        let state = ReplicaState {
            replica: replica.to_string(),
            volume: volume.to_string(),
            size,
            gen: 0,
            members: Vec::new(),
            synced_gen: 0,
            rebuilding: false,
            since: 0,
            clean: true,
        };
        write_atomic(&dir.join("meta.json"), &encode_state(&state)?)
            .map_err(io_err("write", &dir.join("meta.json")))?;
        Ok(state)
    }

    pub fn state(&self) -> ReplicaState {
        read(&self.state).clone()
    }

    pub fn size(&self) -> u64 {
        read(&self.state).size
    }

    fn save(&self, state: &ReplicaState) -> Result<()> {
        let path = self.dir.join("meta.json");
        write_atomic(&path, &encode_state(state)?).map_err(io_err("write", &path))
    }

    /// Moves to generation `gen` with `members`, if this replica is still at `expect`.
    /// Being listed makes this replica in sync (the engine lists only replicas that hold
    /// all data); not being listed while not rebuilding leaves it out.
    pub fn commit(&self, expect: u64, gen: u64, members: Vec<String>) -> Result<ReplicaState> {
        let mut state = write(&self.state);
        if state.gen == gen && state.members == members {
            return Ok(state.clone()); // a retried commit
        }
        if state.gen != expect || gen <= state.gen {
            return Err(Error::Fenced(format!(
                "replica {} of {} is at generation {}, not {expect} (asked to move to {gen})",
                state.replica, state.volume, state.gen
            )));
        }
        let mut next = state.clone();
        next.gen = gen;
        next.clean = false;
        if members.contains(&next.replica) {
            next.rebuilding = false;
            next.synced_gen = gen;
        }
        next.members = members;
        self.save(&next)?;
        *state = next;
        Ok(state.clone())
    }

    /// Starts a rebuild of this replica at generation `gen`: from now on it takes the
    /// volume's writes, but is not in sync (and never a source) until a commit lists it.
    pub fn begin_rebuild(
        &self,
        expect: u64,
        gen: u64,
        members: Vec<String>,
    ) -> Result<ReplicaState> {
        let mut state = write(&self.state);
        if state.gen != expect || gen < state.gen {
            return Err(Error::Fenced(format!(
                "replica {} of {} is at generation {}, not {expect}",
                state.replica, state.volume, state.gen
            )));
        }
        if members.contains(&state.replica) {
            return Err(Error::InvalidArgument(
                "a replica being rebuilt cannot be a member".into(),
            ));
        }
        let mut next = state.clone();
        next.gen = gen;
        next.members = members;
        next.rebuilding = true;
        next.clean = false;
        self.save(&next)?;
        *state = next;
        Ok(state.clone())
    }

    /// Forgets history up to `gen`: only when every replica of the volume is in sync at
    /// `gen` and no write is in flight (the engine guarantees both).
    pub fn checkpoint(&self, gen: u64) -> Result<()> {
        let mut state = write(&self.state);
        self.check_gen(&state, gen)?;
        if !state.in_sync() {
            return Err(Error::InvalidArgument(
                "only an in-sync replica can forget its history".into(),
            ));
        }
        let mut next = state.clone();
        next.since = gen;
        self.save(&next)?; // raise `since` first (see the module comment)
        *state = next;
        read(&self.bitmap).clear_all();
        self.write_bitmap()
    }

    /// The engine closed the volume after a flush: nothing is in flight.
    pub fn close_clean(&self, gen: u64) -> Result<()> {
        let mut state = write(&self.state);
        self.check_gen(&state, gen)?;
        self.data.sync_data().map_err(io_err("sync", &self.dir))?;
        let mut next = state.clone();
        next.clean = true;
        self.save(&next)?;
        *state = next;
        Ok(())
    }

    fn check_gen(&self, state: &ReplicaState, gen: u64) -> Result<()> {
        if gen != state.gen || gen == 0 {
            return Err(Error::Fenced(format!(
                "replica {} of {} is at generation {}, the request at {gen}",
                state.replica, state.volume, state.gen
            )));
        }
        Ok(())
    }

    /// Marks the regions of a coming write; the bits are durable before it returns.
    ///
    /// A bit is set in memory only after it is on disk, so a writer that finds its
    /// regions already set (here, or on the non-blocking path) never races ahead of
    /// another writer's bitmap sync: an acknowledged write is always covered by a
    /// durable bit.
    fn mark(&self, offset: u64, len: u64) -> Result<()> {
        let regions = regions_of(offset, len);
        let bitmap = read(&self.bitmap);
        if regions.clone().all(|r| bitmap.test(r)) {
            return Ok(());
        }
        let _guard = lock(&self.bitmap_write);
        if regions.clone().all(|r| bitmap.test(r)) {
            return Ok(()); // another writer made them durable while we waited
        }
        // A write that continues a marked region into unmarked ones is most likely part of
        // a sequential stream: the regions ahead of it are marked with it, in the same
        // sync, so the stream waits for one bitmap sync per MARK_AHEAD regions instead of
        // one per region. Marking more than was written only makes a resync copy more.
        let ahead = if regions.start > 0 && bitmap.test(regions.start - 1) {
            MARK_AHEAD
        } else {
            0
        };
        let end = (regions.end + ahead).min(bitmap.regions());
        let fresh: Vec<u64> = (regions.start..end).filter(|&r| !bitmap.test(r)).collect();
        let mut bytes = bitmap.to_bytes();
        for &r in &fresh {
            bytes[(r / 8) as usize] |= 1 << (r % 8);
        }
        self.write_bitmap_bytes(&bytes)?;
        for r in fresh {
            bitmap.set(r);
        }
        Ok(())
    }

    fn write_bitmap(&self) -> Result<()> {
        // The same order as `mark`: the bitmap, then the file's lock.
        let bitmap = read(&self.bitmap);
        let _guard = lock(&self.bitmap_write);
        self.write_bitmap_bytes(&bitmap.to_bytes())
    }

    fn write_bitmap_bytes(&self, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join("bitmap");
        self.bitmap_file
            .write_all_at(bytes, 0)
            .map_err(io_err("write", &path))?;
        self.bitmap_file.sync_data().map_err(io_err("sync", &path))
    }

    pub fn bitmap(&self) -> (u64, Vec<u8>) {
        let state = read(&self.state);
        (state.since, read(&self.bitmap).to_bytes())
    }

    pub fn read(&self, gen: u64, offset: u64, len: usize) -> Result<Bytes> {
        let state = read(&self.state);
        self.check_gen(&state, gen)?;
        check_range(state.size, offset, len as u64)?;
        let mut buf = vec![0u8; len];
        self.data
            .read_exact_at(&mut buf, offset)
            .map_err(io_err("read", &self.dir))?;
        Ok(Bytes::from(buf))
    }

    /// A read the page cache can answer without blocking (`preadv2(RWF_NOWAIT)`), so the
    /// service can answer it on its network thread instead of handing it to the blocking
    /// pool. `None`: it would block (or failed in a way the blocking path will report).
    pub fn try_read_nowait(&self, gen: u64, offset: u64, len: usize) -> Option<Result<Bytes>> {
        let state = self.state.try_read().ok()?;
        if let Err(e) = self
            .check_gen(&state, gen)
            .and_then(|_| check_range(state.size, offset, len as u64))
        {
            return Some(Err(e));
        }
        crate::nowait::read(&self.data, offset, len).map(Ok)
    }

    /// A write the page cache can take without blocking (`pwritev2(RWF_NOWAIT)`) into
    /// regions already marked (marking a new region needs an fdatasync). `None`: it would
    /// block; the caller writes through the blocking path (rewriting any prefix written
    /// here with the same bytes).
    pub fn try_write_nowait(&self, gen: u64, offset: u64, data: &[u8]) -> Option<Result<()>> {
        let state = self.state.try_read().ok()?;
        if let Err(e) = self
            .check_gen(&state, gen)
            .and_then(|_| check_range(state.size, offset, data.len() as u64))
        {
            return Some(Err(e));
        }
        if !self.nowait_writes.load(Ordering::Relaxed) || {
            let bitmap = read(&self.bitmap);
            regions_of(offset, data.len() as u64).any(|r| !bitmap.test(r))
        } {
            return None;
        }
        match crate::nowait::write(&self.data, offset, data) {
            crate::nowait::Write::Done => {
                self.writeback.wrote(data.len() as u64);
                Some(Ok(()))
            }
            crate::nowait::Write::WouldBlock => None,
            crate::nowait::Write::Unsupported => {
                self.nowait_writes.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    pub fn write(&self, gen: u64, offset: u64, data: &[u8], fua: bool) -> Result<()> {
        let state = read(&self.state);
        self.check_gen(&state, gen)?;
        check_range(state.size, offset, data.len() as u64)?;
        self.mark(offset, data.len() as u64)?;
        self.data
            .write_all_at(data, offset)
            .map_err(io_err("write", &self.dir))?;
        self.writeback.wrote(data.len() as u64);
        if fua {
            self.data.sync_data().map_err(io_err("sync", &self.dir))?;
        }
        Ok(())
    }

    pub fn discard(&self, gen: u64, offset: u64, len: u64) -> Result<()> {
        let state = read(&self.state);
        self.check_gen(&state, gen)?;
        check_range(state.size, offset, len)?;
        self.mark(offset, len)?;
        crate::sparse::punch_hole(&self.data, offset, len).map_err(io_err("discard", &self.dir))
    }

    pub fn flush(&self, gen: u64) -> Result<()> {
        let state = read(&self.state);
        self.check_gen(&state, gen)?;
        self.data.sync_data().map_err(io_err("sync", &self.dir))
    }
}

mod grow;
mod snapshot;

#[cfg(test)]
mod tests;
