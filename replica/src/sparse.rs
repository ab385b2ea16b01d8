//! Hole punching: how a discard or a zeroed region gives its space back to the node.

use std::fs::File;
use std::os::fd::AsFd;

/// Deallocates `len` bytes at `offset`; the range reads back as zeros. The file's size does
/// not change.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    nix::fcntl::fallocate(
        file.as_fd(),
        nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset as i64,
        len as i64,
    )
    .map_err(std::io::Error::from)
}
