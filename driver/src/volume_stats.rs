//! Per-volume gauges on nodes: `warren_volume_capacity_bytes` (the size the volume was made
//! or expanded to) and `warren_volume_used_bytes` (the node's storage the volume takes
//! now: the blocks allocated to an image, all of it for a thick one; the blocks of the
//! files under a `dir` volume).
//!
//! They are read from the node's store when scraped, at most once per `MIN_REFRESH`, so a
//! node nobody scrapes does no work and many scrapers cost one pass. How full the file
//! system *inside* a mounted volume is remains what NodeGetVolumeStats reports (the
//! kubelet exports it as `kubelet_volume_stats_*`); these gauges are the node's side.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use warren_core::ids::{Layout, VolumeId};
use warren_core::storage::NodeStorage;
use warren_node::local::{payload, LocalStore};

/// Scrapes closer together than this see the previous reading.
const MIN_REFRESH: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeLabels {
    volume: String,
}

pub struct VolumeGauges {
    store: LocalStore,
    capacity: Family<VolumeLabels, Gauge>,
    used: Family<VolumeLabels, Gauge>,
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl VolumeGauges {
    pub fn register(registry: &mut Registry, store: LocalStore) -> VolumeGauges {
        let capacity = Family::<VolumeLabels, Gauge>::default();
        registry.register(
            "volume_capacity_bytes",
            "Provisioned size of each volume on this node",
            capacity.clone(),
        );
        let used = Family::<VolumeLabels, Gauge>::default();
        registry.register(
            "volume_used_bytes",
            "Bytes of this node's storage each volume takes",
            used.clone(),
        );
        VolumeGauges {
            store,
            capacity,
            used,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Reads every volume again unless that was done less than `MIN_REFRESH` ago.
    pub async fn refresh(&self) {
        let mut last = self.last.lock().await;
        if last.is_some_and(|at| at.elapsed() < MIN_REFRESH) {
            return;
        }
        let volumes = match self.store.list_volumes().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list volumes for metrics");
                return;
            }
        };
        let dirs = self.store.dirs().clone();
        let readings = tokio::task::spawn_blocking(move || {
            volumes
                .into_iter()
                .filter_map(|v| {
                    let path = payload(&dirs.volume(&v.id.key), v.id.layout);
                    // Gone since it was listed: leave it out.
                    let used = used_bytes(&path, &v.id)?;
                    Some((v.id.to_string(), v.capacity_bytes, used))
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(readings) = readings else { return };
        self.capacity.clear();
        self.used.clear();
        for (volume, capacity, used) in readings {
            let labels = VolumeLabels { volume };
            self.capacity.get_or_create(&labels).set(clamp(capacity));
            self.used.get_or_create(&labels).set(clamp(used));
        }
        *last = Some(Instant::now());
    }
}

fn clamp(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// Allocated bytes of a volume's image, or of the files under its directory.
fn used_bytes(path: &Path, id: &VolumeId) -> Option<u64> {
    let top = fs::symlink_metadata(path).ok()?;
    match id.layout {
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
