//! How much of this node's storage each volume takes: the blocks allocated to an image
//! (all of it for a thick one), or the blocks of the files under a `dir` volume. Read by
//! the binary's per-volume metrics; how full the file system *inside* a mounted volume is
//! remains what NodeGetVolumeStats reports.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use warren_core::ids::{Layout, VolumeId};
use warren_core::storage::NodeStorage;
use warren_core::Error as CoreError;

use super::meta::payload;
use super::store::LocalStore;
use crate::error::Result;

/// One volume's size as provisioned and the node storage it takes now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeUsage {
    pub id: VolumeId,
    /// The size the volume was made or expanded to.
    pub capacity_bytes: u64,
    /// Bytes of this node's storage the volume takes.
    pub used_bytes: u64,
}

/// Every volume this node holds, with its capacity and the storage it takes. A volume
/// removed between listing and reading is left out.
pub async fn volume_usage(store: &LocalStore) -> Result<Vec<VolumeUsage>> {
    let volumes = store.list_volumes().await?;
    let dirs = store.dirs().clone();
    let usage = tokio::task::spawn_blocking(move || {
        volumes
            .into_iter()
            .filter_map(|v| {
                let path = payload(&dirs.volume(&v.id.key), v.id.layout);
                // Gone since it was listed: leave it out.
                let used_bytes = used_bytes(&path, v.id.layout)?;
                Some(VolumeUsage {
                    id: v.id,
                    capacity_bytes: v.capacity_bytes,
                    used_bytes,
                })
            })
            .collect()
    })
    .await
    .map_err(|e| CoreError::Internal(format!("volume usage task failed: {e}")))?;
    Ok(usage)
}

/// Allocated bytes of a volume's image, or of the files under its directory; None when
/// the payload is not there.
fn used_bytes(path: &Path, layout: Layout) -> Option<u64> {
    let top = fs::symlink_metadata(path).ok()?;
    match layout {
        Layout::Image => Some(top.blocks() * 512),
        Layout::Dir => Some(tree_bytes(path, top.dev())),
    }
}

/// Like `du -sx`: symlinks are not followed, other file systems mounted inside are not
/// entered, and a file with several hard links counts once.
fn tree_bytes(root: &Path, dev: u64) -> u64 {
    let mut total = 0;
    let mut linked = HashSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(meta) = fs::symlink_metadata(&dir) else {
            continue;
        };
        total += meta.blocks() * 512;
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.dev() != dev {
                continue;
            }
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.nlink() < 2 || linked.insert(meta.ino()) {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_bytes_counts_files_once_and_skips_symlink_targets() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/file"), vec![1u8; 256 * 1024]).unwrap();
        fs::hard_link(root.join("a/b/file"), root.join("a/link")).unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, vec![1u8; 1024 * 1024]).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("to-outside")).unwrap();
        let dev = fs::metadata(&root).unwrap().dev();
        let total = tree_bytes(&root, dev);
        // The 256 KiB file once (not twice, not the 1 MiB outside), plus a few blocks.
        assert!(total >= 256 * 1024, "{total}");
        assert!(total < 512 * 1024, "{total}");
    }
}
