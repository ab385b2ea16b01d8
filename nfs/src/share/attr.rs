//! Attributes: a stat(2) result as NFSv3 `fattr3`, and `sattr3` (SETATTR, CREATE) applied
//! to an inode opened by handle, never by path, so nothing follows a symbolic link.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nfs3_server::nfs3_types::nfs3::{
    fattr3, ftype3, nfsstat3, nfstime3, sattr3, set_atime, set_mtime, specdata3, Nfs3Option,
};
use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid};

use super::status::from_errno;

pub fn is_kind(st: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == kind
}

/// `fsid` is the export's, not the device's: two volumes of `layout: dir` live on one
/// device, and a client must see each as its own file system.
pub fn fattr(st: &FileStat, fsid: u64) -> fattr3 {
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    let type_ = match kind {
        SFlag::S_IFDIR => ftype3::NF3DIR,
        SFlag::S_IFLNK => ftype3::NF3LNK,
        SFlag::S_IFBLK => ftype3::NF3BLK,
        SFlag::S_IFCHR => ftype3::NF3CHR,
        SFlag::S_IFSOCK => ftype3::NF3SOCK,
        SFlag::S_IFIFO => ftype3::NF3FIFO,
        _ => ftype3::NF3REG,
    };
    let time = |s: i64, ns: i64| nfstime3 {
        seconds: s.clamp(0, u32::MAX as i64) as u32,
        nseconds: ns.clamp(0, 999_999_999) as u32,
    };
    fattr3 {
        type_,
        mode: st.st_mode & 0o7777,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        used: st.st_blocks as u64 * 512,
        rdev: specdata3 {
            specdata1: libc::major(st.st_rdev),
            specdata2: libc::minor(st.st_rdev),
        },
        fsid,
        fileid: st.st_ino,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
    }
}

/// Applies `attr` to the inode `path_fd` (an O_PATH descriptor from its handle).
/// `writable` opens the same inode for writing when the size must change.
pub fn apply(
    path_fd: &OwnedFd,
    st: &FileStat,
    attr: &sattr3,
    writable: impl FnOnce() -> Result<OwnedFd, nfsstat3>,
) -> Result<(), nfsstat3> {
    let symlink = is_kind(st, SFlag::S_IFLNK);
    if let Nfs3Option::Some(size) = attr.size {
        if !is_kind(st, SFlag::S_IFREG) {
            return Err(nfsstat3::NFS3ERR_INVAL);
        }
        let fd = writable()?;
        let len = i64::try_from(size).map_err(|_| nfsstat3::NFS3ERR_FBIG)?;
        nix::unistd::ftruncate(&fd, len).map_err(from_errno)?;
    }
    let uid = match attr.uid {
        Nfs3Option::Some(u) => Some(Uid::from_raw(u)),
        Nfs3Option::None => None,
    };
    let gid = match attr.gid {
        Nfs3Option::Some(g) => Some(Gid::from_raw(g)),
        Nfs3Option::None => None,
    };
    if uid.is_some() || gid.is_some() {
        nix::unistd::fchownat(
            path_fd.as_fd(),
            "",
            uid,
            gid,
            AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(from_errno)?;
    }
    if let Nfs3Option::Some(mode) = attr.mode {
        // Linux has no mode on symbolic links.
        if symlink {
            return Err(nfsstat3::NFS3ERR_INVAL);
        }
        // fchmod does not take an O_PATH descriptor; the /proc magic link names exactly
        // this inode (it is not a path walk that a rename could redirect).
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            proc_path(path_fd).as_str(),
            Mode::from_bits_truncate(mode & 0o7777),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(from_errno)?;
    }
    let atime = match attr.atime {
        set_atime::DONT_CHANGE => None,
        set_atime::SET_TO_SERVER_TIME => Some(now()),
        set_atime::SET_TO_CLIENT_TIME(t) => Some(timespec(t)),
    };
    let mtime = match attr.mtime {
        set_mtime::DONT_CHANGE => None,
        set_mtime::SET_TO_SERVER_TIME => Some(now()),
        set_mtime::SET_TO_CLIENT_TIME(t) => Some(timespec(t)),
    };
    if atime.is_some() || mtime.is_some() {
        set_times(path_fd, atime, mtime)?;
    }
    Ok(())
}

/// utimensat on the inode itself (AT_EMPTY_PATH), a symbolic link included.
pub fn set_times(
    path_fd: &OwnedFd,
    atime: Option<libc::timespec>,
    mtime: Option<libc::timespec>,
) -> Result<(), nfsstat3> {
    let omit = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_OMIT,
    };
    let times = [atime.unwrap_or(omit), mtime.unwrap_or(omit)];
    // SAFETY: a valid descriptor, an empty C string and a two-element array.
    let rc = unsafe {
        libc::utimensat(
            path_fd.as_raw_fd(),
            c"".as_ptr(),
            times.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    Errno::result(rc).map(drop).map_err(from_errno)
}

fn proc_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn now() -> libc::timespec {
    libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_NOW,
    }
}

pub fn timespec(t: nfstime3) -> libc::timespec {
    libc::timespec {
        // `as _`: libc's `time_t` alias is deprecated on musl (the image's target), where
        // it is to become 64-bit; the field's own type is what matters.
        tv_sec: t.seconds as _,
        tv_nsec: (t.nseconds.min(999_999_999)) as libc::c_long,
    }
}
