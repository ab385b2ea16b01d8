//! READDIRPLUS: directory entries with handles and attributes, read in batches.
//!
//! Cookies are the file system's own directory offsets (`d_off`, what telldir returns):
//! ext4 and xfs keep them valid while the directory changes and across restarts, so a
//! listing resumes where it stopped without the server keeping any state. `.` and `..`
//! are left out: `..` of the export root is outside the volume, and clients do not need
//! either.

use std::collections::VecDeque;
use std::ffi::{CStr, CString};
use std::os::fd::{BorrowedFd, IntoRawFd};
use std::sync::Arc;

use nfs3_server::nfs3_types::nfs3::nfsstat3;
use nfs3_server::vfs::{DirEntryPlus, NextResult, ReadDirPlusIterator};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::SFlag;

use super::attr::{fattr, is_kind};
use super::export::Export;
use super::handle::ShareHandle;
use super::status::from_errno;

/// Entries read per batch; a READDIRPLUS reply rarely holds more.
const BATCH: usize = 256;

type Entry = DirEntryPlus<ShareHandle>;

impl Export {
    /// Up to `max` entries after `cookie`, and whether the directory ended.
    pub fn read_dir(
        &self,
        dir: &ShareHandle,
        cookie: u64,
        max: usize,
    ) -> Result<(Vec<Entry>, bool), nfsstat3> {
        let probe = self.open_handle(dir, OFlag::O_PATH)?;
        let st = nix::sys::stat::fstat(&probe).map_err(from_errno)?;
        if !is_kind(&st, SFlag::S_IFDIR) {
            return Err(nfsstat3::NFS3ERR_NOTDIR);
        }
        let fd = self.open_handle(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let stream = DirStream::open(fd.into_raw_fd())?;
        if cookie != 0 {
            stream.seek(cookie);
        }
        let mut out = Vec::new();
        while out.len() < max {
            let Some((name, next)) = stream.next()? else {
                return Ok((out, true));
            };
            if name.as_bytes() == b"." || name.as_bytes() == b".." {
                continue;
            }
            if let Some(entry) = self.entry(stream.fd(), name, next) {
                out.push(entry);
            }
        }
        Ok((out, false))
    }

    fn entry(&self, dir: BorrowedFd<'_>, name: CString, cookie: u64) -> Option<Entry> {
        let st = match nix::sys::stat::fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(_) => return None, // removed since it was listed
        };
        // A mount point inside the volume is listed, but gets no handle (LOOKUP refuses it
        // too).
        let handle = self.handle_of(dir, &name, &st).ok();
        Some(DirEntryPlus {
            fileid: st.st_ino,
            name: name.into_bytes().into(),
            cookie,
            name_attributes: Some(fattr(&st, self.fsid)),
            name_handle: handle,
        })
    }
}

/// A libc directory stream (the only way to get `d_off` without parsing getdents64).
struct DirStream(*mut libc::DIR);

impl DirStream {
    fn open(fd: i32) -> Result<DirStream, nfsstat3> {
        // SAFETY: `fd` is an open directory we own; fdopendir takes it over.
        let dir = unsafe { libc::fdopendir(fd) };
        if dir.is_null() {
            let e = Errno::last();
            // SAFETY: fdopendir failed, so the descriptor is still ours to close.
            unsafe { libc::close(fd) };
            return Err(from_errno(e));
        }
        Ok(DirStream(dir))
    }

    fn seek(&self, cookie: u64) {
        // SAFETY: a live stream; any offset is accepted (a bad one ends the listing).
        unsafe { libc::seekdir(self.0, cookie as libc::c_long) }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the stream's descriptor lives as long as the stream.
        unsafe { BorrowedFd::borrow_raw(libc::dirfd(self.0)) }
    }

    /// The next name and the cookie that resumes after it.
    fn next(&self) -> Result<Option<(CString, u64)>, nfsstat3> {
        Errno::clear();
        // SAFETY: a live stream; the entry is copied out before the next call.
        let entry = unsafe { libc::readdir64(self.0) };
        if entry.is_null() {
            return match Errno::last_raw() {
                0 => Ok(None),
                e => Err(from_errno(Errno::from_raw(e))),
            };
        }
        // SAFETY: readdir64 returned a valid entry with a NUL-terminated name.
        let (name, off) = unsafe {
            (
                CStr::from_ptr((*entry).d_name.as_ptr()).to_owned(),
                (*entry).d_off,
            )
        };
        Ok(Some((name, off as u64)))
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: closes the stream (and its descriptor) once.
        unsafe { libc::closedir(self.0) };
    }
}

/// What `nfs3_server` pulls entries from; it fetches the next batch on a blocking thread
/// when the current one runs out.
pub struct DirIter {
    export: Arc<Export>,
    dir: ShareHandle,
    cookie: u64,
    ready: VecDeque<Entry>,
    done: bool,
}

impl DirIter {
    pub fn new(export: Arc<Export>, dir: ShareHandle, cookie: u64) -> DirIter {
        DirIter {
            export,
            dir,
            cookie,
            ready: VecDeque::new(),
            done: false,
        }
    }

    /// The first batch, so that a bad handle or a file fails the call itself.
    pub async fn prime(mut self) -> Result<DirIter, nfsstat3> {
        self.fill().await?;
        Ok(self)
    }

    async fn fill(&mut self) -> Result<(), nfsstat3> {
        let (export, dir, cookie) = (self.export.clone(), self.dir.clone(), self.cookie);
        let (entries, eof) =
            super::fs::blocking(move || export.read_dir(&dir, cookie, BATCH)).await?;
        if let Some(last) = entries.last() {
            self.cookie = last.cookie;
        }
        self.ready.extend(entries);
        self.done = eof;
        Ok(())
    }
}

impl ReadDirPlusIterator<ShareHandle> for DirIter {
    async fn next(&mut self) -> NextResult<Entry> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return NextResult::Ok(e);
            }
            if self.done {
                return NextResult::Eof;
            }
            if let Err(e) = self.fill().await {
                return NextResult::Err(e);
            }
        }
    }
}
