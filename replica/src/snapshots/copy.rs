//! Copying a replica's data file into a snapshot: a reflink (`FICLONE`) where the file
//! system shares blocks (xfs with reflink, btrfs): instant, and no space is taken until
//! either side changes. Elsewhere only the data regions are copied (`SEEK_DATA` /
//! `SEEK_HOLE`), and of those only the blocks that are not all zeros, so the copy is as
//! sparse as the replica.
//!
//! Written over nix calls rather than running `cp --reflink=auto --sparse=always` as the
//! local volumes do (node-plugin/src/copy.rs): the source is a file the replica holds open
//! under a lock that keeps its I/O out (it may have no path left: a replica removed while
//! its snapshot is taken), and `warren replica` runs standalone, on hosts where no
//! coreutils are promised.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::unistd::{lseek, Whence};

/// Makes `to` (empty, freshly created) a copy of the first `size` bytes of `from`.
/// Returns the bytes of data copied (0 for a reflink, which copies none).
pub(crate) fn copy_data(from: &File, to: &File, size: u64) -> io::Result<u64> {
    if reflink(from, to).is_ok() {
        to.set_len(size)?;
        return Ok(0);
    }
    to.set_len(size)?;
    let mut copied = 0;
    for (start, end) in data_extents(from, size)? {
        copy_range(from, to, start, end - start)?;
        copied += end - start;
    }
    Ok(copied)
}

/// `FICLONE`: `to` shares all of `from`'s blocks. Fails where the file system cannot.
fn reflink(from: &File, to: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its argument; both are valid open
    // files for the duration of the call, and nothing is read from or written to memory.
    let rc = unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE as _, from.as_raw_fd()) };
    Errno::result(rc).map(drop).map_err(io::Error::from)
}

/// The data regions of the first `size` bytes of `file`, as `[start, end)` byte ranges,
/// in order. Holes are left out (a file system without `SEEK_DATA` reports the whole file
/// as data, which is merely slower).
pub fn data_extents(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let end = size as i64;
    let mut out = Vec::new();
    let mut pos = 0i64;
    while pos < end {
        let start = match lseek(file.as_fd(), pos, Whence::SeekData) {
            Ok(start) => start,
            Err(Errno::ENXIO) => break, // no data after `pos`
            Err(e) => return Err(e.into()),
        };
        if start >= end {
            break;
        }
        let stop = match lseek(file.as_fd(), start, Whence::SeekHole) {
            Ok(stop) => stop.min(end),
            Err(Errno::ENXIO) => end,
            Err(e) => return Err(e.into()),
        };
        if stop <= start {
            break;
        }
        out.push((start as u64, stop as u64));
        pos = stop;
    }
    Ok(out)
}

/// Copies `len` bytes at `offset` through a buffer, leaving all-zero blocks unwritten
/// (the new file reads zeros there already, and stays sparse). Not `copy_file_range`:
/// nix offers it only behind a feature this crate does not build with, and where it
/// matters most (xfs, btrfs) the reflink above has already done the copy.
fn copy_range(from: &File, to: &File, offset: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut done = 0;
    while done < len {
        let n = ((len - done) as usize).min(buf.len());
        let chunk = &mut buf[..n];
        from.read_exact_at(chunk, offset + done)?;
        for (i, block) in chunk.chunks(BLOCK).enumerate() {
            if block.iter().any(|&b| b != 0) {
                to.write_all_at(block, offset + done + (i * BLOCK) as u64)?;
            }
        }
        done += n as u64;
    }
    Ok(())
}

const COPY_BUFFER: usize = 1 << 20;
const BLOCK: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_file_is_copied_with_its_holes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let from = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&a)
            .unwrap();
        let size = 64u64 << 20;
        from.set_len(size).unwrap();
        from.write_all_at(&[7u8; 8192], 1 << 20).unwrap();
        from.write_all_at(&[9u8; 4096], size - 4096).unwrap();
        let to = File::create(&b).unwrap();
        copy_data(&from, &to, size).unwrap();
        to.sync_all().unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let extents = data_extents(&from, size).unwrap();
        assert!(extents.len() >= 2, "{extents:?}");
        assert!(extents.iter().map(|(s, e)| e - s).sum::<u64>() < size / 2);
    }
}
