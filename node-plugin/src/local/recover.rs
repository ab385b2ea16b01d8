//! Opening a storage root after a crash: what an interrupted operation left is finished.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::payload;
use super::remove::remove_object_dir;
use super::store::{io_err, Inner};
use crate::error::Result;
use crate::loopdev::Attached;
use crate::{freeze, mountinfo};
use warren_core::ids::Layout;

impl Inner {
    /// Detaches loop devices no volume owns, removes half-built objects (`.creating/`) and
    /// half-deleted ones (`.trash/`), and thaws file systems of this store's images that a
    /// crash left frozen.
    pub(super) fn recover(&self) -> Result<()> {
        let images = self.live_images()?;
        let attached = self.devices.attached()?;
        self.detach_orphans(&attached, &images)?;
        for dir in [self.dirs.creating(), self.dirs.trash()] {
            for entry in fs::read_dir(&dir).map_err(io_err(format!("list {}", dir.display())))? {
                let path = entry.map_err(io_err("list"))?.path();
                tracing::info!(path = %path.display(), "removing leftover of an interrupted operation");
                remove_object_dir(&path)?;
            }
        }
        // A crash during a snapshot copy would leave the volume's file system frozen.
        // (`attached` still lists the orphans detached above: none backs a live image.)
        for entry in mountinfo::read()? {
            let ours = attached.iter().any(|a| {
                Path::new(&entry.source) == a.device
                    && images.contains(&(a.backing_dev, a.backing_inode))
            });
            if ours {
                freeze::thaw(&entry.mount_point)?;
            }
        }
        Ok(())
    }

    /// The (device, inode) of every volume's image: what loop devices may rightly back.
    fn live_images(&self) -> Result<HashSet<(u64, u64)>> {
        let dir = self.dirs.volumes();
        let mut images = HashSet::new();
        for entry in fs::read_dir(&dir).map_err(io_err(format!("list {}", dir.display())))? {
            let path = payload(&entry.map_err(io_err("list"))?.path(), Layout::Image);
            if let Ok(meta) = fs::metadata(&path) {
                images.insert((meta.dev(), meta.ino()));
            }
        }
        Ok(images)
    }

    /// Loop devices left on images of this store that no volume has any more: deleted
    /// while attached (the device was not seen, or was still open), or a volume trashed
    /// mid-delete. Detaching an open device only marks it to go on last close, so nothing
    /// in use is cut off. A device whose path the kernel can no longer show under this root
    /// (attached from a mount namespace that is gone) is left alone: it cannot be told
    /// from another store's on the same file system.
    fn detach_orphans(&self, attached: &[Attached], images: &HashSet<(u64, u64)>) -> Result<()> {
        let root = fs::canonicalize(&self.dirs.root)
            .map_err(io_err(format!("resolve {}", self.dirs.root.display())))?;
        for orphan in attached.iter().filter(|a| is_orphan(a, &root, images)) {
            tracing::warn!(
                device = %orphan.device.display(),
                backing = orphan.backing_path,
                "detaching a loop device whose image no volume has"
            );
            self.devices.detach_device(&orphan.device)?;
        }
        Ok(())
    }
}

/// Whether a loop device backs what was an image of the store at `root` and is no
/// volume's image now: its file is `<root>/volumes|.trash|.creating/<name>/disk.img`
/// (perhaps `(deleted)`), and its inode is not a live volume's.
fn is_orphan(a: &Attached, root: &Path, images: &HashSet<(u64, u64)>) -> bool {
    if images.contains(&(a.backing_dev, a.backing_inode)) {
        return false;
    }
    let path = Path::new(a.backing_path.trim_end_matches(" (deleted)"));
    let Ok(inside) = path.strip_prefix(root) else {
        return false;
    };
    let parts: Vec<_> = inside.iter().collect();
    matches!(parts[..], [place, _object, file]
        if file == "disk.img" && [".trash", ".creating", "volumes"].iter().any(|p| place == *p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn attached(path: &str, dev: u64, inode: u64) -> Attached {
        Attached {
            device: PathBuf::from("/dev/loop9"),
            backing_dev: dev,
            backing_inode: inode,
            backing_path: path.into(),
        }
    }

    #[test]
    fn only_this_stores_images_that_no_volume_has_are_orphans() {
        let live = HashSet::from([(5, 100)]);
        let root = Path::new("/var/lib/warren/storage");
        let orphan = |p: &str, ino| is_orphan(&attached(p, 5, ino), root, &live);
        // Deleted, or trashed: orphans.
        assert!(orphan(
            "/var/lib/warren/storage/volumes/k1/disk.img (deleted)",
            101
        ));
        assert!(orphan("/var/lib/warren/storage/.trash/k1-17/disk.img", 102));
        assert!(orphan(
            "/var/lib/warren/storage/.creating/k3/disk.img (deleted)",
            103
        ));
        // A live volume's image: kept.
        assert!(!orphan("/var/lib/warren/storage/volumes/k2/disk.img", 100));
        // Another store's, one seen through a dead container's mount, or not an image of
        // Warren's: never touched.
        assert!(!orphan(
            "/var/lib/other/storage/volumes/k1/disk.img (deleted)",
            104
        ));
        assert!(!orphan("/volumes/k1/disk.img (deleted)", 105));
        assert!(!orphan(
            "/var/lib/warren/storage/volumes/k1/data/disk.img",
            106
        ));
        assert!(!orphan(
            "/var/lib/warren/storage/volumes/k1/disk.img.bak",
            107
        ));
        assert!(!orphan("/var/lib/snapd/snaps/core_1.snap", 108));
    }
}
