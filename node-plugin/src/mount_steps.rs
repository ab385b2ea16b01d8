//! Stage and publish steps on a block device, shared by image volumes (a loop device on
//! the image) and replicated volumes (the device a frontend made of the engine). Blocking
//! code; every step looks at mountinfo first, so each is idempotent.

use std::fmt::Display;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use csi_proto::v1::volume_capability::access_mode::Mode;
use warren_core::capability::Requested;

use crate::decide::{self, MountAction};
use crate::error::Result;
use crate::filesystem::{grow_fs, grow_fs_offline, make_fs, mount_options, FsType};
use crate::fsprobe::{probe_device, Probe};
use crate::fssize::fs_size_bytes;
use crate::loopdev::block_device_size;
use crate::mounter::Mounter;
use crate::mountinfo::{self, mount_at, MountEntry};
use crate::stage::{conflict, ensure_dir, identity, io_err, precondition};

/// Mounts `dev` at `staging` (`existing`: what mountinfo shows there now): a blank device
/// gets `fs_type` (empty: ext4); ext4 or xfs is used as it is; anything else is refused
/// (Warren never formats over data it does not recognise). A file system smaller than its
/// device (restored into a larger volume, or expanded while detached) is grown.
#[allow(clippy::too_many_arguments)] // each is one fact of the request
pub(crate) fn format_and_mount(
    mounter: &dyn Mounter,
    dev: &Path,
    staging: &Path,
    existing: Option<&MountEntry>,
    fs_type: &str,
    mount_flags: &[String],
    id: &dyn Display,
) -> Result<()> {
    let wanted = FsType::parse(fs_type)?;
    match decide::stage_device(existing, dev) {
        MountAction::AlreadyMounted => return Ok(()),
        MountAction::Conflict(m) => return Err(conflict(m)),
        MountAction::Mount => {}
    }
    let fs = match probe_device(dev)? {
        Probe::Blank => {
            make_fs(dev, wanted)?;
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
    let device_bytes = block_device_size(dev)?;
    let fs_bytes = fs_size_bytes(&read_head(dev)?).unwrap_or(device_bytes);
    let must_grow = fs_bytes < device_bytes;
    if must_grow && fs == FsType::Ext4 {
        // Restored or expanded while detached: grow before mounting, which needs
        // no special privilege.
        grow_fs_offline(dev, fs)?;
    }
    ensure_dir(staging)?;
    mounter.mount_device(dev, staging, fs.as_str(), &mount_options(fs, mount_flags))?;
    if must_grow && fs == FsType::Xfs {
        grow_fs(dev, staging, fs)?;
    }
    Ok(())
}

/// Publishes a raw block volume: bind-mounts the device node `dev` onto the file `target`.
pub(crate) fn bind_device(
    mounter: &dyn Mounter,
    mounts: &[MountEntry],
    dev: &Path,
    target: &Path,
    cap: &Requested,
    read_only: bool,
) -> Result<()> {
    let existing = mount_at(mounts, target);
    let same = existing.is_some() && same_device_node(target, dev);
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
            mounter.bind(dev, target, read_only, &[])
        }
    }
}

/// Publishes a mounted volume: bind-mounts its staging mount onto `target`. Mounts below
/// `ignored` (the built-in share's own mounts) are not publishes.
#[allow(clippy::too_many_arguments)] // each is one fact of the request
pub(crate) fn bind_staged(
    mounter: &dyn Mounter,
    mounts: &[MountEntry],
    id: &dyn Display,
    staging: &Path,
    target: &Path,
    cap: &Requested,
    read_only: bool,
    mount_flags: &[String],
    ignored: Option<&Path>,
) -> Result<()> {
    let Some(staged) = mount_at(mounts, staging) else {
        return Err(precondition(format!(
            "volume {id} is not staged at {}",
            staging.display()
        )));
    };
    let others = mounts.iter().filter(|m| {
        m.major_minor == staged.major_minor
            && m.root == staged.root
            && m.mount_point != staging
            && m.mount_point != target
            && ignored.is_none_or(|dir| !m.mount_point.starts_with(dir))
    });
    single_writer_check(cap, others)?;
    let existing = mount_at(mounts, target);
    let same = existing.is_some() && identity(target) == identity(staging);
    match decide::bind(existing, same, read_only) {
        MountAction::AlreadyMounted => Ok(()),
        MountAction::Conflict(m) => Err(conflict(m)),
        MountAction::Mount => {
            ensure_dir(target)?;
            mounter.bind(staging, target, read_only, mount_flags)
        }
    }
}

/// Unmounts everything stacked at `target` (a retried publish never stacks, but an outside
/// actor might have); whether anything was mounted.
pub(crate) fn unmount_all(mounter: &dyn Mounter, target: &Path) -> Result<bool> {
    let mut mounted = false;
    while mount_at(&mountinfo::read()?, target).is_some() {
        mounter.unmount(target)?;
        mounted = true;
    }
    Ok(mounted)
}

fn read_head(dev: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut head = vec![0u8; 4096];
    fs::File::open(dev)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(io_err(format!("read {}", dev.display())))?;
    Ok(head)
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
