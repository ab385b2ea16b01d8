//! Page-cache I/O that never blocks (`preadv2`/`pwritev2` with `RWF_NOWAIT`): a hit is
//! cheaper to serve on the calling thread than to hand to the blocking pool. Used by the
//! replica's data path and by `FileTarget`, so the benchmark's raw baseline gets the same
//! advantage as the engine.

use std::fs::File;
use std::os::fd::AsRawFd;

use bytes::Bytes;

/// `len` bytes at `offset` if the page cache holds all of them; `None` if reading would
/// block or failed (the blocking path then reports the error).
pub(crate) fn read(file: &File, offset: u64, len: usize) -> Option<Bytes> {
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    // SAFETY: the iovec points at `len` bytes of capacity owned by `buf`; the length is set
    // only after the kernel filled all of them.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset as i64, libc::RWF_NOWAIT) };
    if n != len as isize {
        return None;
    }
    unsafe { buf.set_len(len) };
    Some(Bytes::from(buf))
}

pub(crate) enum Write {
    Done,
    /// It would block, or was short: write it (again) through the blocking path.
    WouldBlock,
    /// The file system takes no buffered `RWF_NOWAIT` writes (ext4, tmpfs): stop trying.
    Unsupported,
}

pub(crate) fn write(file: &File, offset: u64, data: &[u8]) -> Write {
    let iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: the iovec points at `data`, which outlives the call; the kernel only reads.
    let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, offset as i64, libc::RWF_NOWAIT) };
    if n == data.len() as isize {
        Write::Done
    } else if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EOPNOTSUPP) {
        Write::Unsupported
    } else {
        Write::WouldBlock
    }
}
