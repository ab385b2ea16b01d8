//! Opening a storage root after a crash: what an interrupted operation left is finished.

use std::fs;
use std::path::{Path, PathBuf};

use super::remove::remove_object_dir;
use super::store::{io_err, Inner};
use crate::error::Result;
use crate::{freeze, mountinfo};

impl Inner {
    /// Removes half-built objects (`.creating/`) and half-deleted ones (`.trash/`), and
    /// thaws file systems of this store's images that a crash left frozen.
    pub(super) fn recover(&self) -> Result<()> {
        for dir in [self.dirs.creating(), self.dirs.trash()] {
            for entry in fs::read_dir(&dir).map_err(io_err(format!("list {}", dir.display())))? {
                let path = entry.map_err(io_err("list"))?.path();
                tracing::info!(path = %path.display(), "removing leftover of an interrupted operation");
                remove_object_dir(&path)?;
            }
        }
        // A crash during a snapshot copy would leave the volume's file system frozen.
        for entry in mountinfo::read()? {
            if entry.source.starts_with("/dev/loop") {
                let backing = self.devices_backing(&entry.source);
                if backing.is_some_and(|b| b.starts_with(self.dirs.volumes())) {
                    freeze::thaw(&entry.mount_point)?;
                }
            }
        }
        Ok(())
    }

    /// The file a loop device is attached to, from sysfs.
    fn devices_backing(&self, dev: &str) -> Option<PathBuf> {
        let name = Path::new(dev).file_name()?;
        let backing =
            fs::read_to_string(Path::new("/sys/block").join(name).join("loop/backing_file"))
                .ok()?;
        Some(PathBuf::from(backing.trim_end()))
    }
}
