//! The FUSE file system itself: a root directory holding one file whose bytes are the
//! target's (the semantics are listed in `mod.rs`). Session threads only parse and
//! dispatch; every request that touches the target runs on the tokio runtime.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, WriteFlags,
};

use crate::target::BlockTarget;

const ROOT_INO: INodeNo = INodeNo::ROOT;
pub(super) const FILE_INO: INodeNo = INodeNo(2);
/// Nothing about the two inodes changes behind the kernel's back: the one change there
/// is, the file growing with its target, is announced (`SizeRefresh::run`).
const TTL: Duration = Duration::from_secs(24 * 3600);

pub(super) struct WarrenFs {
    pub(super) file_name: String,
    pub(super) target: Arc<dyn BlockTarget>,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) direct_io: bool,
    pub(super) max_write: u32,
    pub(super) max_background: u16,
    /// Count of acknowledged writes/discards that were not FUA.
    pub(super) written: Arc<AtomicU64>,
    /// Highest `written` value read before a flush that has completed.
    pub(super) flushed: Arc<AtomicU64>,
    pub(super) mtime: SystemTime,
}

impl WarrenFs {
    fn attr(&self, ino: INodeNo) -> FileAttr {
        let size = if ino == FILE_INO {
            self.target.size()
        } else {
            0
        };
        let (kind, perm, nlink) = if ino == FILE_INO {
            (FileType::RegularFile, 0o600, 1)
        } else {
            (FileType::Directory, 0o755, 2)
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            crtime: self.mtime,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Makes every acknowledged write durable, skipping the round trip when a flush that
    /// started after all of them has already completed.
    fn flush_then(&self, reply: ReplyEmpty) {
        let target = self.target.clone();
        let written = self.written.clone();
        let flushed = self.flushed.clone();
        self.runtime.spawn(async move {
            let seen = written.load(Ordering::Acquire);
            if flushed.load(Ordering::Acquire) >= seen {
                return reply.ok();
            }
            match target.flush().await {
                Ok(()) => {
                    flushed.fetch_max(seen, Ordering::AcqRel);
                    reply.ok()
                }
                Err(e) => {
                    tracing::warn!("fuse flush: {e}");
                    reply.error(Errno::EIO)
                }
            }
        });
    }

    fn discard_then(&self, offset: u64, len: u64, reply: ReplyEmpty) {
        let target = self.target.clone();
        let written = self.written.clone();
        self.runtime.spawn(async move {
            match target.discard(offset, len).await {
                Ok(()) => {
                    written.fetch_add(1, Ordering::AcqRel);
                    reply.ok()
                }
                Err(e) => {
                    tracing::warn!(offset, len, "fuse discard: {e}");
                    reply.error(Errno::EIO)
                }
            }
        });
    }
}

impl Filesystem for WarrenFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_write(self.max_write) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(self.max_write) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(self.max_background);
        let _ = config.set_congestion_threshold(self.max_background / 4 * 3);
        // Async direct I/O lets one O_DIRECT/aio submission (what a loop device does) be
        // split into several concurrent requests instead of one at a time.
        let wanted = InitFlags::FUSE_ASYNC_DIO
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP
            | InitFlags::FUSE_PARALLEL_DIROPS;
        let _ = config.add_capabilities(wanted & config.capabilities());
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == ROOT_INO && name.as_bytes() == self.file_name.as_bytes() {
            reply.entry(&TTL, &self.attr(FILE_INO), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == ROOT_INO || ino == FILE_INO {
            reply.attr(&TTL, &self.attr(ino));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let attr = self.attr(ino);
        if let Some(size) = size {
            if size > attr.size {
                return reply.error(Errno::EFBIG);
            }
            if size < attr.size {
                return reply.error(Errno::EPERM);
            }
        }
        // The kernel may send a mode change without the type bits.
        if mode.is_some_and(|m| m & 0o7777 != u32::from(attr.perm))
            || uid.is_some_and(|u| u != attr.uid)
            || gid.is_some_and(|g| g != attr.gid)
        {
            return reply.error(Errno::EPERM);
        }
        // Time stamps: accepted and ignored (touch must not fail).
        reply.attr(&TTL, &attr);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        let flags = if self.direct_io {
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
        } else {
            // Only this mount writes the file, so cached pages stay valid across opens.
            FopenFlags::FOPEN_KEEP_CACHE
        };
        reply.opened(FileHandle(0), flags);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        let end = self.target.size();
        if offset >= end || size == 0 {
            return reply.data(&[]);
        }
        let len = u64::from(size).min(end - offset) as usize;
        let target = self.target.clone();
        self.runtime.spawn(async move {
            match target.read(offset, len).await {
                Ok(data) => reply.data(&data),
                Err(e) => {
                    tracing::warn!(offset, len, "fuse read: {e}");
                    reply.error(Errno::EIO)
                }
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        let end = self.target.size();
        if offset >= end {
            return reply.error(Errno::EFBIG);
        }
        // A write straddling the end is short, like a file at its size limit.
        let len = (data.len() as u64).min(end - offset) as usize;
        if len == 0 {
            return reply.written(0);
        }
        // The request buffer is reused by the session thread: one copy is unavoidable.
        let data = Bytes::copy_from_slice(&data[..len]);
        // O_SYNC = __O_SYNC | O_DSYNC, and the kernel ORs O_DSYNC into the flags of any
        // DSYNC iocb (RWF_DSYNC, and O_DSYNC/FUA writes), so this bit covers all of them.
        let fua = flags.0 & libc::O_DSYNC != 0;
        let target = self.target.clone();
        let written = self.written.clone();
        self.runtime.spawn(async move {
            match target.write(offset, data, fua).await {
                Ok(()) => {
                    if !fua {
                        written.fetch_add(1, Ordering::AcqRel);
                    }
                    reply.written(len as u32)
                }
                Err(e) => {
                    tracing::warn!(offset, len, fua, "fuse write: {e}");
                    reply.error(Errno::EIO)
                }
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if ino != FILE_INO {
            return reply.ok();
        }
        self.flush_then(reply);
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if ino != FILE_INO {
            return reply.ok();
        }
        self.flush_then(reply);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        let size = self.target.size();
        let Some(end) = offset.checked_add(length) else {
            return reply.error(Errno::EFBIG);
        };
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        match mode & !libc::FALLOC_FL_KEEP_SIZE {
            // Plain allocation: the whole file exists already; growing is refused.
            0 if end > size && !keep_size => reply.error(Errno::EFBIG),
            0 => reply.ok(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE => {
                if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 && !keep_size {
                    // The kernel requires KEEP_SIZE with PUNCH_HOLE.
                    return reply.error(Errno::EINVAL);
                }
                if end > size && !keep_size {
                    return reply.error(Errno::EFBIG);
                }
                // Both read back as zeros afterwards, which is exactly what discard does.
                let end = end.min(size);
                if offset >= end {
                    return reply.ok();
                }
                self.discard_then(offset, end - offset, reply);
            }
            _ => reply.error(Errno::EOPNOTSUPP),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino == ROOT_INO {
            reply.opened(FileHandle(0), FopenFlags::empty());
        } else {
            reply.error(Errno::ENOTDIR);
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT_INO {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (ROOT_INO, FileType::Directory, "."),
            (ROOT_INO, FileType::Directory, ".."),
            (FILE_INO, FileType::RegularFile, self.file_name.as_str()),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Loop devices take their discard granularity from f_bsize.
        let blocks = self.target.size() / 4096;
        reply.statfs(blocks, 0, 0, 2, 0, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EPERM);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(Errno::EPERM);
    }
}
