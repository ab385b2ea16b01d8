//! A directory of JSON records, one file per object named by its key, mirrored in memory:
//! written atomically before they become visible, loaded at startup. The NFS volumes'
//! and snapshots' records use it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;
use warren_core::durable::{read_json, remove_stale_tmp_files, sync_dir, write_json_atomic};
use warren_core::ids::Key;
use warren_core::{Error, Result};

pub trait Record: Serialize + DeserializeOwned + Clone {
    fn key(&self) -> &Key;
}

pub struct RecordDir<T> {
    dir: PathBuf,
    items: Mutex<BTreeMap<Key, T>>,
}

impl<T: Record> RecordDir<T> {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
        remove_stale_tmp_files(dir)?;
        let mut items = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(Error::io(format!("list {}", dir.display())))? {
            let path = entry.map_err(Error::io("list records"))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let rec: T = read_json(&path)?;
                items.insert(rec.key().clone(), rec);
            }
        }
        Ok(RecordDir {
            dir: dir.to_path_buf(),
            items: Mutex::new(items),
        })
    }

    fn file(&self, key: &Key) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The first record (in key order) that `matches`.
    pub fn find(&self, matches: impl Fn(&T) -> bool) -> Option<T> {
        self.items
            .lock()
            .unwrap()
            .values()
            .find(|r| matches(r))
            .cloned()
    }

    /// All records in key order (stable for paging).
    pub fn all(&self) -> Vec<T> {
        self.items.lock().unwrap().values().cloned().collect()
    }

    /// Writes the record durably, then makes it visible.
    pub fn put(&self, rec: &T) -> Result<()> {
        write_json_atomic(&self.file(rec.key()), rec)?;
        self.items
            .lock()
            .unwrap()
            .insert(rec.key().clone(), rec.clone());
        Ok(())
    }

    pub fn remove(&self, key: &Key) -> Result<()> {
        let path = self.file(key);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("remove {}", path.display()))(e)),
        }
        self.items.lock().unwrap().remove(key);
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
        assert_eq!(reopened.find(|t| t.name == "a"), Some(a));
        assert_eq!(reopened.find(|t| t.name == "b"), None);
    }
}
