//! From what the local file system says (errno) to what an NFSv3 client is told.

use nfs3_server::nfs3_types::nfs3::nfsstat3;
use nix::errno::Errno;

pub fn from_errno(e: Errno) -> nfsstat3 {
    use nfsstat3::*;
    match e {
        Errno::EPERM => NFS3ERR_PERM,
        Errno::ENOENT => NFS3ERR_NOENT,
        Errno::ENXIO => NFS3ERR_NXIO,
        Errno::EACCES => NFS3ERR_ACCES,
        Errno::EEXIST => NFS3ERR_EXIST,
        Errno::EXDEV => NFS3ERR_XDEV,
        Errno::ENODEV => NFS3ERR_NODEV,
        Errno::ENOTDIR => NFS3ERR_NOTDIR,
        Errno::EISDIR => NFS3ERR_ISDIR,
        // ELOOP: a handle of a symbolic link opened as a file, which the share refuses
        // rather than follow.
        Errno::EINVAL | Errno::ELOOP => NFS3ERR_INVAL,
        Errno::EFBIG => NFS3ERR_FBIG,
        Errno::ENOSPC => NFS3ERR_NOSPC,
        Errno::EROFS => NFS3ERR_ROFS,
        Errno::EMLINK => NFS3ERR_MLINK,
        Errno::ENAMETOOLONG => NFS3ERR_NAMETOOLONG,
        Errno::ENOTEMPTY => NFS3ERR_NOTEMPTY,
        Errno::EDQUOT => NFS3ERR_DQUOT,
        // The inode behind a handle is gone.
        Errno::ESTALE => NFS3ERR_STALE,
        Errno::EOPNOTSUPP => NFS3ERR_NOTSUPP,
        // A mount point inside the volume: not the share's to remove or rename.
        Errno::EBUSY => NFS3ERR_ACCES,
        Errno::EAGAIN | Errno::EINTR => NFS3ERR_JUKEBOX,
        _ => NFS3ERR_IO,
    }
}

pub fn from_io(e: std::io::Error) -> nfsstat3 {
    e.raw_os_error()
        .map_or(nfsstat3::NFS3ERR_IO, |n| from_errno(Errno::from_raw(n)))
}
