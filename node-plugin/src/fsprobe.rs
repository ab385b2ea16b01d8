//! Which file system a device holds, from its first bytes (a pure function). Stage uses it
//! to decide between mounting and formatting; anything it does not recognise is never
//! formatted over.

use std::io::Read;
use std::path::Path;

use nix::errno::Errno;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Ext4,
    Xfs,
    Btrfs,
    /// Non-zero data that is not a file system Warren mounts (a swap area counts here):
    /// the caller must refuse to format it.
    Unknown,
    /// All zero: a new image.
    Blank,
}

/// How much of the device is read: covers the btrfs superblock at 64 KiB.
pub const PROBE_BYTES: usize = 128 * 1024;

pub fn probe(head: &[u8]) -> Probe {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(1024 + 56, &[0x53, 0xEF]) {
        Probe::Ext4
    } else if at(0, b"XFSB") {
        Probe::Xfs
    } else if at(65536 + 64, b"_BHRfS_M") {
        Probe::Btrfs
    } else if head.len() >= PROBE_BYTES && head.iter().all(|&b| b == 0) {
        Probe::Blank
    } else {
        Probe::Unknown
    }
}

pub fn probe_device(dev: &Path) -> Result<Probe> {
    let mut head = Vec::with_capacity(PROBE_BYTES);
    std::fs::File::open(dev)
        .and_then(|f| f.take(PROBE_BYTES as u64).read_to_end(&mut head))
        .map_err(|e| {
            Error::sys("read", dev)(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        })?;
    Ok(probe(&head))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn image_with(mkfs: &str, args: &[&str], size: u64) -> Probe {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        let ok = Command::new(mkfs)
            .args(args)
            .arg(&img)
            .status()
            .expect(mkfs)
            .success();
        assert!(ok, "{mkfs} failed");
        probe_device(&img).unwrap()
    }

    #[test]
    fn real_file_systems() {
        assert_eq!(
            image_with("mkfs.ext4", &["-q", "-F"], 16 << 20),
            Probe::Ext4
        );
        assert_eq!(image_with("mkfs.xfs", &["-q", "-f"], 320 << 20), Probe::Xfs);
        assert_eq!(image_with("mkswap", &[], 16 << 20), Probe::Unknown);
    }

    #[test]
    fn blank_and_garbage() {
        assert_eq!(probe(&vec![0u8; PROBE_BYTES]), Probe::Blank);
        assert_eq!(
            probe(&[0u8; 10]),
            Probe::Unknown,
            "too little read to call it blank"
        );
        let mut noise = vec![0u8; PROBE_BYTES];
        noise[70_000] = 1;
        assert_eq!(probe(&noise), Probe::Unknown);
    }
}
