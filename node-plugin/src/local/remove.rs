//! Removing a volume's or snapshot's directory without ever deleting through a mount.
//! A deleted object first leaves its place with one rename into `.trash/` (`trash`), so
//! a crash midway leaves nothing half-visible; startup empties `.trash/` the same way.
//!
//! Nothing should be mounted inside an object directory when it is removed: a mount there
//! is a bug elsewhere (a publish not undone, a mount a pod propagated), and what it shows
//! belongs to someone else — `rm -rf` through it would empty another file system, or, for
//! a bind mount, another directory of this one. So:
//!
//! 1. `/proc/self/mountinfo` is read first: a mount at or below the directory is refused,
//!    by name, before anything is removed (a refused delete leaves the object whole).
//! 2. The removal then opens every directory relative to its parent with
//!    `openat2(RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS)`, which the kernel refuses (EXDEV)
//!    for any mount point, bind mounts of the same file system included, and checks each
//!    directory's `st_dev` against the top's (the only check on kernels before 5.6, which
//!    lack openat2). A mount made after step 1 still stops the walk there.
//!
//! Like `std::fs::remove_dir_all`, everything is done relative to open directory
//! descriptors and symlinks are removed, never followed.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use warren_core::durable::sync_dir;
use warren_core::ids::Key;
use warren_core::Error as CoreError;

use super::store::{io_err, Inner};
use crate::error::{Error, Result};
use crate::mountinfo::{self, mount_at, MountEntry};

impl Inner {
    /// Moves an object out of sight with one rename, then removes it. An object with a
    /// file system mounted inside is refused before it is moved, so it stays whole.
    pub(super) fn trash(&self, dir: &Path, key: &Key) -> Result<()> {
        check_nothing_mounted_inside(dir)?;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let bin = self.dirs.trash().join(format!("{key}-{nanos}"));
        std::fs::rename(dir, &bin).map_err(io_err(format!("move {} to trash", dir.display())))?;
        sync_dir(dir.parent().unwrap_or(&self.dirs.root))?;
        // Checked above: mountinfo is not read again. The walk itself still never enters
        // a mount made since.
        match resolve_parent(&bin)? {
            Some(bin) => remove_tree(&bin),
            None => Ok(()),
        }
    }
}

/// Removes an object directory and everything in it; nothing to do if it is absent.
/// Refuses, with the mount named, when a file system is mounted at or below it.
pub(super) fn remove_object_dir(path: &Path) -> Result<()> {
    let Some(path) = resolve_parent(path)? else {
        return Ok(());
    };
    refuse_mounts_inside(&path)?;
    remove_tree(&path)
}

/// FAILED_PRECONDITION when a file system is mounted at or below `path` (as mountinfo
/// shows it), so a caller can refuse before changing anything.
pub(super) fn check_nothing_mounted_inside(path: &Path) -> Result<()> {
    match resolve_parent(path)? {
        Some(path) => refuse_mounts_inside(&path),
        None => Ok(()),
    }
}

/// `check_nothing_mounted_inside` for a path whose parent is already resolved.
fn refuse_mounts_inside(path: &Path) -> Result<()> {
    let mounts = mountinfo::read()?;
    match mount_inside(&mounts, path) {
        Some(m) => Err(mounted_inside(path, &m.mount_point, Some(m))),
        None => Ok(()),
    }
}

/// The first mount at or below `dir`, which must be written as mountinfo writes paths
/// (absolute, no symlinks). Components are compared whole: `/a/bc` is not inside `/a/b`.
pub fn mount_inside<'a>(mounts: &'a [MountEntry], dir: &Path) -> Option<&'a MountEntry> {
    mounts.iter().find(|m| m.mount_point.starts_with(dir))
}

/// `path` with its parent's symlinks resolved (as mountinfo shows paths), but not its own
/// last component: a symlink there is removed, never followed. None if the parent is gone.
fn resolve_parent(path: &Path) -> Result<Option<PathBuf>> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(CoreError::Internal(format!(
            "refusing to remove {}: not an object directory",
            path.display()
        ))
        .into());
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    match std::fs::canonicalize(parent) {
        Ok(parent) => Ok(Some(parent.join(name))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CoreError::io(format!("resolve {}", parent.display()))(e).into()),
    }
}

/// Removes `path` (parent resolved) and what is below it, never leaving the mount of its
/// parent directory.
fn remove_tree(path: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    let parent_fd = nix::fcntl::open(
        parent,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(Error::sys("open", parent))?;
    let dev = fstat(&parent_fd)
        .map_err(Error::sys("stat", parent))?
        .st_dev;
    let name = CString::new(name.as_bytes())
        .map_err(|_| CoreError::Internal(format!("a NUL byte in {}", path.display())))?;
    let walk = Walk { top: path, dev };
    walk.remove_at(&parent_fd, &name, path, None)
}

/// One removal: the directory it started from (for messages) and the device it must
/// stay on.
struct Walk<'a> {
    top: &'a Path,
    dev: libc::dev_t,
}

impl Walk<'_> {
    /// Removes the entry `name` of the open directory `parent`; `path` is its full path,
    /// `kind` its type as readdir saw it (None: unknown, or the top).
    fn remove_at(
        &self,
        parent: &impl AsFd,
        name: &CStr,
        path: &Path,
        kind: Option<Type>,
    ) -> Result<()> {
        if !matches!(kind, None | Some(Type::Directory)) {
            return unlink(parent, name, path, UnlinkatFlags::NoRemoveDir);
        }
        match self.open_dir(parent, name, path) {
            Ok(dir) => {
                self.empty(dir, path)?;
                unlink(parent, name, path, UnlinkatFlags::RemoveDir)
            }
            Err(Errno::ENOENT) => Ok(()),
            // A file or a symlink (readdir could not tell): removed itself.
            Err(Errno::ENOTDIR | Errno::ELOOP) => {
                unlink(parent, name, path, UnlinkatFlags::NoRemoveDir)
            }
            Err(Errno::EXDEV) => {
                let mounts = mountinfo::read().unwrap_or_default();
                Err(mounted_inside(self.top, path, mount_at(&mounts, path)))
            }
            Err(e) => Err(Error::sys("open", path)(e)),
        }
    }

    /// Opens a directory entry as a directory, on the walk's own mount only: EXDEV for a
    /// mount point, ENOTDIR/ELOOP for a file or a symlink.
    fn open_dir(&self, parent: &impl AsFd, name: &CStr, path: &Path) -> nix::Result<Dir> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let how = OpenHow::new()
            .flags(flags)
            .resolve(ResolveFlag::RESOLVE_NO_XDEV | ResolveFlag::RESOLVE_NO_SYMLINKS);
        let fd: OwnedFd = match openat2(parent, name, how) {
            // No openat2: a kernel before 5.6, or a seccomp filter that refuses it (some
            // container runtimes' default profiles answer EPERM). The st_dev check below
            // still keeps the walk on its own file system.
            Err(Errno::ENOSYS | Errno::EPERM) => openat(parent, name, flags, Mode::empty())?,
            opened => opened?,
        };
        if fstat(&fd)?.st_dev != self.dev {
            tracing::debug!(path = %path.display(), "another file system: not entered");
            return Err(Errno::EXDEV);
        }
        Dir::from_fd(fd)
    }

    /// Removes everything in an open directory.
    fn empty(&self, mut dir: Dir, path: &Path) -> Result<()> {
        // Names first, removals after: no reliance on readdir's behaviour while its
        // directory changes.
        let mut entries = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(Error::sys("read directory", path))?;
            let name = entry.file_name();
            if name != c"." && name != c".." {
                entries.push((name.to_owned(), entry.file_type()));
            }
        }
        for (name, kind) in entries {
            let child = path.join(OsStr::from_bytes(name.to_bytes()));
            self.remove_at(&dir, &name, &child, kind)?;
        }
        Ok(())
    }
}

fn unlink(parent: &impl AsFd, name: &CStr, path: &Path, flag: UnlinkatFlags) -> Result<()> {
    match unlinkat(parent, name, flag) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(Error::sys("remove", path)(e)),
    }
}

/// The refusal: what was to be removed, where something is mounted inside it, and what.
fn mounted_inside(top: &Path, at: &Path, mount: Option<&MountEntry>) -> Error {
    let what = mount
        .map(|m| format!(" ({} {})", m.fs_type, m.source))
        .unwrap_or_default();
    CoreError::FailedPrecondition(format!(
        "not removing {}: a file system is mounted inside it at {}{what}; unmount it first",
        top.display(),
        at.display()
    ))
    .into()
}

#[cfg(test)]
mod tests;
