//! Copies for snapshots, restores and clones. GNU cp already does everything this needs —
//! reflink when the file system can (xfs with reflink, btrfs: instant, no extra space),
//! otherwise a sparse-aware copy with copy_file_range — and preserves owners, modes, times,
//! xattrs and symlinks for directory volumes. One well-kept tool over hand-written copying.

use std::path::Path;

use crate::error::Result;
use crate::filesystem::run;

/// Copies one image file, keeping holes.
pub fn copy_image(from: &Path, to: &Path) -> Result<()> {
    run(
        "cp",
        &[
            "--reflink=auto".as_ref(),
            "--sparse=always".as_ref(),
            "--".as_ref(),
            from.as_os_str(),
            to.as_os_str(),
        ],
    )
    .map(drop)
}

/// Copies a directory tree's contents into the existing directory `to`.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let mut source = from.as_os_str().to_owned();
    source.push("/.");
    run(
        "cp",
        &[
            "-a".as_ref(),
            "--reflink=auto".as_ref(),
            "--sparse=always".as_ref(),
            "--".as_ref(),
            source.as_os_str(),
            to.as_os_str(),
        ],
    )
    .map(drop)
}
