//! Crash-safe small-file writes with the core's errors: the primitive is
//! `warren_durable` (shared with the replication engine); this adds JSON and maps I/O
//! failures to `Error` with the path in the message.

use std::path::Path;

use crate::error::{Error, Result};

pub use warren_durable::TMP_PREFIX;

pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    warren_durable::write_atomic(path, contents)
        .map_err(Error::io(format!("write {}", path.display())))
}

pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::Internal(format!("encode {}: {e}", path.display())))?;
    write_atomic(path, &bytes)
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(Error::io(format!("read {}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Internal(format!("decode {}: {e}", path.display())))
}

/// Makes a rename, create or remove inside `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    warren_durable::sync_dir(dir).map_err(Error::io(format!("fsync {}", dir.display())))
}

/// Removes leftovers of interrupted `write_atomic` calls in `dir`.
pub fn remove_stale_tmp_files(dir: &Path) -> Result<usize> {
    warren_durable::remove_stale_tmp_files(dir).map_err(Error::io(format!(
        "remove stale temporary files in {}",
        dir.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_and_stale_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_json_atomic(&path, &vec![1, 2, 3]).unwrap();
        write_json_atomic(&path, &vec![4]).unwrap();
        assert_eq!(read_json::<Vec<i32>>(&path).unwrap(), vec![4]);
        std::fs::write(dir.path().join(".tmp-state.json-99"), b"torn").unwrap();
        assert_eq!(remove_stale_tmp_files(dir.path()).unwrap(), 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
