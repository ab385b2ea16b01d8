//! The NFS operations on one export, as blocking system calls.
//!
//! The rules that keep a client inside its volume:
//! - an object is reached only by its handle (`open_by_handle_at`, which never follows a
//!   symbolic link) or by one name inside a directory reached that way (`*at` calls with
//!   O_NOFOLLOW / AT_SYMLINK_NOFOLLOW); no path string is ever walked;
//! - names are single components (`export::component`); `..` of the export root is
//!   refused; entries on another file system (mounts inside the volume) get no handle;
//! - non-regular files are looked at through O_PATH descriptors only, so the share never
//!   opens a device node or blocks on a FIFO found in a volume.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

use nfs3_server::nfs3_types::nfs3::{
    createverf3, fattr3, nfsstat3, nfstime3, sattr3, stable_how, Nfs3Option,
};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

use super::attr::{self, fattr, is_kind};
use super::export::{component, Export};
use super::handle::ShareHandle;
use super::status::{from_errno, from_io};

/// The most a READ returns (FSINFO's rtmax).
pub const MAX_IO: u32 = 1 << 20;

type R<T> = Result<T, nfsstat3>;

fn stat_fd(fd: &OwnedFd) -> R<FileStat> {
    nix::sys::stat::fstat(fd).map_err(from_errno)
}

fn stat_at(dir: &OwnedFd, name: &CString) -> R<FileStat> {
    nix::sys::stat::fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW).map_err(from_errno)
}

impl Export {
    /// An O_PATH descriptor of the object and what it is.
    fn object(&self, h: &ShareHandle) -> R<(OwnedFd, FileStat)> {
        let fd = self.open_handle(h, OFlag::O_PATH)?;
        let st = stat_fd(&fd)?;
        Ok((fd, st))
    }

    fn directory(&self, h: &ShareHandle) -> R<(OwnedFd, FileStat)> {
        let (fd, st) = self.object(h)?;
        if !is_kind(&st, SFlag::S_IFDIR) {
            return Err(nfsstat3::NFS3ERR_NOTDIR);
        }
        Ok((fd, st))
    }

    /// The object as a regular file opened for I/O; anything else is refused before it is
    /// opened for real.
    fn regular(&self, h: &ShareHandle, flags: OFlag) -> R<File> {
        let (_, st) = self.object(h)?;
        if is_kind(&st, SFlag::S_IFDIR) {
            return Err(nfsstat3::NFS3ERR_ISDIR);
        }
        if !is_kind(&st, SFlag::S_IFREG) {
            return Err(nfsstat3::NFS3ERR_INVAL);
        }
        Ok(File::from(self.open_handle(h, flags)?))
    }

    fn attrs_of(&self, dir: &OwnedFd, name: &CString) -> R<(ShareHandle, fattr3)> {
        let st = stat_at(dir, name)?;
        let handle = self.handle_of(dir.as_fd(), name, &st)?;
        Ok((handle, fattr(&st, self.fsid)))
    }

    pub fn getattr(&self, h: &ShareHandle) -> R<fattr3> {
        let (_, st) = self.object(h)?;
        Ok(fattr(&st, self.fsid))
    }

    pub fn lookup(&self, dir: &ShareHandle, name: &[u8]) -> R<ShareHandle> {
        let (dfd, dst) = self.directory(dir)?;
        match name {
            b"." => Ok(dir.clone()),
            b".." => {
                // Above the export root is the node's file system.
                if self.is_root(&dst) {
                    return Err(nfsstat3::NFS3ERR_ACCES);
                }
                let parent = nix::fcntl::openat(
                    &dfd,
                    "..",
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(from_errno)?;
                let st = stat_fd(&parent)?;
                self.handle_of(parent.as_fd(), &CString::default(), &st)
            }
            _ => {
                let name = component(name)?;
                let st = stat_at(&dfd, &name)?;
                self.handle_of(dfd.as_fd(), &name, &st)
            }
        }
    }

    pub fn read(&self, h: &ShareHandle, offset: u64, count: u32) -> R<(Vec<u8>, bool)> {
        let file = self.regular(h, OFlag::O_RDONLY)?;
        let size = file.metadata().map_err(from_io)?.len();
        let mut buf = vec![0u8; count.min(MAX_IO) as usize];
        let mut n = 0;
        while n < buf.len() {
            match file.read_at(&mut buf[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(from_io(e)),
            }
        }
        buf.truncate(n);
        Ok((buf, offset + n as u64 >= size))
    }

    /// Why every WRITE is stable before it is answered: `nfs3_server` sends its handle
    /// generation as the write verifier, and the share keeps that generation fixed across
    /// restarts so that handles stay valid. A client therefore cannot notice a restart
    /// between an UNSTABLE WRITE and its COMMIT, and would never resend data a crash lost.
    /// So the data is on disk before the reply: fdatasync and DATA_SYNC (which the Linux
    /// client treats as needing no COMMIT), or fsync when FILE_SYNC was asked for. The
    /// cost is one flush per WRITE (up to 1 MiB each).
    pub fn write(
        &self,
        h: &ShareHandle,
        offset: u64,
        data: &[u8],
        stable: stable_how,
    ) -> R<(fattr3, stable_how)> {
        let file = self.regular(h, OFlag::O_WRONLY)?;
        file.write_all_at(data, offset).map_err(from_io)?;
        let committed = if stable == stable_how::FILE_SYNC {
            file.sync_all().map_err(from_io)?;
            stable_how::FILE_SYNC
        } else {
            file.sync_data().map_err(from_io)?;
            stable_how::DATA_SYNC
        };
        let st = stat_fd(&OwnedFd::from(file))?;
        Ok((fattr(&st, self.fsid), committed))
    }

    /// Every WRITE is already stable; COMMIT flushes anyway (cheap when clean) so that
    /// data written on the node itself is covered too.
    pub fn commit(&self, h: &ShareHandle) -> R<()> {
        let (_, st) = self.object(h)?;
        if is_kind(&st, SFlag::S_IFREG) {
            self.regular(h, OFlag::O_RDONLY)?
                .sync_all()
                .map_err(from_io)?;
        }
        Ok(())
    }

    pub fn setattr(&self, h: &ShareHandle, attrs: &sattr3) -> R<fattr3> {
        let (fd, st) = self.object(h)?;
        attr::apply(&fd, &st, attrs, || {
            self.regular(h, OFlag::O_WRONLY).map(OwnedFd::from)
        })?;
        self.getattr(h)
    }

    /// CREATE (UNCHECKED or GUARDED; the server checked GUARDED's name beforehand).
    pub fn create(
        &self,
        dir: &ShareHandle,
        name: &[u8],
        attrs: &sattr3,
    ) -> R<(ShareHandle, fattr3)> {
        let (dfd, _) = self.directory(dir)?;
        let name = component(name)?;
        match stat_at(&dfd, &name) {
            Ok(st) if !is_kind(&st, SFlag::S_IFREG) => return Err(nfsstat3::NFS3ERR_EXIST),
            Ok(_) | Err(nfsstat3::NFS3ERR_NOENT) => {}
            Err(e) => return Err(e),
        }
        let mode = match attrs.mode {
            Nfs3Option::Some(m) => m & 0o7777,
            Nfs3Option::None => 0o644,
        };
        // O_NOFOLLOW: a symbolic link put there in the meantime fails (ELOOP) instead of
        // creating its target, which may be outside the volume. O_NONBLOCK: never wait on
        // a FIFO.
        let open = |extra: OFlag| {
            nix::fcntl::openat(
                &dfd,
                name.as_c_str(),
                OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | extra,
                Mode::from_bits_truncate(mode),
            )
            .map_err(|e| match e {
                nix::errno::Errno::ELOOP => nfsstat3::NFS3ERR_EXIST,
                e => from_errno(e),
            })
        };
        let (fd, attrs) = match open(OFlag::O_CREAT | OFlag::O_EXCL) {
            Ok(fd) => {
                // The mode again, exactly: the process umask cut it at creation.
                let mut all = attrs.clone();
                all.mode = Nfs3Option::Some(mode);
                (fd, all)
            }
            // UNCHECKED on an existing file: like open(O_CREAT) on Linux, and knfsd, only
            // a size (truncation) applies; its mode and owner stay.
            Err(nfsstat3::NFS3ERR_EXIST) => {
                let only_size = sattr3 {
                    size: attrs.size,
                    ..Default::default()
                };
                (open(OFlag::empty())?, only_size)
            }
            Err(e) => return Err(e),
        };
        let st = stat_fd(&fd)?;
        if !is_kind(&st, SFlag::S_IFREG) {
            return Err(nfsstat3::NFS3ERR_EXIST);
        }
        attr::apply(&fd, &st, &attrs, || fd.try_clone().map_err(from_io))?;
        self.attrs_of(&dfd, &name)
    }

    /// CREATE EXCLUSIVE: the verifier is kept in atime/mtime (as knfsd does), so a
    /// retransmitted CREATE finds its own file and succeeds; the client then sets the real
    /// attributes with SETATTR.
    pub fn create_exclusive(
        &self,
        dir: &ShareHandle,
        name: &[u8],
        verf: createverf3,
    ) -> R<ShareHandle> {
        let (dfd, _) = self.directory(dir)?;
        let name = component(name)?;
        let [a0, a1, a2, a3, m0, m1, m2, m3] = verf.0;
        let a = u32::from_be_bytes([a0, a1, a2, a3]);
        let m = u32::from_be_bytes([m0, m1, m2, m3]);
        let created = nix::fcntl::openat(
            &dfd,
            name.as_c_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        );
        match created {
            Ok(fd) => {
                let t = |s: u32| {
                    Some(attr::timespec(nfstime3 {
                        seconds: s,
                        nseconds: 0,
                    }))
                };
                attr::set_times(&fd, t(a), t(m))?;
            }
            Err(nix::errno::Errno::EEXIST) => {
                let st = stat_at(&dfd, &name)?;
                let ours = is_kind(&st, SFlag::S_IFREG)
                    && st.st_atime == i64::from(a)
                    && st.st_mtime == i64::from(m);
                if !ours {
                    return Err(nfsstat3::NFS3ERR_EXIST);
                }
            }
            Err(e) => return Err(from_errno(e)),
        }
        Ok(self.attrs_of(&dfd, &name)?.0)
    }

    /// MKDIR. `nfs3_server` does not pass the client's mode on, so the directory gets
    /// 0777 less the process umask.
    pub fn mkdir(&self, dir: &ShareHandle, name: &[u8]) -> R<(ShareHandle, fattr3)> {
        let (dfd, _) = self.directory(dir)?;
        let name = component(name)?;
        nix::sys::stat::mkdirat(&dfd, name.as_c_str(), Mode::from_bits_truncate(0o777))
            .map_err(from_errno)?;
        self.attrs_of(&dfd, &name)
    }

    /// SYMLINK: the target is stored as given and only ever read back (READLINK); the
    /// share itself never resolves it.
    pub fn symlink(
        &self,
        dir: &ShareHandle,
        name: &[u8],
        target: &[u8],
        attrs: &sattr3,
    ) -> R<(ShareHandle, fattr3)> {
        let (dfd, _) = self.directory(dir)?;
        let name = component(name)?;
        let target = CString::new(target).map_err(|_| nfsstat3::NFS3ERR_INVAL)?;
        nix::unistd::symlinkat(target.as_c_str(), &dfd, name.as_c_str()).map_err(from_errno)?;
        let owner = sattr3 {
            uid: attrs.uid,
            gid: attrs.gid,
            ..Default::default()
        };
        let fd = nix::fcntl::openat(
            &dfd,
            name.as_c_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(from_errno)?;
        let st = stat_fd(&fd)?;
        attr::apply(&fd, &st, &owner, || Err(nfsstat3::NFS3ERR_INVAL))?;
        self.attrs_of(&dfd, &name)
    }

    pub fn readlink(&self, h: &ShareHandle) -> R<Vec<u8>> {
        let (fd, st) = self.object(h)?;
        if !is_kind(&st, SFlag::S_IFLNK) {
            return Err(nfsstat3::NFS3ERR_INVAL);
        }
        let target = nix::fcntl::readlinkat(&fd, "").map_err(from_errno)?;
        Ok(target.as_bytes().to_vec())
    }

    /// REMOVE and RMDIR (`nfs3_server` sends both here).
    pub fn remove(&self, dir: &ShareHandle, name: &[u8]) -> R<()> {
        let (dfd, _) = self.directory(dir)?;
        let name = component(name)?;
        let st = stat_at(&dfd, &name)?;
        let how = if is_kind(&st, SFlag::S_IFDIR) {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        nix::unistd::unlinkat(&dfd, name.as_c_str(), how).map_err(from_errno)
    }

    pub fn rename(
        &self,
        from_dir: &ShareHandle,
        from: &[u8],
        to_dir: &ShareHandle,
        to: &[u8],
    ) -> R<()> {
        let (ffd, _) = self.directory(from_dir)?;
        let (tfd, _) = self.directory(to_dir)?;
        let from = component(from)?;
        let to = component(to)?;
        nix::fcntl::renameat(&ffd, from.as_c_str(), &tfd, to.as_c_str()).map_err(from_errno)
    }
}
