//! Snapshot copies a replica service keeps, beside its replicas and never inside one (a
//! volume may be deleted while its snapshots live on):
//!
//! ```text
//! <root>/.snapshots/<name>/data            the replica's bytes when the copy was taken (sparse)
//! <root>/.snapshots/<name>/meta.json       SnapshotMeta
//! <root>/.snapshots/.taking-<name>/        a copy being made; renamed into place when whole
//! <root>/.snapshots/.removing-<name>/      a copy being deleted
//! ```
//!
//! `.snapshots` starts with '.', which no volume name may: it is never taken for a
//! replica. A copy is only ever published by one rename of a complete, synced directory,
//! so after a crash it is whole or absent; what a crash left half-done is removed when the
//! service opens its root (it holds the root's lock, so nothing else is copying then).

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use warren_durable::{sync_dir, write_atomic};

use crate::error::{Error, Result};
use crate::locks::lock;
use crate::volume::ReplicaState;

mod copy;
pub use copy::data_extents;

const DIR: &str = ".snapshots";
const TAKING: &str = ".taking-";
const REMOVING: &str = ".removing-";

/// What a service knows of one snapshot copy (`meta.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub snapshot: String,
    /// The volume it was copied from, and the replica (node) that keeps it.
    pub volume: String,
    pub replica: String,
    pub size: u64,
    /// The replica's generation and that generation's members when it was copied.
    pub gen: u64,
    pub members: Vec<String>,
    /// The replica held exactly its generation's data: closed clean, or copied through
    /// the engine with nothing in flight.
    pub clean: bool,
    /// The point in the volume's write order the copy was taken at: every copy one engine
    /// took under one hold of its membership lock names the same point.
    pub point: String,
    pub created_at_secs: i64,
    pub created_at_nanos: i32,
}

/// One copy to take: of which snapshot, at which point, and whether a copy of the same
/// name at another point is replaced.
#[derive(Debug, Clone)]
pub(crate) struct Take<'a> {
    pub name: &'a str,
    pub point: &'a str,
    pub replace: bool,
    /// Copied through a running engine with nothing in flight (else the replica's own
    /// clean flag says).
    pub through_engine: bool,
}

pub(crate) struct SnapshotStore {
    dir: PathBuf,
    /// Snapshot names being taken or deleted now: a second call for the same name is Busy.
    names: Mutex<HashSet<String>>,
    /// Volumes whose replica is being copied outside any engine: their `Open` waits.
    copying: Mutex<HashSet<String>>,
}

/// Holds a name in one of the store's sets until dropped.
pub(crate) struct Claim {
    store: Arc<SnapshotStore>,
    name: String,
    copying: bool,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let set = if self.copying {
            &self.store.copying
        } else {
            &self.store.names
        };
        lock(set).remove(&self.name);
    }
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    Error::io(format!("{what} {}", path.display()))
}

fn remove_dir(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

impl SnapshotStore {
    /// The store under `root`, with what a crash left half-done removed. The caller holds
    /// the root's lock.
    pub(crate) fn open(root: &Path) -> Result<Arc<Self>> {
        let dir = root.join(DIR);
        // Made by the first copy: a service that never takes one leaves its root as it was.
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries.collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("list", &dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TAKING) || name.starts_with(REMOVING) {
                tracing::info!(path = %entry.path().display(), "removing an unfinished snapshot copy");
                remove_dir(&entry.path())?;
            }
        }
        Ok(Arc::new(SnapshotStore {
            dir,
            names: Mutex::default(),
            copying: Mutex::default(),
        }))
    }

    /// Claims `name` for one take or delete at a time; `Busy` while another runs.
    pub(crate) fn claim_name(self: &Arc<Self>, name: &str) -> Result<Claim> {
        crate::names::check_snapshot(name)?;
        if !lock(&self.names).insert(name.to_string()) {
            return Err(Error::Busy(format!(
                "snapshot {name} is being taken or deleted; retry"
            )));
        }
        Ok(Claim {
            store: self.clone(),
            name: name.to_string(),
            copying: false,
        })
    }

    /// Marks `volume` as being copied outside an engine (its `Open` waits); `None` when it
    /// is already. The caller holds the service's table of open volumes, so no engine can
    /// open it between its check and this mark.
    pub(crate) fn begin_copy(self: &Arc<Self>, volume: &str) -> Option<Claim> {
        lock(&self.copying)
            .insert(volume.to_string())
            .then(|| Claim {
                store: self.clone(),
                name: volume.to_string(),
                copying: true,
            })
    }

    pub(crate) fn is_copying(&self, volume: &str) -> bool {
        lock(&self.copying).contains(volume)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The copy's data file, for reading (seeding a volume from it).
    pub(crate) fn data_path(&self, name: &str) -> Result<PathBuf> {
        crate::names::check_snapshot(name)?;
        Ok(self.path(name).join("data"))
    }

    /// The copy `name`, if this service keeps it.
    pub(crate) fn get(&self, name: &str) -> Result<Option<SnapshotMeta>> {
        crate::names::check_snapshot(name)?;
        let path = self.path(name).join("meta.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Internal(format!("{} is damaged: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Copies `data` (the replica described by `state`, with its I/O kept out by the
    /// caller) into the snapshot `take.name`. An existing copy of the same name is
    /// returned as it is (a retry), unless `take.replace` and it was taken at another
    /// point. Blocking; the caller holds the name's claim.
    pub(crate) fn take(
        &self,
        take: &Take<'_>,
        data: &File,
        state: &ReplicaState,
    ) -> Result<SnapshotMeta> {
        crate::names::check_snapshot(take.name)?;
        let final_dir = self.path(take.name);
        if let Some(existing) = self.get(take.name)? {
            if existing.volume != state.volume {
                return Err(Error::InvalidArgument(format!(
                    "snapshot {} is a copy of {}, not of {}",
                    take.name, existing.volume, state.volume
                )));
            }
            if !take.replace || existing.point == take.point {
                return Ok(existing);
            }
            self.remove(take.name)?;
        }
        let work = self.dir.join(format!("{TAKING}{}", take.name));
        std::fs::create_dir_all(&self.dir).map_err(io_err("create", &self.dir))?;
        remove_dir(&work)?;
        std::fs::create_dir(&work).map_err(io_err("create", &work))?;
        let made = (|| {
            let path = work.join("data");
            let copy = File::options()
                .create_new(true)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err("create", &path))?;
            let copied =
                copy::copy_data(data, &copy, state.size).map_err(io_err("copy into", &path))?;
            copy.sync_all().map_err(io_err("sync", &path))?;
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            let meta = SnapshotMeta {
                snapshot: take.name.to_string(),
                volume: state.volume.clone(),
                replica: state.replica.clone(),
                size: state.size,
                gen: state.gen,
                members: state.members.clone(),
                clean: take.through_engine || (state.clean && !state.rebuilding),
                point: take.point.to_string(),
                created_at_secs: now.as_secs() as i64,
                created_at_nanos: now.subsec_nanos() as i32,
            };
            let bytes = serde_json::to_vec_pretty(&meta)
                .map_err(|e| Error::Internal(format!("encode snapshot metadata: {e}")))?;
            let meta_path = work.join("meta.json");
            write_atomic(&meta_path, &bytes).map_err(io_err("write", &meta_path))?;
            sync_dir(&work).map_err(io_err("sync", &work))?;
            std::fs::rename(&work, &final_dir).map_err(io_err("publish", &final_dir))?;
            sync_dir(&self.dir).map_err(io_err("sync", &self.dir))?;
            tracing::info!(snapshot = take.name, volume = %state.volume, gen = state.gen, copied, "snapshot copy taken");
            Ok(meta)
        })();
        if made.is_err() {
            let _ = remove_dir(&work);
        }
        made
    }

    /// Deletes the copy `name`; a missing one is success. Blocking; the caller holds the
    /// name's claim.
    pub(crate) fn remove(&self, name: &str) -> Result<()> {
        crate::names::check_snapshot(name)?;
        let (dir, doomed) = (self.path(name), self.dir.join(format!("{REMOVING}{name}")));
        match std::fs::rename(&dir, &doomed) {
            Ok(()) => sync_dir(&self.dir).map_err(io_err("sync", &self.dir))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("rename", &dir)(e)),
        }
        remove_dir(&doomed)
    }
}
