//! The size a file system believes it has, read from its superblock (a pure function of the
//! device's first bytes). Stage compares it with the device size to finish a growth that
//! happened while the volume was not mounted (restore or clone into a larger volume,
//! expansion while detached).

/// Bytes covered by the ext2/3/4 or xfs file system whose first 4 KiB are `head`.
pub fn fs_size_bytes(head: &[u8]) -> Option<u64> {
    ext4_size(head).or_else(|| xfs_size(head))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn ext4_size(head: &[u8]) -> Option<u64> {
    const SB: usize = 1024;
    let magic = u16::from_le_bytes(head.get(SB + 56..SB + 58)?.try_into().ok()?);
    if magic != 0xEF53 {
        return None;
    }
    let blocks_lo = le_u32(head, SB + 4)? as u64;
    let log_block = le_u32(head, SB + 24)?;
    let incompat = le_u32(head, SB + 0x60)?;
    const INCOMPAT_64BIT: u32 = 0x80;
    let blocks_hi = if incompat & INCOMPAT_64BIT != 0 {
        le_u32(head, SB + 0x150)? as u64
    } else {
        0
    };
    let block_size = 1024u64.checked_shl(log_block)?;
    ((blocks_hi << 32) | blocks_lo).checked_mul(block_size)
}

fn xfs_size(head: &[u8]) -> Option<u64> {
    if head.get(0..4)? != b"XFSB" {
        return None;
    }
    let block_size = u32::from_be_bytes(head.get(4..8)?.try_into().ok()?) as u64;
    let data_blocks = u64::from_be_bytes(head.get(8..16)?.try_into().ok()?);
    data_blocks.checked_mul(block_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn make(fs: &str, size: u64) -> Option<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        let ok = Command::new(format!("mkfs.{fs}"))
            .args(if fs == "xfs" {
                ["-q", "-f"]
            } else {
                ["-q", "-F"]
            })
            .arg(&img)
            .status()
            .ok()?
            .success();
        assert!(ok, "mkfs.{fs} failed");
        let mut head = std::fs::read(&img).unwrap();
        head.truncate(4096);
        Some(head)
    }

    #[test]
    fn reads_ext4_and_xfs_sizes_from_real_superblocks() {
        let head =
            make("ext4", 64 << 20).expect("mkfs.ext4 is required (apt-get install e2fsprogs)");
        assert_eq!(fs_size_bytes(&head), Some(64 << 20));
        let head = make("xfs", 320 << 20).expect("mkfs.xfs is required (apt-get install xfsprogs)");
        assert_eq!(fs_size_bytes(&head), Some(320 << 20));
    }

    #[test]
    fn garbage_has_no_size() {
        assert_eq!(fs_size_bytes(&[0u8; 4096]), None);
        assert_eq!(fs_size_bytes(b"XFSB"), None);
    }
}
