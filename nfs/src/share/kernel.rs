//! The kernel's own file handles: `name_to_handle_at` gives the bytes the file system
//! identifies an inode by (for ext4 and xfs: inode number and generation), and
//! `open_by_handle_at` opens that inode again — after our process restarts, too. That is
//! what lets NFS handles survive a restart of the share. `open_by_handle_at` needs
//! CAP_DAC_READ_SEARCH (the node plugin runs privileged).
//!
//! Neither call is in nix or std, so they are raw syscalls here.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;

/// MAX_HANDLE_SZ in the kernel.
const MAX_HANDLE_SZ: usize = 128;

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct RawHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelHandle {
    pub kind: i32,
    pub bytes: Vec<u8>,
}

/// The handle of `name` in `dir` itself, never of what a symbolic link points to (no
/// AT_SYMLINK_FOLLOW), and the id of the mount it is on. An empty name means `dir`
/// itself.
pub fn handle_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<(KernelHandle, i32), Errno> {
    let mut raw = RawHandle {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    let flags = if name.is_empty() {
        libc::AT_EMPTY_PATH
    } else {
        0
    };
    // SAFETY: every pointer is to a live, correctly sized local.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut raw as *mut RawHandle,
            &mut mount_id as *mut libc::c_int,
            flags,
        )
    };
    Errno::result(rc)?;
    let len = (raw.handle_bytes as usize).min(MAX_HANDLE_SZ);
    let handle = KernelHandle {
        kind: raw.handle_type,
        bytes: raw.f_handle[..len].to_vec(),
    };
    Ok((handle, mount_id))
}

/// Opens the inode `handle` names on the file system `mount` is on. A symbolic link can
/// only be opened with O_PATH (anything else fails with ELOOP): the link is never
/// followed.
pub fn open_handle(
    mount: BorrowedFd<'_>,
    handle: &KernelHandle,
    flags: OFlag,
) -> Result<OwnedFd, Errno> {
    if handle.bytes.len() > MAX_HANDLE_SZ {
        return Err(Errno::EINVAL);
    }
    let mut raw = RawHandle {
        handle_bytes: handle.bytes.len() as u32,
        handle_type: handle.kind,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    raw.f_handle[..handle.bytes.len()].copy_from_slice(&handle.bytes);
    let flags = (flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW).bits();
    // SAFETY: `raw` is a valid file_handle; the returned descriptor is ours alone.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            &mut raw as *mut RawHandle,
            flags,
        )
    };
    let fd = Errno::result(rc)?;
    // SAFETY: a successful open_by_handle_at returns a new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
