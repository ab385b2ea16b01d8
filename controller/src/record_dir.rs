//! The controller's one crash-safe record store: a directory of JSON records, one file per
//! object named by its key, mirrored in memory. A record is written durably before it
//! becomes visible, and all of them are loaded at startup. The local volumes' and
//! snapshots' records (`records.rs`) and the NFS ones (`nfs.rs`) both live in one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::de::DeserializeOwned;
use serde::Serialize;
use warren_core::durable::{read_json, remove_stale_tmp_files, sync_dir, write_json_atomic};
use warren_core::ids::Key;
use warren_core::{Error, Result};

pub trait Record: Serialize + DeserializeOwned + Clone {
    fn key(&self) -> &Key;
    /// The CO's name for the object, when records are looked up by it (what makes a
    /// create idempotent by name). Names are indexed; None keeps a record out of the index.
    fn name(&self) -> Option<&str> {
        None
    }
}

pub struct RecordDir<T> {
    dir: PathBuf,
    index: Mutex<Index<T>>,
}

/// The records in key order (stable for paging), and the keys by name.
struct Index<T> {
    items: BTreeMap<Key, T>,
    names: HashMap<String, Key>,
}

impl<T: Record> Index<T> {
    fn insert(&mut self, rec: T) {
        if let Some(name) = rec.name() {
            self.names.insert(name.to_string(), rec.key().clone());
        }
        self.items.insert(rec.key().clone(), rec);
    }

    fn remove(&mut self, key: &Key) {
        if let Some(name) = self.items.remove(key).as_ref().and_then(|r| r.name()) {
            self.names.remove(name);
        }
    }
}

impl<T: Record> RecordDir<T> {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
        remove_stale_tmp_files(dir)?;
        let mut index = Index {
            items: BTreeMap::new(),
            names: HashMap::new(),
        };
        for entry in std::fs::read_dir(dir).map_err(Error::io(format!("list {}", dir.display())))? {
            let path = entry.map_err(Error::io("list records"))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                index.insert(read_json::<T>(&path)?);
            }
        }
        Ok(RecordDir {
            dir: dir.to_path_buf(),
            index: Mutex::new(index),
        })
    }

    /// The index, even if a panicking thread poisoned the lock: with `panic = "abort"` no
    /// poisoned lock is ever seen in production, and every critical section here only
    /// inserts or removes whole records.
    fn index(&self) -> MutexGuard<'_, Index<T>> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn file(&self, key: &Key) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    pub fn get(&self, key: &Key) -> Option<T> {
        self.index().items.get(key).cloned()
    }

    pub fn by_name(&self, name: &str) -> Option<T> {
        let index = self.index();
        index
            .names
            .get(name)
            .and_then(|k| index.items.get(k))
            .cloned()
    }

    /// The first record (in key order) that `matches`.
    pub fn find(&self, matches: impl Fn(&T) -> bool) -> Option<T> {
        self.index().items.values().find(|r| matches(r)).cloned()
    }

    /// All records in key order (stable for paging).
    pub fn all(&self) -> Vec<T> {
        self.index().items.values().cloned().collect()
    }

    /// Writes the record durably, then makes it visible.
    pub fn put(&self, rec: &T) -> Result<()> {
        write_json_atomic(&self.file(rec.key()), rec)?;
        self.index().insert(rec.clone());
        Ok(())
    }

    /// Removes the record durably; one already gone is not an error.
    pub fn remove(&self, key: &Key) -> Result<()> {
        let path = self.file(key);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("remove {}", path.display()))(e)),
        }
        self.index().remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Thing {
        key: Key,
        name: String,
    }

    impl Record for Thing {
        fn key(&self) -> &Key {
            &self.key
        }
        fn name(&self) -> Option<&str> {
            Some(&self.name)
        }
    }

    #[test]
    fn records_survive_reopen_and_removal_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let things = RecordDir::<Thing>::open(dir.path()).unwrap();
        let a = Thing {
            key: Key::random(),
            name: "a".into(),
        };
        let b = Thing {
            key: Key::random(),
            name: "b".into(),
        };
        things.put(&a).unwrap();
        things.put(&b).unwrap();
        things.remove(&b.key).unwrap();
        things.remove(&b.key).unwrap(); // already gone is fine
        drop(things);
        let reopened = RecordDir::<Thing>::open(dir.path()).unwrap();
        assert_eq!(reopened.all(), vec![a.clone()]);
        assert_eq!(reopened.find(|t| t.name == "a"), Some(a.clone()));
        assert_eq!(reopened.find(|t| t.name == "b"), None);
        assert_eq!(reopened.by_name("a"), Some(a.clone()));
        assert_eq!(reopened.by_name("b"), None);
        assert_eq!(reopened.get(&a.key), Some(a));
    }
}
