//! Stage, publish and their inverses, plus stats and node-side expansion. Blocking code,
//! called under the volume's lock. Each step looks at mountinfo first and lets
//! `crate::decide` say what to do, so every call is idempotent.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use csi_proto::v1::volume_capability::access_mode::Mode;
use warren_core::capability::{Access, Requested};
use warren_core::ids::{Layout, VolumeId};
use warren_core::storage::Condition;
use warren_core::Error as CoreError;

use crate::decide::{self, MountAction};
use crate::error::{Error, Result};
use crate::filesystem::{grow_fs, grow_fs_offline, make_fs, mount_options, FsType};
use crate::fsprobe::{probe_device, Probe};
use crate::fssize::fs_size_bytes;
use crate::local::{payload, LocalStore, VolumeMeta};
use crate::loopdev::block_device_size;
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

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
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
fn identity(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn read_head(dev: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut head = vec![0u8; 4096];
    fs::File::open(dev)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(io_err(format!("read {}", dev.display())))?;
    Ok(head)
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
                let wanted = FsType::parse(fs_type)?;
                let dev = self.store.devices().attach(&self.image(&meta))?;
                match decide::stage_device(existing, &dev) {
                    MountAction::AlreadyMounted => return Ok(()),
                    MountAction::Conflict(m) => return Err(conflict(m)),
                    MountAction::Mount => {}
                }
                let fs = match probe_device(&dev)? {
                    Probe::Blank => {
                        make_fs(&dev, wanted)?;
                        wanted
                    }
                    Probe::Ext4 => FsType::Ext4,
                    Probe::Xfs => FsType::Xfs,
                    other => {
                        return Err(precondition(format!(
                            "volume {id} holds data Warren does not recognise ({other:?}); \
                             refusing to format it"
                        )))
                    }
                };
                if !fs_type.is_empty() && fs != wanted {
                    return Err(precondition(format!(
                        "volume {id} already has a {} file system; {fs_type} was asked for",
                        fs.as_str()
                    )));
                }
                let device_bytes = block_device_size(&dev)?;
                let fs_bytes = fs_size_bytes(&read_head(&dev)?).unwrap_or(device_bytes);
                let must_grow = fs_bytes < device_bytes;
                if must_grow && fs == FsType::Ext4 {
                    // Restored or expanded while detached: grow before mounting, which needs
                    // no special privilege.
                    grow_fs_offline(&dev, fs)?;
                }
                ensure_dir(staging)?;
                self.mounter.mount_device(
                    &dev,
                    staging,
                    fs.as_str(),
                    &mount_options(fs, mount_flags),
                )?;
                if must_grow && fs == FsType::Xfs {
                    grow_fs(&dev, staging, fs)?;
                }
                Ok(())
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
        let existing = mount_at(&mounts, target);
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
                let same = existing.is_some() && same_device_node(target, &dev);
                let node_name = dev.file_name().map(|n| Path::new("/").join(n));
                let others = mounts
                    .iter()
                    .filter(|m| Some(&m.root) == node_name.as_ref() && m.mount_point != target);
                single_writer_check(cap, others)?;
                match decide::bind(existing, same, read_only) {
                    MountAction::AlreadyMounted => Ok(()),
                    MountAction::Conflict(m) => Err(conflict(m)),
                    MountAction::Mount => {
                        ensure_file(target)?;
                        self.mounter.bind(&dev, target, read_only, &[])
                    }
                }
            }
            Access::Mount { mount_flags, .. } => {
                let Some(staged) = mount_at(&mounts, staging) else {
                    return Err(precondition(format!(
                        "volume {id} is not staged at {}",
                        staging.display()
                    )));
                };
                // The built-in share's own mount of a shared volume is not a publish.
                let shares = self.store.dirs().shares();
                let others = mounts.iter().filter(|m| {
                    m.major_minor == staged.major_minor
                        && m.root == staged.root
                        && m.mount_point != staging
                        && m.mount_point != target
                        && !m.mount_point.starts_with(&shares)
                });
                single_writer_check(cap, others)?;
                let same = existing.is_some() && identity(target) == identity(staging);
                match decide::bind(existing, same, read_only) {
                    MountAction::AlreadyMounted => Ok(()),
                    MountAction::Conflict(m) => Err(conflict(m)),
                    MountAction::Mount => {
                        ensure_dir(target)?;
                        self.mounter.bind(staging, target, read_only, mount_flags)
                    }
                }
            }
        }
    }

    pub fn unpublish(&self, id: &VolumeId, target: &Path) -> Result<()> {
        let known = self.store.volume_meta(id);
        // Unmount everything stacked at the target (a retried publish never stacks, but an
        // outside actor might have).
        let mut mounted = false;
        while mount_at(&mountinfo::read()?, target).is_some() {
            self.mounter.unmount(target)?;
            mounted = true;
        }
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

/// SINGLE_NODE_SINGLE_WRITER allows one publish at a time; `others` are the volume's
/// publishes at other targets.
pub(crate) fn single_writer_check<'a>(
    cap: &Requested,
    mut others: impl Iterator<Item = &'a MountEntry>,
) -> Result<()> {
    if cap.mode != Mode::SingleNodeSingleWriter {
        return Ok(());
    }
    match others.next() {
        Some(m) => Err(precondition(format!(
            "the volume is single-writer and already published at {}",
            m.mount_point.display()
        ))),
        None => Ok(()),
    }
}

fn same_device_node(target: &Path, dev: &Path) -> bool {
    match (fs::metadata(target), fs::metadata(dev)) {
        (Ok(t), Ok(d)) => t.file_type().is_block_device() && t.rdev() == d.rdev(),
        _ => false,
    }
}

pub(crate) fn ensure_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(io_err(format!("create {}", path.display())))
}

fn ensure_file(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        ensure_dir(parent)?;
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() || m.file_type().is_block_device() => Ok(()),
        Ok(_) => Err(precondition(format!(
            "{} exists and is not a file; a block volume is published on a file",
            path.display()
        ))),
        Err(_) => fs::File::create(path)
            .map(drop)
            .map_err(io_err(format!("create {}", path.display()))),
    }
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
