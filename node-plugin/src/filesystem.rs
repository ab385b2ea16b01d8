//! Making and growing file systems with the standard tools (e2fsprogs, xfsprogs).

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    /// `fsType` from a capability; empty means the default, ext4.
    pub fn parse(s: &str) -> Result<FsType> {
        match s {
            "" | "ext4" => Ok(FsType::Ext4),
            "xfs" => Ok(FsType::Xfs),
            other => Err(Error::Core(warren_core::Error::InvalidArgument(format!(
                "fsType {other:?} is not supported (ext4 or xfs)"
            )))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }
}

/// Runs a program; a failure carries its stderr.
pub fn run(program: &str, args: &[&OsStr]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error::Command {
            program: program.into(),
            status: "not started".into(),
            stderr: e.to_string(),
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Command {
            program: program.into(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// mkfs on a blank device. Lazy init and no discard keep it fast on a fresh image.
pub fn make_fs(dev: &Path, fs: FsType) -> Result<()> {
    let dev = dev.as_os_str();
    match fs {
        FsType::Ext4 => run(
            "mkfs.ext4",
            &[
                "-q".as_ref(),
                "-F".as_ref(),
                "-m".as_ref(),
                "0".as_ref(),
                "-E".as_ref(),
                "lazy_itable_init=1,lazy_journal_init=1,nodiscard".as_ref(),
                dev,
            ],
        ),
        FsType::Xfs => run(
            "mkfs.xfs",
            &["-q".as_ref(), "-f".as_ref(), "-K".as_ref(), dev],
        ),
    }
    .map(drop)
}

/// Grows the mounted file system on `dev` to fill the device.
pub fn grow_fs(dev: &Path, mountpoint: &Path, fs: FsType) -> Result<()> {
    match fs {
        FsType::Xfs => run("xfs_growfs", &["-d".as_ref(), mountpoint.as_os_str()]),
        FsType::Ext4 => run("resize2fs", &[dev.as_os_str()]),
    }
    .map(drop)
}

/// Grows an unmounted ext4 (xfs can only grow mounted: `grow_fs` after the mount).
pub fn grow_fs_offline(dev: &Path, fs: FsType) -> Result<()> {
    if fs == FsType::Xfs {
        return Ok(());
    }
    // e2fsck exits 1 when it fixed something, which is fine here.
    let fsck = Command::new("e2fsck").args(["-f", "-p"]).arg(dev).output();
    match fsck {
        Ok(o) if o.status.code().is_some_and(|c| c <= 1) => {}
        Ok(o) => {
            return Err(Error::Command {
                program: "e2fsck".into(),
                status: o.status.to_string(),
                stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
            })
        }
        Err(e) => {
            return Err(Error::Command {
                program: "e2fsck".into(),
                status: "not started".into(),
                stderr: e.to_string(),
            })
        }
    }
    run("resize2fs", &[dev.as_os_str()]).map(drop)
}

/// The options a volume's file system is mounted with: the CO's, plus what Warren needs.
///
/// xfs gets `nouuid`: a clone or a restored snapshot is a copy of its source's image, so it
/// carries the source's file system UUID, and xfs refuses to mount a second file system
/// with a UUID already mounted ("Filesystem has duplicate UUID") — a clone could never be
/// used beside its source on the node that holds both (issue 20). ext4 has no such check.
/// Mounting with `nouuid` rather than giving each copy a new UUID (`xfs_admin -U`) needs
/// no clean log on a copy taken from a mounted, frozen source, and keeps copies exact.
pub fn mount_options(fs: FsType, from_co: &[String]) -> Vec<String> {
    let mut options = from_co.to_vec();
    let has = |name: &str| {
        from_co
            .iter()
            .flat_map(|o| o.split(','))
            .any(|o| o.trim() == name)
    };
    if fs == FsType::Xfs && !has("nouuid") {
        options.push("nouuid".to_string());
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfs_is_mounted_with_nouuid_once() {
        let co = vec!["noatime".to_string()];
        assert_eq!(mount_options(FsType::Xfs, &co), ["noatime", "nouuid"]);
        assert_eq!(mount_options(FsType::Ext4, &co), ["noatime"]);
        let given = vec!["noatime,nouuid".to_string()];
        assert_eq!(mount_options(FsType::Xfs, &given), ["noatime,nouuid"]);
        assert!(mount_options(FsType::Ext4, &[]).is_empty());
    }
    use crate::fssize::fs_size_bytes;

    fn head(path: &Path) -> Vec<u8> {
        let mut h = std::fs::read(path).unwrap();
        h.truncate(4096);
        h
    }

    #[test]
    fn fs_types() {
        assert_eq!(FsType::parse("").unwrap(), FsType::Ext4);
        assert_eq!(FsType::parse("xfs").unwrap(), FsType::Xfs);
        assert!(FsType::parse("ntfs").is_err());
    }

    #[test]
    fn ext4_grows_offline() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        make_fs(&img, FsType::Ext4).unwrap();
        assert_eq!(fs_size_bytes(&head(&img)), Some(32 << 20));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        grow_fs_offline(&img, FsType::Ext4).unwrap();
        assert_eq!(fs_size_bytes(&head(&img)), Some(64 << 20));
    }

    #[test]
    fn failures_carry_stderr() {
        let err = run("mkfs.ext4", &["/nonexistent/warren/device".as_ref()]).unwrap_err();
        assert!(
            matches!(err, Error::Command { ref stderr, .. } if !stderr.is_empty()),
            "{err}"
        );
    }
}
