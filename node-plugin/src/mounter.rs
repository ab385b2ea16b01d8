//! Mounting, through mount(2) via nix (no `mount` process per call). A trait, so the node
//! service's decisions can be tested apart from the kernel.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Error, Result};

pub trait Mounter: Send + Sync + 'static {
    /// Mounts block device `source` holding `fs_type` at `target`.
    fn mount_device(
        &self,
        source: &Path,
        target: &Path,
        fs_type: &str,
        options: &[String],
    ) -> Result<()>;
    /// Bind-mounts `source` at `target` (directory or file), then remounts read-only and
    /// with the given flags if asked: a bind mount ignores them on the first call.
    fn bind(&self, source: &Path, target: &Path, read_only: bool, options: &[String])
        -> Result<()>;
    /// Unmounts `target`; not mounted or missing is success. Never lazy: a busy mount is
    /// an error for the caller to see, not something to hide.
    fn unmount(&self, target: &Path) -> Result<()>;
}

pub struct SystemMounter;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedOptions {
    pub flags: MsFlags,
    /// File-system-specific options, comma-joined.
    pub data: String,
}

/// Splits CSI mount flags (each item may be "a,b") into mount(2) flags and fs data.
/// Options that would change what is mounted rather than how (bind, move, propagation,
/// remount) are refused: they are Warren's business, not a StorageClass's.
pub fn parse_options(options: &[String]) -> Result<ParsedOptions> {
    let mut parsed = ParsedOptions {
        flags: MsFlags::empty(),
        data: String::new(),
    };
    let mut data = Vec::new();
    for option in options
        .iter()
        .flat_map(|o| o.split(','))
        .map(str::trim)
        .filter(|o| !o.is_empty())
    {
        if option.contains(['\0', '\n']) {
            return Err(invalid(format!(
                "mount option {option:?} contains NUL or a newline"
            )));
        }
        let flag = match option {
            "ro" => MsFlags::MS_RDONLY,
            "rw" => MsFlags::empty(),
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            "strictatime" => MsFlags::MS_STRICTATIME,
            "lazytime" => MsFlags::MS_LAZYTIME,
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "sync" => MsFlags::MS_SYNCHRONOUS,
            "dirsync" => MsFlags::MS_DIRSYNC,
            "suid" | "dev" | "exec" | "async" | "defaults" | "atime" | "diratime" => {
                MsFlags::empty()
            }
            "bind" | "rbind" | "remount" | "move" | "shared" | "rshared" | "private"
            | "rprivate" | "slave" | "rslave" | "unbindable" | "runbindable" | "loop" => {
                return Err(invalid(format!(
                    "mount option {option:?} is not allowed in a volume's mount flags"
                )))
            }
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        parsed.flags |= flag;
    }
    parsed.data = data.join(",");
    Ok(parsed)
}

fn invalid(msg: String) -> Error {
    Error::Core(warren_core::Error::InvalidArgument(msg))
}

fn data(d: &str) -> Option<&str> {
    (!d.is_empty()).then_some(d)
}

impl Mounter for SystemMounter {
    fn mount_device(
        &self,
        source: &Path,
        target: &Path,
        fs_type: &str,
        options: &[String],
    ) -> Result<()> {
        let opts = parse_options(options)?;
        mount(
            Some(source),
            target,
            Some(fs_type),
            opts.flags,
            data(&opts.data),
        )
        .map_err(Error::sys("mount", target))
    }

    fn bind(
        &self,
        source: &Path,
        target: &Path,
        read_only: bool,
        options: &[String],
    ) -> Result<()> {
        let opts = parse_options(options)?;
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(Error::sys("bind mount", target))?;
        let mut flags = opts.flags & !MsFlags::MS_RDONLY;
        if read_only || opts.flags.contains(MsFlags::MS_RDONLY) {
            flags |= MsFlags::MS_RDONLY;
        }
        if !flags.is_empty() {
            let remount = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags;
            if let Err(e) = mount(None::<&str>, target, None::<&str>, remount, None::<&str>) {
                // Never leave a writable mount where a read-only one was asked for.
                let _ = umount2(target, MntFlags::empty());
                return Err(Error::sys("remount", target)(e));
            }
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<()> {
        match umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(Error::sys("unmount", target)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let p = parse_options(&opts(&[
            "noatime,nodev",
            "discard",
            "ro",
            "context=\"system_u:object_r:x\"",
        ]))
        .unwrap();
        assert!(p
            .flags
            .contains(MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_RDONLY));
        assert_eq!(p.data, "discard,context=\"system_u:object_r:x\"");
        for bad in ["bind", "rshared", "remount", "a\nb", "x\0"] {
            assert!(parse_options(&opts(&[bad])).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn read_only_bind_refuses_writes_and_unmount_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        SystemMounter
            .bind(&src, &dst, true, &opts(&["nosuid"]))
            .unwrap();
        let err = std::fs::write(dst.join("f"), b"x").unwrap_err();
        SystemMounter.unmount(&dst).unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        SystemMounter.unmount(&dst).unwrap();
        SystemMounter.unmount(&dir.path().join("missing")).unwrap();
    }
}
