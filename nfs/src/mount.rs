//! The node's NFS mount and unmount, made so that nothing half-done is ever left behind:
//!
//! - mount(2) runs in a forked child that only makes that one system call. If it has not
//!   returned by the deadline (a server that accepts and never answers, a lost network),
//!   the child is killed — an NFS mount in progress gives up on SIGKILL — and a mount
//!   that completed at the last moment is taken down again, so the caller's error is the
//!   whole truth and a later retry starts clean.
//! - unmount first tries an ordinary umount(2), which writes back cached data, in a
//!   child under a deadline; if the server is gone and that cannot finish, the mount is
//!   forced and detached (MNT_FORCE | MNT_DETACH), which never waits for the server.
//!
//! Blocking functions: call them from `spawn_blocking`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::error::{Error, Result};
use crate::mount_options::{Flags, MountRequest};

/// How often a waiting parent looks at its child.
const POLL: Duration = Duration::from_millis(20);

/// Mounts `request` at `target` (an existing directory) within `deadline`.
pub fn mount(request: &MountRequest, target: &Path, deadline: Duration) -> Result<()> {
    // Everything the child needs is made before fork: after it, a multi-threaded
    // process's child may only make async-signal-safe calls (no allocation).
    let source = cstring(request.source.as_bytes())?;
    let target_c = cstring(target.as_os_str().as_bytes())?;
    let fs_type = cstring(request.fs_type.as_bytes())?;
    let data = cstring(request.data.as_bytes())?;
    let flags = mount_flags(&request.flags);
    let child = spawn(|| {
        // SAFETY: all pointers are valid NUL-terminated strings owned by the parent's
        // stack frame, which the child's copy of the address space keeps.
        unsafe {
            libc::mount(
                source.as_ptr(),
                target_c.as_ptr(),
                fs_type.as_ptr(),
                flags,
                data.as_ptr().cast(),
            )
        }
    })?;
    match wait_until(child, deadline)? {
        Some(0) => Ok(()),
        Some(errno) => Err(Error::Mount {
            target: target.display().to_string(),
            what: format!("mount {}", request.source),
            errno: Errno::from_raw(errno),
        }),
        None => {
            let _ = kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            // Finished just before the kill? Then it is mounted and must not stay.
            if is_mount_point(target) {
                force_detach(target);
            }
            Err(Error::Timeout {
                server: request.source.clone(),
                operation: format!("mount at {}", target.display()),
                seconds: deadline.as_secs_f64().ceil() as u64,
            })
        }
    }
}

/// Unmounts `target`: an ordinary unmount within `deadline`, else forced and detached.
/// Not mounted is fine. Returns whether the unmount had to be forced.
pub fn unmount(target: &Path, deadline: Duration) -> Result<bool> {
    if !is_mount_point(target) {
        return Ok(false);
    }
    let target_c = cstring(target.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path, see `mount`.
    let child = spawn(|| unsafe { libc::umount2(target_c.as_ptr(), 0) })?;
    match wait_until(child, deadline)? {
        Some(0) => Ok(false),
        Some(errno) if Errno::from_raw(errno) == Errno::EINVAL => Ok(false), // raced: gone
        Some(errno) if Errno::from_raw(errno) == Errno::EBUSY => Err(Error::Mount {
            target: target.display().to_string(),
            what: "unmount".into(),
            errno: Errno::EBUSY,
        }),
        // The ordinary unmount failed: force it.
        Some(_) => {
            force_detach(target);
            Ok(true)
        }
        // The server does not let the unmount finish: stop waiting for it. (Only a child
        // still running is killed: one already reaped may have had its pid reused.)
        None => {
            let _ = kill(child, Signal::SIGKILL);
            let _ = waitpid(child, Some(WaitPidFlag::WNOHANG));
            force_detach(target);
            Ok(true)
        }
    }
}

/// Forces and detaches the mount at `target`: it never waits for the server. Cached
/// writes that the server never took are lost, so callers use it only for a server that
/// does not answer.
pub fn force_detach(target: &Path) {
    let flags = nix::mount::MntFlags::MNT_FORCE | nix::mount::MntFlags::MNT_DETACH;
    if let Err(e) = nix::mount::umount2(target, flags) {
        tracing::warn!(target = %target.display(), error = %e, "forced unmount failed");
    }
}

/// Forks a child that runs `call` (one system call returning 0 or -1 with errno) and
/// exits with 0 or the errno.
fn spawn(call: impl FnOnce() -> libc::c_int) -> Result<Pid> {
    // SAFETY: the child only makes the system call in `call` and `_exit`, both
    // async-signal-safe; nothing is allocated or locked in it.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let rc = call();
            let code = if rc == 0 {
                0
            } else {
                Errno::last_raw().clamp(1, 255)
            };
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => Ok(child),
        Err(e) => Err(Error::Mount {
            target: String::new(),
            what: "fork".into(),
            errno: e,
        }),
    }
}

/// The child's exit code, or None if it is still running at the deadline.
fn wait_until(child: Pid, deadline: Duration) -> Result<Option<i32>> {
    let started = Instant::now();
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(Some(code)),
            Ok(WaitStatus::Signaled(..)) => return Ok(Some(Errno::EINTR as i32)),
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(e) => {
                return Err(Error::Mount {
                    target: String::new(),
                    what: "waitpid".into(),
                    errno: e,
                })
            }
        }
        if started.elapsed() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

/// Whether a file system is mounted exactly at `path` (from /proc/self/mountinfo: a
/// stat would block on a dead server).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().as_bytes();
    info.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|mount_point| unescape(mount_point) == want)
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("0");
            out.push(u8::from_str_radix(octal, 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

fn mount_flags(flags: &Flags) -> libc::c_ulong {
    let mut bits: libc::c_ulong = 0;
    for (on, bit) in [
        (flags.read_only, libc::MS_RDONLY),
        (flags.noatime, libc::MS_NOATIME),
        (flags.nodiratime, libc::MS_NODIRATIME),
        (flags.relatime, libc::MS_RELATIME),
        (flags.nosuid, libc::MS_NOSUID),
        (flags.nodev, libc::MS_NODEV),
        (flags.noexec, libc::MS_NOEXEC),
    ] {
        if on {
            bits |= bit;
        }
    }
    bits
}

fn cstring(bytes: &[u8]) -> Result<CString> {
    CString::new(bytes).map_err(|_| Error::InvalidArgument("a path or option holds NUL".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/var/lib/a\\040b"), b"/var/lib/a b");
        assert_eq!(unescape("/plain"), b"/plain");
        assert_eq!(unescape("/x\\134y"), b"/x\\y");
    }

    #[test]
    fn flags_map_to_mount_bits() {
        let bits = mount_flags(&Flags {
            read_only: true,
            noatime: true,
            ..Flags::default()
        });
        assert_eq!(bits, libc::MS_RDONLY | libc::MS_NOATIME);
        assert_eq!(mount_flags(&Flags::default()), 0);
    }

    #[test]
    fn root_is_a_mount_point_and_a_fresh_directory_is_not() {
        assert!(is_mount_point(Path::new("/")));
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(dir.path()));
        // Nothing mounted: unmount has nothing to do.
        assert!(!unmount(dir.path(), Duration::from_secs(1)).unwrap());
    }
}
