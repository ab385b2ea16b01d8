//! The controller's durable records of volumes and snapshots: one JSON file per object
//! under `<state-dir>/controller/`, written atomically, loaded into memory at startup.
//!
//! A record is written *before* the node is asked to act (state `Creating` / `Deleting`),
//! so after `kill -9` startup knows exactly which node operations may be half done and
//! finishes or undoes them (see `reconcile`). Names map to records, which is what makes
//! CreateVolume and CreateSnapshot idempotent by name.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use warren_core::durable::{read_json, remove_stale_tmp_files, sync_dir, write_json_atomic};
use warren_core::ids::{Key, SnapshotId, VolumeId};
use warren_core::storage::{Allocation, ContentSource, SnapshotInfo};
use warren_core::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Recorded; the node may or may not have the object yet.
    Creating,
    Ready,
    /// Being removed from its node.
    Deleting,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub id: VolumeId,
    pub name: String,
    pub capacity_bytes: u64,
    pub allocation: Allocation,
    pub source: Option<ContentSource>,
    /// Created for raw block access (no node-side file system growth).
    pub block: bool,
    /// The StorageClass's `fsType`, handed to the node in the volume context.
    #[serde(default)]
    pub fs_type: Option<String>,
    /// `backend: share`: its node serves it over NFS to the other nodes.
    #[serde(default)]
    pub shared: bool,
    /// Where its node serves it (`IP:PORT`), once created.
    #[serde(default)]
    pub share_endpoint: Option<String>,
    pub state: State,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: SnapshotId,
    pub name: String,
    pub source_volume: VolumeId,
    pub state: State,
    /// Filled in once the node has taken the snapshot.
    pub info: Option<SnapshotInfo>,
}

/// Records kept as files; the in-memory maps mirror the files exactly.
pub struct Records {
    volumes_dir: PathBuf,
    snapshots_dir: PathBuf,
    inner: Mutex<Maps>,
}

#[derive(Default)]
struct Maps {
    volumes: BTreeMap<Key, VolumeRecord>,
    volume_names: HashMap<String, Key>,
    snapshots: BTreeMap<Key, SnapshotRecord>,
    snapshot_names: HashMap<String, Key>,
}

fn load_dir<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<Vec<T>> {
    std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
    remove_stale_tmp_files(dir)?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(Error::io(format!("list {}", dir.display())))? {
        let path = entry.map_err(Error::io("list records"))?.path();
        if path.extension().is_some_and(|e| e == "json") {
            out.push(read_json(&path)?);
        }
    }
    Ok(out)
}

impl Records {
    pub fn open(state_dir: &Path) -> Result<Records> {
        let base = state_dir.join("controller");
        let volumes_dir = base.join("volumes");
        let snapshots_dir = base.join("snapshots");
        let mut maps = Maps::default();
        for rec in load_dir::<VolumeRecord>(&volumes_dir)? {
            maps.volume_names
                .insert(rec.name.clone(), rec.id.key.clone());
            maps.volumes.insert(rec.id.key.clone(), rec);
        }
        for rec in load_dir::<SnapshotRecord>(&snapshots_dir)? {
            maps.snapshot_names
                .insert(rec.name.clone(), rec.id.key.clone());
            maps.snapshots.insert(rec.id.key.clone(), rec);
        }
        Ok(Records {
            volumes_dir,
            snapshots_dir,
            inner: Mutex::new(maps),
        })
    }

    fn file(dir: &Path, key: &Key) -> PathBuf {
        dir.join(format!("{key}.json"))
    }

    pub fn volume(&self, key: &Key) -> Option<VolumeRecord> {
        self.inner.lock().unwrap().volumes.get(key).cloned()
    }

    pub fn volume_by_name(&self, name: &str) -> Option<VolumeRecord> {
        let maps = self.inner.lock().unwrap();
        maps.volume_names
            .get(name)
            .and_then(|k| maps.volumes.get(k))
            .cloned()
    }

    /// Volumes in key order (stable for paging).
    pub fn volumes(&self) -> Vec<VolumeRecord> {
        self.inner
            .lock()
            .unwrap()
            .volumes
            .values()
            .cloned()
            .collect()
    }

    /// Writes the record durably, then makes it visible.
    pub fn put_volume(&self, rec: &VolumeRecord) -> Result<()> {
        write_json_atomic(&Self::file(&self.volumes_dir, &rec.id.key), rec)?;
        let mut maps = self.inner.lock().unwrap();
        maps.volume_names
            .insert(rec.name.clone(), rec.id.key.clone());
        maps.volumes.insert(rec.id.key.clone(), rec.clone());
        Ok(())
    }

    pub fn remove_volume(&self, key: &Key) -> Result<()> {
        remove_file(&Self::file(&self.volumes_dir, key))?;
        sync_dir(&self.volumes_dir)?;
        let mut maps = self.inner.lock().unwrap();
        if let Some(rec) = maps.volumes.remove(key) {
            maps.volume_names.remove(&rec.name);
        }
        Ok(())
    }

    pub fn snapshot(&self, key: &Key) -> Option<SnapshotRecord> {
        self.inner.lock().unwrap().snapshots.get(key).cloned()
    }

    pub fn snapshot_by_name(&self, name: &str) -> Option<SnapshotRecord> {
        let maps = self.inner.lock().unwrap();
        maps.snapshot_names
            .get(name)
            .and_then(|k| maps.snapshots.get(k))
            .cloned()
    }

    pub fn snapshots(&self) -> Vec<SnapshotRecord> {
        self.inner
            .lock()
            .unwrap()
            .snapshots
            .values()
            .cloned()
            .collect()
    }

    pub fn put_snapshot(&self, rec: &SnapshotRecord) -> Result<()> {
        write_json_atomic(&Self::file(&self.snapshots_dir, &rec.id.key), rec)?;
        let mut maps = self.inner.lock().unwrap();
        maps.snapshot_names
            .insert(rec.name.clone(), rec.id.key.clone());
        maps.snapshots.insert(rec.id.key.clone(), rec.clone());
        Ok(())
    }

    pub fn remove_snapshot(&self, key: &Key) -> Result<()> {
        remove_file(&Self::file(&self.snapshots_dir, key))?;
        sync_dir(&self.snapshots_dir)?;
        let mut maps = self.inner.lock().unwrap();
        if let Some(rec) = maps.snapshots.remove(key) {
            maps.snapshot_names.remove(&rec.name);
        }
        Ok(())
    }
}

fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", path.display()))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_core::ids::Layout;

    fn record(name: &str) -> VolumeRecord {
        VolumeRecord {
            id: VolumeId::new(Layout::Image, "n1", Key::random()),
            name: name.into(),
            capacity_bytes: 1 << 30,
            allocation: Allocation::Thick,
            source: None,
            block: false,
            fs_type: None,
            shared: false,
            share_endpoint: None,
            state: State::Creating,
        }
    }

    #[test]
    fn records_survive_reopen_and_names_index() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::open(dir.path()).unwrap();
        let mut a = record("pvc-a");
        records.put_volume(&a).unwrap();
        a.state = State::Ready;
        records.put_volume(&a).unwrap();
        let b = record("pvc-b");
        records.put_volume(&b).unwrap();
        records.remove_volume(&b.id.key).unwrap();
        drop(records);

        let reopened = Records::open(dir.path()).unwrap();
        assert_eq!(reopened.volume_by_name("pvc-a"), Some(a));
        assert_eq!(reopened.volume_by_name("pvc-b"), None);
        assert_eq!(reopened.volumes().len(), 1);
    }
}
