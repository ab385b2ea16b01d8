//! Crash-safe small-file writes: write a temporary file, fsync it, rename it over the
//! target, fsync the directory. After `kill -9` or power loss a reader sees the old
//! content or the new one, never a torn file.
//!
//! Its own crate, with nothing but std, because both the core (records, metadata) and the
//! replication engine (replica metadata) need the same primitive, and the engine must not
//! depend on the core's gRPC stack. Written by hand rather than taken from a crate such as
//! `atomic-write-file`: Warren needs the fixed temporary-name prefix below, so that a
//! startup scan can remove what an interrupted write left, and that is all there is to it.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Prefix of in-flight temporary files; startup scans delete them
/// ([`remove_stale_tmp_files`]).
pub const TMP_PREFIX: &str = ".tmp-";

/// Replaces `path` with `contents`, durably: a reader never sees a torn file, and once this
/// returns the new content survives a crash. The file is created with mode 0600.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file in a directory", path.display()),
        ));
    };
    // The process id keeps two processes (a restarted one and its predecessor's last
    // write) from sharing a temporary; within a process, callers serialize per file.
    let tmp = dir.join(format!(
        "{TMP_PREFIX}{}-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Makes a rename, create or remove inside `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes what interrupted [`write_atomic`] calls left in `dir`; a missing `dir` has none.
/// Returns how many files it removed.
pub fn remove_stale_tmp_files(dir: &Path) -> io::Result<usize> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX)
            && entry.file_type().is_ok_and(|t| t.is_file())
        {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_content_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["meta.json"]);
    }

    #[test]
    fn stale_temporaries_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(format!("{TMP_PREFIX}meta.json-42")),
            b"torn",
        )
        .unwrap();
        fs::write(dir.path().join("meta.json"), b"whole").unwrap();
        fs::create_dir(dir.path().join(format!("{TMP_PREFIX}dir"))).unwrap();
        assert_eq!(remove_stale_tmp_files(dir.path()).unwrap(), 1);
        assert!(dir.path().join("meta.json").exists());
        // Directories are not write_atomic's: left for whoever made them.
        assert!(dir.path().join(format!("{TMP_PREFIX}dir")).exists());
        assert_eq!(
            remove_stale_tmp_files(&dir.path().join("missing")).unwrap(),
            0
        );
    }

    #[test]
    fn a_path_without_a_directory_is_refused() {
        let err = write_atomic(Path::new("/"), b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
