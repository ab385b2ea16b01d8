//! The FUSE frontend against the real kernel: needs root and /dev/fuse (and util-linux,
//! e2fsprogs for the loop-device parts). Without them each test says why and returns,
//! unless WARREN_REQUIRE_FUSE=1, where that is a failure.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use warren_replica::frontend::fuse::{self, FuseOptions, FuseVolume};
use warren_replica::{BlockTarget, Error, FileTarget, Result};

const MIB: u64 = 1 << 20;

/// The tests mount, attach loop devices and measure throughput: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether the machine can run these tests; prints why not.
fn can_run(tools: &[&str]) -> bool {
    let missing = if !nix::unistd::geteuid().is_root() {
        Some("not root".to_string())
    } else if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        Some(format!("cannot open /dev/fuse: {e}"))
    } else {
        tools
            .iter()
            .find(|t| which(t).is_none())
            .map(|t| format!("{t} not found"))
    };
    match missing {
        None => true,
        Some(why) => {
            warren_test_support::skip("WARREN_REQUIRE_FUSE", &why);
            false
        }
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file());
    found
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A deterministic pseudo-random pattern (xorshift), different per seed.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Detaches whatever is left mounted on a path when a test fails half-way.
struct MountGuard(PathBuf);

impl MountGuard {
    fn unmount(&mut self) {
        let _ = nix::mount::umount(&self.0);
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        while nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
    }
}

/// A loop device, detached on drop.
struct LoopDevice(Option<String>);

impl LoopDevice {
    /// `direct_io`: None leaves it to losetup's default.
    fn attach(file: &Path, direct_io: Option<bool>) -> Self {
        let mut args = vec!["--find", "--show"];
        match direct_io {
            Some(true) => args.push("--direct-io=on"),
            Some(false) => args.push("--direct-io=off"),
            None => {}
        }
        args.push(file.to_str().unwrap());
        Self(Some(run("losetup", &args)))
    }

    fn path(&self) -> &str {
        self.0.as_deref().unwrap()
    }

    fn detach(&mut self) {
        if let Some(dev) = self.0.take() {
            run("losetup", &["-d", &dev]);
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Some(dev) = self.0.take() {
            let _ = Command::new("losetup").args(["-d", &dev]).status();
        }
    }
}

/// A `FileTarget` that counts what the frontend asks of it, and can be made to fail.
struct Recording {
    inner: FileTarget,
    fua_writes: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    discards: AtomicU64,
    max_write: AtomicU64,
    fail: AtomicBool,
}

impl Recording {
    fn new(inner: FileTarget) -> Self {
        Self {
            inner,
            fua_writes: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            discards: AtomicU64::new(0),
            max_write: AtomicU64::new(0),
            fail: AtomicBool::new(false),
        }
    }

    fn check(&self) -> Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(Error::Unavailable("injected failure".into()));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl BlockTarget for Recording {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    async fn read(&self, offset: u64, len: usize) -> Result<Bytes> {
        self.check()?;
        self.inner.read(offset, len).await
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<()> {
        self.check()?;
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.max_write
            .fetch_max(data.len() as u64, Ordering::SeqCst);
        if fua {
            self.fua_writes.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.write(offset, data, fua).await
    }
    async fn flush(&self) -> Result<()> {
        self.check()?;
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.inner.flush().await
    }
    async fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check()?;
        self.discards.fetch_add(1, Ordering::SeqCst);
        self.inner.discard(offset, len).await
    }
}

fn fallocate(file: &std::fs::File, mode: i32, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: plain syscall on an owned, open descriptor.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, len as i64) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn file_target_through_fuse() {
    let _serial = serial();
    if !can_run(&[]) {
        return;
    }
    for direct_io in [true, false] {
        file_round_trip(FuseOptions {
            direct_io,
            ..FuseOptions::default()
        });
    }
}

fn file_round_trip(options: FuseOptions) {
    eprintln!("file round trip with {options:?}");
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let size = 16 * MIB;
    let backing = dir.path().join("backing.img");
    let target = Arc::new(Recording::new(FileTarget::open(&backing, size).unwrap()));
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _cleanup = MountGuard(mnt.clone());
    let mut vol =
        fuse::mount_with(&mnt, "vol", target.clone(), rt.handle().clone(), options).expect("mount");
    let path = vol.path().to_path_buf();
    assert_eq!(path, mnt.canonicalize().unwrap().join("vol"));

    // The file system: one root-owned 0600 file of the target's size.
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.len(), size);
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    let names: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["vol"]);
    assert!(std::fs::File::create(mnt.join("other")).is_err());
    assert!(std::fs::metadata(mnt.join("other")).is_err());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.contains(&format!(" {} ", mnt.canonicalize().unwrap().display())))
        .expect("mount listed");
    assert!(line.contains("fuse.warren warren"), "{line}");
    assert!(line.contains("default_permissions"), "{line}");
    assert!(!line.contains("allow_other"), "{line}");

    // A second mount on a live one is refused.
    assert!(matches!(
        fuse::mount(&mnt, "vol", target.clone(), rt.handle().clone()),
        Err(Error::Busy(_))
    ));

    // Writes and reads, aligned and not, land in the backing file.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let chunks: [(u64, usize); 4] = [
        (0, 4096),
        (MIB + 17, 300_000),
        (5 * MIB, 2 * MIB as usize),
        (size - 1000, 1000),
    ];
    for (i, (off, len)) in chunks.iter().enumerate() {
        file.write_all_at(&pattern(i as u64, *len), *off).unwrap();
    }
    // Large writes arrive as large requests (1 MiB: the kernel's default cap).
    assert_eq!(target.max_write.load(Ordering::SeqCst), MIB);
    let flushes = target.flushes.load(Ordering::SeqCst);
    file.sync_all().unwrap();
    assert_eq!(
        target.flushes.load(Ordering::SeqCst),
        flushes + 1,
        "fsync → flush"
    );
    // Nothing written since: the next fsync costs no round trip.
    file.sync_data().unwrap();
    assert_eq!(target.flushes.load(Ordering::SeqCst), flushes + 1);
    let raw = std::fs::read(&backing).unwrap();
    for (i, (off, len)) in chunks.iter().enumerate() {
        let want = pattern(i as u64, *len);
        let mut got = vec![0u8; *len];
        file.read_exact_at(&mut got, *off).unwrap();
        assert!(got == want, "chunk {i} via fuse");
        assert!(
            raw[*off as usize..*off as usize + len] == want[..],
            "chunk {i} in backing file"
        );
    }

    // Reads past the end are short or empty, like a file's.
    let mut buf = vec![0u8; 8192];
    assert_eq!(file.read_at(&mut buf, size - 1000).unwrap(), 1000);
    assert_eq!(file.read_at(&mut buf, size).unwrap(), 0);
    assert_eq!(file.read_at(&mut buf, size + MIB).unwrap(), 0);

    // The size never changes.
    let e = file.set_len(size + 4096).unwrap_err();
    assert_eq!(errno(&e), libc::EFBIG, "{e}");
    let e = file.set_len(size - 4096).unwrap_err();
    assert_eq!(errno(&e), libc::EPERM, "{e}");
    let e = file.write_at(b"x", size).unwrap_err();
    assert_eq!(errno(&e), libc::EFBIG, "{e}");
    assert_eq!(file.write_at(&[1u8; 8192], size - 4096).unwrap(), 4096);
    let e = fallocate(&file, 0, size - 4096, 8192).unwrap_err();
    assert_eq!(errno(&e), libc::EFBIG, "{e}");
    fallocate(&file, 0, 0, size).unwrap();
    assert!(OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .is_err());
    assert!(
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .is_err()
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
    assert_eq!(std::fs::metadata(&backing).unwrap().len(), size);

    // Punching a hole discards: zeros in the backing file.
    let discards = target.discards.load(Ordering::SeqCst);
    fallocate(
        &file,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        5 * MIB,
        MIB,
    )
    .unwrap();
    assert_eq!(target.discards.load(Ordering::SeqCst), discards + 1);
    let mut got = vec![1u8; MIB as usize];
    file.read_exact_at(&mut got, 5 * MIB).unwrap();
    assert!(got.iter().all(|b| *b == 0));
    let raw = std::fs::read(&backing).unwrap();
    assert!(raw[5 * MIB as usize..6 * MIB as usize]
        .iter()
        .all(|b| *b == 0));

    // O_DSYNC writes are FUA writes.
    let sync_file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .open(&path)
        .unwrap();
    let fua = target.fua_writes.load(Ordering::SeqCst);
    sync_file.write_all_at(&pattern(9, 65536), 8 * MIB).unwrap();
    assert!(
        target.fua_writes.load(Ordering::SeqCst) > fua,
        "O_DSYNC → fua"
    );
    drop(sync_file);
    let mut got = vec![0u8; 65536];
    file.read_exact_at(&mut got, 8 * MIB).unwrap();
    assert!(got == pattern(9, 65536));

    // Target errors are EIO.
    file.write_all_at(&buf, 12 * MIB).unwrap();
    target.fail.store(true, Ordering::SeqCst);
    // (Not at 12 MiB: without direct_io that range is in the page cache now.)
    let e = file.read_at(&mut buf, 13 * MIB).unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    let e = file.write_at(&buf, 12 * MIB).unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    let e = file.sync_all().unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    target.fail.store(false, Ordering::SeqCst);
    file.sync_all().unwrap();

    // Unmount: refused while the file is open, then clean.
    assert!(matches!(vol.unmount(), Err(Error::Busy(_))));
    assert!(
        std::fs::metadata(&path).is_ok(),
        "still mounted after a refused unmount"
    );
    drop(file);
    vol.unmount().expect("unmount");
    assert!(!path.exists());
    let statfs = nix::sys::statfs::statfs(&mnt).unwrap();
    assert_ne!(statfs.filesystem_type(), nix::sys::statfs::FUSE_SUPER_MAGIC);
    drop(vol);
}

/// A target that takes `delay` per read and write.
struct Slow {
    inner: FileTarget,
    delay: std::time::Duration,
}

#[async_trait::async_trait]
impl BlockTarget for Slow {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    async fn read(&self, offset: u64, len: usize) -> Result<Bytes> {
        tokio::time::sleep(self.delay).await;
        self.inner.read(offset, len).await
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<()> {
        tokio::time::sleep(self.delay).await;
        self.inner.write(offset, data, fua).await
    }
    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }
    async fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.inner.discard(offset, len).await
    }
}

#[test]
fn requests_are_served_concurrently() {
    let _serial = serial();
    if !can_run(&[]) {
        return;
    }
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let delay = std::time::Duration::from_millis(100);
    let target = Arc::new(Slow {
        inner: FileTarget::open(&dir.path().join("backing.img"), 16 * MIB).unwrap(),
        delay,
    });
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _cleanup = MountGuard(mnt.clone());
    let vol = fuse::mount(&mnt, "vol", target, rt.handle().clone()).unwrap();
    let file = Arc::new(
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(vol.path())
            .unwrap(),
    );
    const N: u64 = 8;
    for write in [true, false] {
        let start = Instant::now();
        let threads: Vec<_> = (0..N)
            .map(|i| {
                let file = file.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![i as u8; 65536];
                    if write {
                        file.write_all_at(&buf, i * MIB).unwrap();
                    } else {
                        file.read_exact_at(&mut buf, i * MIB).unwrap();
                        assert!(buf.iter().all(|b| *b == i as u8));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let elapsed = start.elapsed();
        eprintln!(
            "{N} concurrent {} of a {delay:?} target: {elapsed:?}",
            if write { "writes" } else { "reads" }
        );
        // One at a time would take N × delay.
        assert!(
            elapsed < delay * (N as u32) / 2,
            "requests were serialized: {elapsed:?}"
        );
    }
}

#[test]
fn drop_while_open_detaches_lazily() {
    let _serial = serial();
    if !can_run(&[]) {
        return;
    }
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let target = Arc::new(FileTarget::open(&dir.path().join("backing.img"), 4 * MIB).unwrap());
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _cleanup = MountGuard(mnt.clone());
    let vol = fuse::mount(&mnt, "vol", target, rt.handle().clone()).unwrap();
    let path = vol.path().to_path_buf();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    drop(vol);
    // Out of the tree at once...
    assert!(!path.exists());
    assert_ne!(
        nix::sys::statfs::statfs(&mnt).unwrap().filesystem_type(),
        nix::sys::statfs::FUSE_SUPER_MAGIC
    );
    // ...but whoever holds the file (a loop device) is still served until it lets go.
    file.write_all_at(b"still here", 4096).unwrap();
    let mut buf = [0u8; 10];
    file.read_exact_at(&mut buf, 4096).unwrap();
    assert_eq!(&buf, b"still here");
    file.sync_all().unwrap();
    drop(file);
    // And the same mount point takes a new mount.
    let target = Arc::new(FileTarget::open(&dir.path().join("backing.img"), 4 * MIB).unwrap());
    let mut vol = fuse::mount(&mnt, "vol", target, rt.handle().clone()).unwrap();
    let mut buf = [0u8; 10];
    std::fs::File::open(vol.path())
        .unwrap()
        .read_exact_at(&mut buf, 4096)
        .unwrap();
    assert_eq!(&buf, b"still here");
    vol.unmount().unwrap();
}

/// How much a loop device overlaps requests to a slow (networked-like) target: 8 parallel
/// readers and writers of 64 KiB blocks against a target with 5 ms per request.
#[test]
fn loop_concurrency_on_slow_target() {
    let _serial = serial();
    if !can_run(&["losetup", "dd"]) {
        return;
    }
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let delay = std::time::Duration::from_millis(5);
    for dio in [true, false] {
        let target = Arc::new(Slow {
            inner: FileTarget::open(&dir.path().join(format!("b-{dio}.img")), 64 * MIB).unwrap(),
            delay,
        });
        let mnt = dir.path().join(format!("mnt-{dio}"));
        std::fs::create_dir(&mnt).unwrap();
        let _cleanup = MountGuard(mnt.clone());
        let vol = fuse::mount(&mnt, "disk.img", target, rt.handle().clone()).unwrap();
        let dev = LoopDevice::attach(vol.path(), Some(dio));
        let mut line = format!("loop dio={dio:<5} 8 × 16 × 64 KiB, {delay:?}/request:");
        for write in [true, false] {
            let start = Instant::now();
            let children: Vec<_> = (0..8)
                .map(|i| {
                    let (dev_arg, other, flag, pos) = if write {
                        (
                            format!("of={}", dev.path()),
                            "if=/dev/zero",
                            "oflag=direct",
                            "seek",
                        )
                    } else {
                        (
                            format!("if={}", dev.path()),
                            "of=/dev/null",
                            "iflag=direct",
                            "skip",
                        )
                    };
                    Command::new("dd")
                        .args([
                            dev_arg.as_str(),
                            other,
                            "bs=64k",
                            "count=16",
                            flag,
                            &format!("{pos}={}", i * 64),
                            "status=none",
                        ])
                        .spawn()
                        .unwrap()
                })
                .collect();
            for mut c in children {
                assert!(c.wait().unwrap().success());
            }
            let elapsed = start.elapsed();
            line += &format!(
                "  {} {elapsed:.0?} ({:.0} IOPS)",
                if write { "write" } else { "read" },
                128.0 / elapsed.as_secs_f64()
            );
        }
        eprintln!("{line}");
        drop(dev);
        drop(vol);
    }
}

/// Mounts, then dies without unmounting: run as a child process by `stale_mount_is_cleaned`.
#[test]
fn crash_child_helper() {
    let Ok(mnt) = std::env::var("WARREN_FUSE_CRASH_CHILD") else {
        return;
    };
    let rt = runtime();
    let dir = Path::new(&mnt).parent().unwrap();
    let target = Arc::new(FileTarget::open(&dir.join("backing.img"), 4 * MIB).unwrap());
    let vol = fuse::mount(Path::new(&mnt), "vol", target, rt.handle().clone()).unwrap();
    std::fs::write(dir.join("ready"), vol.path().to_str().unwrap()).unwrap();
    std::process::abort();
}

#[test]
fn stale_mount_is_cleaned() {
    let _serial = serial();
    if !can_run(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _cleanup = MountGuard(mnt.clone());
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child_helper",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WARREN_FUSE_CRASH_CHILD", &mnt)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child should have aborted");
    assert!(dir.path().join("ready").exists(), "the child did not mount");
    let e = nix::sys::statfs::statfs(&mnt).unwrap_err();
    assert_eq!(
        e,
        nix::errno::Errno::ENOTCONN,
        "a dead mount is left behind"
    );

    let rt = runtime();
    let target = Arc::new(FileTarget::open(&dir.path().join("backing.img"), 4 * MIB).unwrap());
    let mut vol = fuse::mount(&mnt, "vol", target, rt.handle().clone()).expect("remount");
    assert_eq!(std::fs::metadata(vol.path()).unwrap().len(), 4 * MIB);
    vol.unmount().unwrap();
    // Nothing stacked is left: the path is a plain directory again.
    assert!(nix::sys::statfs::statfs(&mnt).is_ok());
    assert!(std::fs::read_dir(&mnt).unwrap().next().is_none());
}

#[test]
fn ext4_on_loop_over_fuse() {
    let _serial = serial();
    if !can_run(&["losetup", "mkfs.ext4", "mount", "umount"]) {
        return;
    }
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let size = 256 * MIB;
    let target = Arc::new(Recording::new(
        FileTarget::open(&dir.path().join("backing.img"), size).unwrap(),
    ));
    let mnt = dir.path().join("fuse");
    let fs_dir = dir.path().join("fs");
    std::fs::create_dir(&mnt).unwrap();
    std::fs::create_dir(&fs_dir).unwrap();
    // Declared in this order so that they are dropped (cleaned) in reverse: file system,
    // loop device, FUSE volume, stray FUSE mount.
    let _fuse_cleanup = MountGuard(mnt.clone());
    let vol: FuseVolume =
        fuse::mount(&mnt, "disk.img", target.clone(), rt.handle().clone()).unwrap();
    let mut dev = LoopDevice::attach(vol.path(), Some(true));
    let mut fs_mount = MountGuard(fs_dir.clone());

    run("mkfs.ext4", &["-q", "-F", dev.path()]);
    run("mount", &[dev.path(), fs_dir.to_str().unwrap()]);
    let data = pattern(42, 6 * MIB as usize + 1234);
    std::fs::write(fs_dir.join("data.bin"), &data).unwrap();
    std::fs::create_dir(fs_dir.join("sub")).unwrap();
    std::fs::write(fs_dir.join("sub/small"), b"hello warren").unwrap();
    run("sync", &[]);
    run("umount", &[fs_dir.to_str().unwrap()]);
    dev.detach();

    let mut dev = LoopDevice::attach(vol.path(), Some(true));
    run("mount", &[dev.path(), fs_dir.to_str().unwrap()]);
    assert!(std::fs::read(fs_dir.join("data.bin")).unwrap() == data);
    assert_eq!(
        std::fs::read(fs_dir.join("sub/small")).unwrap(),
        b"hello warren"
    );
    // The file system's flushes reach the target as flushes.
    assert!(
        target.flushes.load(Ordering::SeqCst) > 0,
        "no flush reached the target"
    );
    // Discard reaches the target (loop → fallocate(PUNCH_HOLE | KEEP_SIZE)).
    std::fs::remove_file(fs_dir.join("data.bin")).unwrap();
    let discards = target.discards.load(Ordering::SeqCst);
    if which("fstrim").is_some() {
        run("fstrim", &[fs_dir.to_str().unwrap()]);
        assert!(
            target.discards.load(Ordering::SeqCst) > discards,
            "fstrim did not reach the target"
        );
    }
    fs_mount.unmount();
    dev.detach();
    drop(vol);
    assert!(!mnt.join("disk.img").exists());
}

/// Sequential 1 MiB direct I/O on a loop device, in MB/s. The device is written once first
/// so that every measured pass overwrites allocated blocks (the first write into a sparse
/// backing file measures the host file system's allocation, and is very noisy here), then
/// each figure is the median of three passes.
fn dd_throughput(dev: &str, total_mib: u64) -> Throughput {
    let count = format!("count={total_mib}");
    let of = format!("of={dev}");
    let iff = format!("if={dev}");
    let mbps = |start: Instant| total_mib as f64 * 1.048_576 / start.elapsed().as_secs_f64();
    let write = |extra: &[&str]| {
        let mut args = vec![
            "if=/dev/zero",
            &of,
            "bs=1M",
            &count,
            "oflag=direct",
            "status=none",
        ];
        args.extend_from_slice(extra);
        let start = Instant::now();
        run("dd", &args);
        mbps(start)
    };
    let read = || {
        let start = Instant::now();
        run(
            "dd",
            &[
                &iff,
                "of=/dev/null",
                "bs=1M",
                &count,
                "iflag=direct",
                "status=none",
            ],
        );
        mbps(start)
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let first_write = write(&["conv=fsync"]);
    let iops = |args: &[&str]| {
        let start = Instant::now();
        run("dd", args);
        8192.0 / start.elapsed().as_secs_f64()
    };
    let write_4k = iops(&[
        "if=/dev/zero",
        &of,
        "bs=4k",
        "count=8192",
        "oflag=direct",
        "status=none",
    ]);
    let read_4k = iops(&[
        &iff,
        "of=/dev/null",
        "bs=4k",
        "count=8192",
        "iflag=direct",
        "status=none",
    ]);
    Throughput {
        first_write,
        write_4k,
        read_4k,
        write: median((0..3).map(|_| write(&[])).collect()),
        write_fsync: median((0..3).map(|_| write(&["conv=fsync"])).collect()),
        read: median((0..3).map(|_| read()).collect()),
    }
}

struct Throughput {
    first_write: f64,
    write_4k: f64,
    read_4k: f64,
    write: f64,
    write_fsync: f64,
    read: f64,
}

/// Loop device direct I/O as `losetup` sets it up without `--direct-io`.
fn loop_dio(dev: &LoopDevice) -> bool {
    let name = dev.path().trim_start_matches("/dev/");
    std::fs::read_to_string(format!("/sys/block/{name}/loop/dio"))
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
}

#[test]
fn throughput_fuse_vs_raw() {
    let _serial = serial();
    if !can_run(&["losetup", "dd"]) {
        return;
    }
    let total_mib: u64 = std::env::var("WARREN_FUSE_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let size = total_mib * MIB;
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut results = Vec::new();

    for loop_dio in [true, false] {
        let raw = dir.path().join(format!("raw-{loop_dio}.img"));
        FileTarget::open(&raw, size).unwrap();
        let dev = LoopDevice::attach(&raw, Some(loop_dio));
        results.push((
            format!("raw file, loop dio={loop_dio}"),
            dd_throughput(dev.path(), total_mib),
        ));
    }

    let default_threads = FuseOptions::default().threads;
    let variants = [
        (true, default_threads, Some(true)),
        (true, 1, Some(true)),
        (false, default_threads, Some(true)),
        (true, default_threads, None),
        (false, default_threads, None),
    ];
    for (i, (direct_io, threads, dio)) in variants.into_iter().enumerate() {
        let backing = dir.path().join(format!("fuse-{i}.img"));
        let target = Arc::new(FileTarget::open(&backing, size).unwrap());
        let mnt = dir.path().join(format!("mnt-{i}"));
        std::fs::create_dir(&mnt).unwrap();
        let _cleanup = MountGuard(mnt.clone());
        let options = FuseOptions {
            direct_io,
            threads,
            ..FuseOptions::default()
        };
        let vol = fuse::mount_with(&mnt, "disk.img", target, rt.handle().clone(), options).unwrap();
        let dev = LoopDevice::attach(vol.path(), dio);
        let name = format!(
            "fuse direct_io={direct_io} threads={threads}, loop dio={}{}",
            loop_dio(&dev),
            if dio.is_none() { " (default)" } else { "" }
        );
        results.push((name, dd_throughput(dev.path(), total_mib)));
        drop(dev);
        drop(vol);
    }
    eprintln!(
        "direct I/O on a loop device: sequential 1 MiB over {total_mib} MiB in MB/s, \
         then 4 KiB queue-depth-1 IOPS"
    );
    for (name, t) in &results {
        eprintln!(
            "  {name:<56} first write+fsync {:>6.0}  write {:>6.0}  write+fsync {:>6.0}  \
             read {:>6.0}  | 4k write {:>6.0}  4k read {:>6.0}",
            t.first_write, t.write, t.write_fsync, t.read, t.write_4k, t.read_4k
        );
    }
}
