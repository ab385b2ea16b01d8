//! Freezing a mounted file system while its image is copied, so a snapshot of a volume in
//! use is consistent (like `fsfreeze`). The guard thaws on drop, and startup thaws every
//! Warren mount in case a crash left one frozen.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::{Error, Result};

// _IOWR('X', 119, int) and _IOWR('X', 120, int) from linux/fs.h.
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

pub struct Frozen {
    dir: File,
    path: PathBuf,
}

pub fn freeze(mountpoint: &Path) -> Result<Frozen> {
    let dir = File::open(mountpoint).map_err(|e| {
        Error::sys("open for freeze", mountpoint)(Errno::from_raw(e.raw_os_error().unwrap_or(0)))
    })?;
    // SAFETY: FIFREEZE takes no pointer argument; the fd is valid for the call.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), FIFREEZE as _, 0) };
    Errno::result(rc).map_err(Error::sys("FIFREEZE", mountpoint))?;
    Ok(Frozen {
        dir,
        path: mountpoint.to_path_buf(),
    })
}

/// Thaws a file system; "not frozen" (EINVAL) is success.
pub fn thaw(mountpoint: &Path) -> Result<()> {
    let dir = File::open(mountpoint).map_err(|e| {
        Error::sys("open for thaw", mountpoint)(Errno::from_raw(e.raw_os_error().unwrap_or(0)))
    })?;
    thaw_fd(&dir, mountpoint)
}

fn thaw_fd(dir: &File, path: &Path) -> Result<()> {
    // SAFETY: FITHAW takes no pointer argument; the fd is valid for the call.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), FITHAW as _, 0) };
    match Errno::result(rc) {
        Ok(_) | Err(Errno::EINVAL) => Ok(()),
        Err(e) => Err(Error::sys("FITHAW", path)(e)),
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Err(e) = thaw_fd(&self.dir, &self.path) {
            tracing::error!(path = %self.path.display(), error = %e, "could not thaw file system");
        }
    }
}
