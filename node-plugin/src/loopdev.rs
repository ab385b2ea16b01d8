//! Loop devices through ioctls (no `losetup` process per call): the block devices that
//! back image volumes.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use nix::errno::Errno;

use crate::error::{Error, Result};

/// Block devices backing image volumes. A trait so higher layers can be tested.
pub trait BlockDevices: Send + Sync + 'static {
    /// Attaches `backing` to a free loop device and returns the device path. Idempotent:
    /// a device already backed by this file is returned as is.
    fn attach(&self, backing: &Path) -> Result<PathBuf>;
    /// The loop device currently backed by `backing`, if any.
    fn find(&self, backing: &Path) -> Result<Option<PathBuf>>;
    /// Detaches the device backed by `backing`, if any. If it is still open the kernel
    /// detaches it on last close.
    fn detach(&self, backing: &Path) -> Result<()>;
    /// Tells the kernel the backing file grew (no-op when not attached).
    fn refresh_size(&self, backing: &Path) -> Result<()>;
    /// Every attached device: its node, its backing file's (device, inode), and the path
    /// the kernel shows for that file (resolved where it was attached: see `find_by_inode`).
    fn attached(&self) -> Result<Vec<Attached>>;
    /// Detaches one device by its node; if it is still open, the kernel detaches it on
    /// last close.
    fn detach_device(&self, device: &Path) -> Result<()>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub device: PathBuf,
    pub backing_dev: u64,
    pub backing_inode: u64,
    /// sysfs `loop/backing_file`: ends with " (deleted)" once the file is unlinked.
    pub backing_path: String,
}

pub struct LoopDevices;

// linux/loop.h
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
// linux/fs.h: _IOR(0x12, 114, size_t)
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const LOOP_MAJOR: u64 = 7;

#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Serializes find-then-attach in this process, so two concurrent stages of one volume
/// cannot end up with two loop devices on the same file.
static ATTACH: Mutex<()> = Mutex::new(());

fn ioctl(
    fd: &File,
    request: libc::c_ulong,
    arg: libc::c_ulong,
) -> std::result::Result<libc::c_int, Errno> {
    // SAFETY: each caller passes a request whose argument is either an integer or a
    // pointer to a live, correctly laid out struct.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) })
}

fn open_errno(path: &Path, write: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|e| {
            Error::sys("open", path)(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        })
}

/// Makes /dev/loopN if devtmpfs has not (containers often lack it).
fn device_node(n: u32) -> Result<PathBuf> {
    let path = PathBuf::from(format!("/dev/loop{n}"));
    match fs::metadata(&path) {
        Ok(m) if m.file_type().is_block_device() => Ok(path),
        _ => {
            let dev = nix::sys::stat::makedev(LOOP_MAJOR, n as u64);
            match nix::sys::stat::mknod(
                &path,
                nix::sys::stat::SFlag::S_IFBLK,
                nix::sys::stat::Mode::from_bits_truncate(0o660),
                dev,
            ) {
                Ok(()) | Err(Errno::EEXIST) => Ok(path),
                Err(e) => Err(Error::sys("mknod", &path)(e)),
            }
        }
    }
}

fn name_field(path: &Path) -> [u8; 64] {
    let mut name = [0u8; 64];
    let bytes = path.as_os_str().as_encoded_bytes();
    let n = bytes.len().min(63);
    name[..n].copy_from_slice(&bytes[..n]);
    name
}

fn configure(
    dev: &File,
    backing: &File,
    backing_path: &Path,
    direct_io: bool,
) -> std::result::Result<(), Errno> {
    let mut config = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size: 0,
        // SAFETY: an all-zero LoopInfo64 is valid (plain integers and byte arrays).
        info: unsafe { std::mem::zeroed() },
        reserved: [0; 8],
    };
    config.info.lo_file_name = name_field(backing_path);
    if direct_io {
        config.info.lo_flags |= LO_FLAGS_DIRECT_IO;
    }
    match ioctl(
        dev,
        LOOP_CONFIGURE,
        &config as *const LoopConfig as libc::c_ulong,
    ) {
        Ok(_) => Ok(()),
        // Kernels before 5.8: the two-step form.
        Err(Errno::EINVAL | Errno::ENOTTY) => {
            ioctl(dev, LOOP_SET_FD, backing.as_raw_fd() as libc::c_ulong)?;
            let info = config.info;
            if let Err(e) = ioctl(
                dev,
                LOOP_SET_STATUS64,
                &info as *const LoopInfo64 as libc::c_ulong,
            ) {
                let _ = ioctl(dev, LOOP_CLR_FD, 0);
                return Err(e);
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

impl LoopDevices {
    /// The attached loop device whose backing file is `backing` — the same inode on the
    /// same device, as the kernel reports it (LOOP_GET_STATUS64), the way `losetup -j`
    /// matches. Not by sysfs's `loop/backing_file` path: the kernel resolves that path in
    /// the mount namespace of whoever attached the device, and once that namespace is gone
    /// (a node plugin container that restarted) it no longer reads as the file's path
    /// (`/var/lib/warren/storage/volumes/<key>/disk.img` becomes `/volumes/<key>/disk.img`,
    /// relative to the dead container's bind mount). Matched by path, a device attached
    /// before a restart was invisible after it: never detached, attached a second time,
    /// and its volume not seen as in use (issue 20).
    fn find_by_inode(backing: &Path) -> Result<Option<PathBuf>> {
        let file = match fs::metadata(backing) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::sys("stat", backing)(Errno::from_raw(
                    e.raw_os_error().unwrap_or(libc::EIO),
                )))
            }
        };
        Ok(Self::list()?
            .into_iter()
            .find(|a| (a.backing_dev, a.backing_inode) == (file.dev(), file.ino()))
            .map(|a| a.device))
    }

    /// Every attached loop device (free ones are not opened).
    fn list() -> Result<Vec<Attached>> {
        let entries = match fs::read_dir("/sys/block") {
            Ok(e) => e,
            Err(e) => {
                return Err(Error::sys("list", "/sys/block")(Errno::from_raw(
                    e.raw_os_error().unwrap_or(libc::EIO),
                )))
            }
        };
        let mut attached = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_prefix("loop"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // Only attached devices have a backing file.
            let Ok(backing_path) = fs::read_to_string(entry.path().join("loop/backing_file"))
            else {
                continue;
            };
            let device = device_node(n)?;
            // Detached since listed: left out.
            let Some((backing_dev, backing_inode)) = open_errno(&device, false)
                .ok()
                .and_then(|dev| backing_inode(&dev))
            else {
                continue;
            };
            attached.push(Attached {
                device,
                backing_dev,
                backing_inode,
                backing_path: backing_path.trim_end_matches('\n').to_string(),
            });
        }
        Ok(attached)
    }
}

/// The (device, inode) of an attached loop device's backing file; None when detached.
fn backing_inode(dev: &File) -> Option<(u64, u64)> {
    // SAFETY: an all-zero LoopInfo64 is valid (plain integers and byte arrays).
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    ioctl(
        dev,
        LOOP_GET_STATUS64,
        &mut info as *mut LoopInfo64 as libc::c_ulong,
    )
    .ok()?;
    Some((info.lo_device, info.lo_inode))
}

fn canonical(backing: &Path) -> Result<PathBuf> {
    backing.canonicalize().map_err(|e| {
        Error::sys("resolve", backing)(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    })
}

/// The loop device reads and writes its backing file with O_DIRECT: no second page cache
/// under the one of the file system on the device, and requests are submitted
/// concurrently instead of one at a time (what a FUSE-backed file needs to perform).
const LO_FLAGS_DIRECT_IO: u32 = 16;

impl LoopDevices {
    /// `attach` with the loop device doing direct I/O on its backing file (the kernel falls
    /// back to buffered I/O where the backing file system cannot).
    pub fn attach_direct(&self, backing: &Path) -> Result<PathBuf> {
        self.attach_with(backing, true)
    }

    fn attach_with(&self, backing: &Path, direct_io: bool) -> Result<PathBuf> {
        let backing = canonical(backing)?;
        let _guard = ATTACH.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(dev) = Self::find_by_inode(&backing)? {
            return Ok(dev);
        }
        let file = open_errno(&backing, true)?;
        let control = open_errno(Path::new("/dev/loop-control"), true)?;
        // Another process may take the free device between GET_FREE and CONFIGURE: retry.
        for _ in 0..16 {
            let n = ioctl(&control, LOOP_CTL_GET_FREE, 0)
                .map_err(Error::sys("LOOP_CTL_GET_FREE", "/dev/loop-control"))?;
            let path = device_node(n as u32)?;
            let dev = open_errno(&path, true)?;
            match configure(&dev, &file, &backing, direct_io) {
                Ok(()) => return Ok(path),
                Err(Errno::EBUSY) => continue,
                Err(e) => return Err(Error::sys("LOOP_CONFIGURE", &path)(e)),
            }
        }
        Err(Error::Core(warren_core::Error::Unavailable(
            "no free loop device after 16 attempts".into(),
        )))
    }
}

impl BlockDevices for LoopDevices {
    fn attach(&self, backing: &Path) -> Result<PathBuf> {
        self.attach_with(backing, false)
    }

    fn find(&self, backing: &Path) -> Result<Option<PathBuf>> {
        Self::find_by_inode(backing)
    }

    fn detach(&self, backing: &Path) -> Result<()> {
        match self.find(backing)? {
            Some(path) => self.detach_device(&path),
            None => Ok(()),
        }
    }

    fn attached(&self) -> Result<Vec<Attached>> {
        Self::list()
    }

    fn detach_device(&self, path: &Path) -> Result<()> {
        let dev = open_errno(path, false)?;
        match ioctl(&dev, LOOP_CLR_FD, 0) {
            Ok(_) | Err(Errno::ENXIO) => Ok(()),
            Err(e) => Err(Error::sys("LOOP_CLR_FD", path)(e)),
        }
    }

    fn refresh_size(&self, backing: &Path) -> Result<()> {
        match self.find(backing)? {
            Some(path) => set_capacity(&path),
            None => Ok(()),
        }
    }
}

/// Tells the loop device `device` to read its backing file's size again (after it grew).
pub fn set_capacity(device: &Path) -> Result<()> {
    let dev = open_errno(device, false)?;
    ioctl(&dev, LOOP_SET_CAPACITY, 0).map_err(Error::sys("LOOP_SET_CAPACITY", device))?;
    Ok(())
}

/// Size in bytes of a block device.
pub fn block_device_size(dev: &Path) -> Result<u64> {
    let file = open_errno(dev, false)?;
    let mut size: u64 = 0;
    ioctl(&file, BLKGETSIZE64, &mut size as *mut u64 as libc::c_ulong)
        .map_err(Error::sys("BLKGETSIZE64", dev))?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Detach(PathBuf);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = LoopDevices.detach(&self.0);
        }
    }

    #[test]
    fn attach_find_grow_detach() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        File::create(&img).unwrap().set_len(32 << 20).unwrap();
        let _guard = Detach(img.clone());
        let dev = LoopDevices.attach(&img).unwrap();
        assert_eq!(
            LoopDevices.attach(&img).unwrap(),
            dev,
            "second attach made a new device"
        );
        assert_eq!(LoopDevices.find(&img).unwrap(), Some(dev.clone()));
        assert_eq!(block_device_size(&dev).unwrap(), 32 << 20);
        OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        LoopDevices.refresh_size(&img).unwrap();
        assert_eq!(block_device_size(&dev).unwrap(), 64 << 20);
        LoopDevices.detach(&img).unwrap();
        assert_eq!(LoopDevices.find(&img).unwrap(), None);
        LoopDevices.detach(&img).unwrap();
    }

    #[test]
    fn concurrent_attaches_share_one_device() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        File::create(&img).unwrap().set_len(16 << 20).unwrap();
        let _guard = Detach(img.clone());
        let devs: Vec<PathBuf> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| LoopDevices.attach(&img).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(devs.windows(2).all(|w| w[0] == w[1]), "{devs:?}");
    }

    /// Issue 20: a device attached from a mount namespace that is gone since (a node plugin
    /// container that restarted) is still found, by inode, from another one.
    #[test]
    fn a_device_attached_from_a_dead_mount_namespace_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let (host, seen) = (dir.path().join("host"), dir.path().join("container"));
        fs::create_dir_all(&host).unwrap();
        fs::create_dir_all(&seen).unwrap();
        let img = host.join("disk.img");
        File::create(&img).unwrap().set_len(16 << 20).unwrap();
        let _guard = Detach(img.clone());
        // Attach through a bind mount that exists only in a short-lived mount namespace.
        let script = format!(
            "mount --bind {} {} && losetup --find --show {}",
            host.display(),
            seen.display(),
            seen.join("disk.img").display()
        );
        let out = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let attached = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let sysfs = Path::new("/sys/block")
            .join(attached.file_name().unwrap())
            .join("loop/backing_file");
        let recorded = fs::read_to_string(sysfs).unwrap();
        assert_ne!(
            Path::new(recorded.trim()),
            img,
            "the kernel's path should no longer name the file (what this test is about)"
        );
        assert_eq!(LoopDevices.find(&img).unwrap(), Some(attached.clone()));
        assert_eq!(
            LoopDevices.attach(&img).unwrap(),
            attached,
            "attached twice"
        );
        LoopDevices.detach(&img).unwrap();
        assert_eq!(LoopDevices.find(&img).unwrap(), None);
    }
}
