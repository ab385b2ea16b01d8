//! Stage, publish and their inverses, plus stats and node-side expansion. Blocking code,
//! called under the volume's lock. Each step looks at mountinfo first and lets
//! `crate::decide` say what to do, so every call is idempotent.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use warren_core::capability::{Access, Requested};
use warren_core::ids::{Layout, VolumeId};
use warren_core::storage::Condition;
use warren_core::Error as CoreError;

use crate::decide::{self, MountAction};
use crate::error::{Error, Result};
use crate::filesystem::{grow_fs, FsType};
use crate::local::{payload, LocalStore, VolumeMeta};
use crate::loopdev::block_device_size;
pub(crate) use crate::mount_steps::single_writer_check;
use crate::mount_steps::{bind_device, bind_staged, format_and_mount, unmount_all};
use crate::mounter::Mounter;
use crate::mountinfo::{self, mount_at, MountEntry};

pub struct Stager {
    store: LocalStore,
    mounter: Arc<dyn Mounter>,
}

pub enum Stats {
    Block {
        bytes: u64,
    },
    Fs {
        bytes_total: u64,
        bytes_available: u64,
        bytes_used: u64,
        inodes_total: u64,
        inodes_free: u64,
        inodes_used: u64,
    },
}

impl Stats {
    /// Usage as a file system's `statvfs` gives it.
    // The casts are needed where fsblkcnt_t is 32 bits (32-bit ARM edge boards).
    #[allow(clippy::unnecessary_cast)]
    pub fn of(st: &nix::sys::statvfs::Statvfs) -> Stats {
        let frsize = st.fragment_size() as u64;
        let (total, free, avail) = (
            st.blocks() as u64 * frsize,
            st.blocks_free() as u64 * frsize,
            st.blocks_available() as u64 * frsize,
        );
        Stats::Fs {
            bytes_total: total,
            bytes_available: avail,
            bytes_used: total.saturating_sub(free),
            inodes_total: st.files() as u64,
            inodes_free: st.files_free() as u64,
            inodes_used: (st.files() as u64).saturating_sub(st.files_free() as u64),
        }
    }
}

pub(crate) fn io_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.to_string();
    move |e| Error::Core(CoreError::io(what)(e))
}

pub(crate) fn conflict(msg: String) -> Error {
    Error::Core(CoreError::AlreadyExists(msg))
}

pub(crate) fn precondition(msg: String) -> Error {
    Error::Core(CoreError::FailedPrecondition(msg))
}

/// (device, inode) of what `path` shows, following mounts.
pub(crate) fn identity(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Stager {
    pub fn new(store: LocalStore, mounter: Arc<dyn Mounter>) -> Self {
        Stager { store, mounter }
    }

    fn image(&self, meta: &VolumeMeta) -> PathBuf {
        payload(&self.store.dirs().volume(&meta.id.key), Layout::Image)
    }

    pub fn stage(&self, id: &VolumeId, staging: &Path, cap: &Requested) -> Result<()> {
        let meta = self.store.volume_meta(id)?;
        let mounts = mountinfo::read()?;
        let existing = mount_at(&mounts, staging);
        match (id.layout, &cap.access) {
            (Layout::Dir, Access::Block) => Err(CoreError::InvalidArgument(
                "layout \"dir\" volumes cannot be used as raw block devices".into(),
            )
            .into()),
            (Layout::Dir, Access::Mount { mount_flags, .. }) => {
                let data = payload(&self.store.dirs().volume(&id.key), Layout::Dir);
                let same = existing.is_some() && identity(staging) == identity(&data);
                match decide::bind(existing, same, false) {
                    MountAction::AlreadyMounted => Ok(()),
                    MountAction::Conflict(m) => Err(conflict(m)),
                    MountAction::Mount => {
                        ensure_dir(staging)?;
                        self.mounter.bind(&data, staging, false, mount_flags)
                    }
                }
            }
            (Layout::Image, Access::Block) => {
                // Raw block: attaching the image is the whole of staging.
                self.store.devices().attach(&self.image(&meta)).map(drop)
            }
            (
                Layout::Image,
                Access::Mount {
                    fs_type,
                    mount_flags,
                },
            ) => {
                // Checked before anything is attached.
                FsType::parse(fs_type)?;
                let dev = self.store.devices().attach(&self.image(&meta))?;
                format_and_mount(
                    self.mounter.as_ref(),
                    &dev,
                    staging,
                    existing,
                    fs_type,
                    mount_flags,
                    id,
                )
            }
        }
    }

    pub fn unstage(&self, id: &VolumeId, staging: &Path) -> Result<()> {
        let meta = self.store.volume_meta(id);
        let mounts = mountinfo::read()?;
        let staged = mount_at(&mounts, staging).is_some();
        if staged {
            self.mounter.unmount(staging)?;
        }
        let meta = match meta {
            Ok(meta) => meta,
            // Gone, and nothing was mounted for it: NOT_FOUND per the spec. Gone but still
            // mounted (deleted behind our back): the unmount above was the right cleanup.
            Err(e) if !staged => return Err(e),
            Err(_) => return Ok(()),
        };
        if id.layout == Layout::Image {
            let image = self.image(&meta);
            if let Some(dev) = self.store.devices().find(&image)? {
                let mounts = mountinfo::read()?;
                let shares = self.store.dirs().shares();
                let mut users = mounts.iter().filter(|m| Path::new(&m.source) == dev);
                // The built-in share's own mount keeps the device: it is not a pod's.
                let (shared, others): (Vec<_>, Vec<_>) = users
                    .by_ref()
                    .partition(|m| m.mount_point.starts_with(&shares));
                if let Some(m) = others.first() {
                    return Err(precondition(format!(
                        "volume {id} is still mounted at {}; unpublish it first",
                        m.mount_point.display()
                    )));
                }
                if shared.is_empty() {
                    self.store.devices().detach_device(&dev)?;
                }
            }
        }
        Ok(())
    }

    pub fn publish(
        &self,
        id: &VolumeId,
        staging: &Path,
        target: &Path,
        cap: &Requested,
        read_only: bool,
    ) -> Result<()> {
        let meta = self.store.volume_meta(id)?;
        let mounts = mountinfo::read()?;
        match &cap.access {
            Access::Block => {
                if id.layout != Layout::Image {
                    return Err(CoreError::InvalidArgument(
                        "layout \"dir\" volumes cannot be used as raw block devices".into(),
                    )
                    .into());
                }
                let dev = self
                    .store
                    .devices()
                    .find(&self.image(&meta))?
                    .ok_or_else(|| {
                        precondition(format!("volume {id} is not staged on this node"))
                    })?;
                bind_device(
                    self.mounter.as_ref(),
                    &mounts,
                    dev.as_path(),
                    target,
                    cap,
                    read_only,
                )
            }
            Access::Mount { mount_flags, .. } => {
                // The built-in share's own mount of a shared volume is not a publish.
                let shares = self.store.dirs().shares();
                bind_staged(
                    self.mounter.as_ref(),
                    &mounts,
                    id,
                    staging,
                    target,
                    cap,
                    read_only,
                    mount_flags,
                    Some(&shares),
                )
            }
        }
    }

    pub fn unpublish(&self, id: &VolumeId, target: &Path) -> Result<()> {
        let known = self.store.volume_meta(id);
        let mounted = unmount_all(self.mounter.as_ref(), target)?;
        if let (Err(e), false) = (known, mounted) {
            if !target_exists(target) {
                return Err(e);
            }
        }
        remove_target(target)
    }

    pub fn stats(&self, id: &VolumeId, path: &Path) -> Result<(Stats, Condition)> {
        let meta = self.store.volume_meta(id)?;
        let info = volume_path_metadata(path)?;
        let mounts = mountinfo::read()?;
        let mut condition = self.store.volume_condition(&meta);
        if !condition.abnormal && mount_at(&mounts, path).is_none() {
            condition = Condition::abnormal(format!("{} is not mounted", path.display()));
        }
        if info.file_type().is_block_device() {
            return Ok((
                Stats::Block {
                    bytes: block_device_size(path)?,
                },
                condition,
            ));
        }
        let st = nix::sys::statvfs::statvfs(path).map_err(Error::sys("statvfs", path))?;
        // For a directory volume this is its host file system: what the volume can really
        // use, since that layout does not enforce a size.
        Ok((Stats::of(&st), condition))
    }

    pub fn expand(&self, id: &VolumeId, path: &Path, required_bytes: u64) -> Result<u64> {
        let meta = self.store.volume_meta(id)?;
        let info = volume_path_metadata(path)?;
        // Normally ControllerExpandVolume has grown the backing store already; a CO that
        // only calls the node (as csi-sanity does against a node-only endpoint) gets the
        // same result here, since this node owns the backing store.
        let capacity = if required_bytes > meta.capacity_bytes {
            self.store.expand_locked(id, required_bytes)?
        } else {
            meta.capacity_bytes
        };
        if id.layout == Layout::Dir {
            return Ok(capacity);
        }
        let image = self.image(&meta);
        self.store.devices().refresh_size(&image)?;
        if info.file_type().is_block_device() {
            return block_device_size(path);
        }
        let mounts = mountinfo::read()?;
        let entry: &MountEntry = mount_at(&mounts, path)
            .ok_or_else(|| precondition(format!("{} is not mounted", path.display())))?;
        let dev = PathBuf::from(&entry.source);
        let fs = FsType::parse(&entry.fs_type)?;
        grow_fs(&dev, path, fs)?;
        block_device_size(&dev)
    }
}

pub(crate) fn ensure_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(io_err(format!("create {}", path.display())))
}

fn target_exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Removes the (now unmounted) target file or empty directory. Never recursive: if a
/// directory still has content, something is wrong and deleting it would lose data.
pub(crate) fn remove_target(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Err(_) => return Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir(path),
        Ok(_) => fs::remove_file(path),
    };
    result.map_err(io_err(format!("remove {}", path.display())))
}

/// The metadata of a volume path the CO names in stats and expand calls; a path that is not
/// there is NOT_FOUND, as the spec asks.
fn volume_path_metadata(path: &Path) -> Result<fs::Metadata> {
    fs::metadata(path).map_err(|_| {
        Error::Core(CoreError::NotFound(format!(
            "volume path {} does not exist",
            path.display()
        )))
    })
}
