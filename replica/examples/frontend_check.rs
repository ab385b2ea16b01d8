//! End-to-end check of a kernel block-device frontend, meant to run as root inside a kernel
//! lab guest (lab/run-guest.sh; see replica/tests/kernel_lab.rs), where `nbd` / `ublk_drv`
//! are loaded:
//!
//! ```text
//! frontend_check --frontend ublk|nbd --backing /tmp/fc [--mode file|engine|both]
//!                [--size-mib 32] [--nbd-device /dev/nbd0] [--mkfs /sbin/mkfs.ext4]
//!                [--queues 2] [--depth 16] [--block-size 4096|512]
//! ```
//!
//! For each mode it attaches the device and checks, printing one `PASS name (secs)` or
//! `FAIL name: why` line per check and exiting 0 only if every check passed:
//! - `file`: a `FileTarget` at `BACKING.img`;
//! - `engine`: two `ReplicaService`s on 127.0.0.1 (roots under `BACKING.replicas/`), each
//!   behind a TCP forwarder that can be cut, and an `Engine` with both as members.
//!
//! Checks: concurrent O_DIRECT pattern writes and reads through the device (several threads,
//! so the queue has many requests in flight); the same data read from the target directly;
//! mkfs.ext4 + mount + file write + sync + remount + read back (when a mkfs.ext4 binary is
//! found); for the engine, one replica's connections cut in the middle of a stream of
//! O_DIRECT writes, after which everything must still read back and the surviving replica's
//! data file must hold it; and a clean detach.

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warren_replica::engine::Engine;
use warren_replica::frontend::{nbd, ublk};
use warren_replica::{BlockTarget, FileTarget};

#[path = "../tests/common/mod.rs"]
mod common;

const MIB: u64 = 1 << 20;

struct Args {
    frontend: String,
    backing: PathBuf,
    mode: String,
    size: u64,
    nbd_device: PathBuf,
    mkfs: Option<PathBuf>,
    queues: u16,
    depth: u16,
    block_size: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        frontend: String::new(),
        backing: PathBuf::new(),
        mode: "both".into(),
        size: 32 * MIB,
        nbd_device: "/dev/nbd0".into(),
        mkfs: [
            "/sbin/mkfs.ext4",
            "/usr/sbin/mkfs.ext4",
            "/opt/bin/mkfs.ext4",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists()),
        queues: 2,
        depth: 16,
        block_size: 4096,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--frontend" => args.frontend = value()?,
            "--backing" => args.backing = value()?.into(),
            "--mode" => args.mode = value()?,
            "--size-mib" => args.size = value()?.parse::<u64>().map_err(|e| e.to_string())? * MIB,
            "--nbd-device" => args.nbd_device = value()?.into(),
            "--mkfs" => {
                let v = value()?;
                args.mkfs = if v == "none" { None } else { Some(v.into()) };
            }
            "--queues" => args.queues = value()?.parse().map_err(|e| format!("{e}"))?,
            "--depth" => args.depth = value()?.parse().map_err(|e| format!("{e}"))?,
            "--block-size" => args.block_size = value()?.parse().map_err(|e| format!("{e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !matches!(args.frontend.as_str(), "ublk" | "nbd") {
        return Err("--frontend ublk|nbd is required".into());
    }
    if args.backing.as_os_str().is_empty() {
        return Err("--backing PATH is required".into());
    }
    if !matches!(args.mode.as_str(), "file" | "engine" | "both") {
        return Err("--mode must be file, engine or both".into());
    }
    Ok(args)
}

/// Counts and prints check results.
#[derive(Default)]
struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    fn record<T>(&mut self, name: &str, started: Instant, result: Result<T, String>) -> Option<T> {
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(v) => {
                self.passed += 1;
                println!("PASS {name} ({secs:.2}s)");
                Some(v)
            }
            Err(why) => {
                self.failed += 1;
                println!("FAIL {name} ({secs:.2}s): {why}");
                None
            }
        }
    }
}

/// Wraps a target and records the most requests it ever had in flight at once. Writes are
/// held for a few milliseconds so that requests the kernel sends together overlap here.
struct Counting {
    inner: Arc<dyn BlockTarget>,
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Counting {
    fn enter(&self) -> CountGuard<'_> {
        let n = self.now.fetch_add(1, Ordering::AcqRel) + 1;
        self.max.fetch_max(n, Ordering::AcqRel);
        CountGuard(&self.now)
    }
}

struct CountGuard<'a>(&'a AtomicUsize);

impl Drop for CountGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait::async_trait]
impl BlockTarget for Counting {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    async fn read(&self, offset: u64, len: usize) -> warren_replica::Result<bytes::Bytes> {
        let _in = self.enter();
        self.inner.read(offset, len).await
    }
    async fn write(
        &self,
        offset: u64,
        data: bytes::Bytes,
        fua: bool,
    ) -> warren_replica::Result<()> {
        let _in = self.enter();
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.inner.write(offset, data, fua).await
    }
    async fn flush(&self) -> warren_replica::Result<()> {
        let _in = self.enter();
        self.inner.flush().await
    }
    async fn discard(&self, offset: u64, len: u64) -> warren_replica::Result<()> {
        let _in = self.enter();
        self.inner.discard(offset, len).await
    }
}

enum Attached {
    Ublk(ublk::UblkDevice),
    Nbd(nbd::KernelNbd),
}

impl Attached {
    fn path(&self) -> PathBuf {
        match self {
            Attached::Ublk(d) => d.device().to_path_buf(),
            Attached::Nbd(d) => d.device().to_path_buf(),
        }
    }

    async fn detach(self) -> Result<(), String> {
        match self {
            Attached::Ublk(d) => d.detach().await.map_err(|e| e.to_string()),
            Attached::Nbd(d) => d.detach().await.map_err(|e| e.to_string()),
        }
    }
}

async fn attach(args: &Args, target: Arc<dyn BlockTarget>) -> Result<Attached, String> {
    match args.frontend.as_str() {
        "ublk" => {
            let options = ublk::UblkOptions {
                queues: args.queues,
                queue_depth: args.depth,
                logical_block_size: args.block_size,
                ..Default::default()
            };
            let dev = ublk::attach_async(target, options)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "info: {} attached, {} queue(s), depth {}, logical block {}",
                dev.device().display(),
                dev.queues(),
                args.depth,
                args.block_size
            );
            Ok(Attached::Ublk(dev))
        }
        _ => {
            let dev = nbd::attach_kernel(&args.nbd_device, target).map_err(|e| e.to_string())?;
            // The kernel sizes the disk when NBD_DO_IT starts; wait for it.
            dev.started(Duration::from_secs(10))
                .await
                .map_err(|e| e.to_string())?;
            println!("info: {} attached", args.nbd_device.display());
            Ok(Attached::Nbd(dev))
        }
    }
}

/// A page-aligned buffer for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: `len` is non-zero for every caller.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Aligned { ptr, layout }
    }
    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` holds `layout.size()` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// Deterministic bytes for (`seed`, `offset`): every 8 bytes hold a mix of both.
fn pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    (0..len / 8)
        .flat_map(|i| {
            let at = offset + 8 * i as u64;
            (at.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed).to_le_bytes()
        })
        .collect()
}

fn open_direct(device: &Path, extra: i32) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT | extra)
        .open(device)
        .map_err(|e| format!("open {} O_DIRECT: {e}", device.display()))
}

fn direct_write(file: &std::fs::File, offset: u64, data: &[u8]) -> Result<(), String> {
    let mut buf = Aligned::new(data.len());
    buf.as_mut_slice().copy_from_slice(data);
    file.write_all_at(buf.as_slice(), offset)
        .map_err(|e| format!("O_DIRECT write at {offset}: {e}"))
}

fn direct_read(file: &std::fs::File, offset: u64, len: usize) -> Result<Vec<u8>, String> {
    let mut buf = Aligned::new(len);
    file.read_exact_at(buf.as_mut_slice(), offset)
        .map_err(|e| format!("O_DIRECT read at {offset}: {e}"))?;
    Ok(buf.as_slice().to_vec())
}

/// The (offset, len) chunks of the raw check: `THREADS` threads, each with its own chunks
/// spread over the device.
const THREADS: u64 = 4;
const CHUNKS: u64 = 4;
const CHUNK: usize = 64 << 10;

fn raw_chunks(size: u64, thread: u64) -> Vec<u64> {
    let stride = size / (THREADS * CHUNKS);
    (0..CHUNKS)
        .map(|c| (c * THREADS + thread) * stride / 4096 * 4096)
        .collect()
}

/// Concurrent O_DIRECT writes then reads (each thread its own chunks), compared.
fn raw_check(device: &Path, size: u64, seed: u64) -> Result<(), String> {
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let device = device.to_path_buf();
            std::thread::spawn(move || -> Result<(), String> {
                let file = open_direct(&device, 0)?;
                for &off in &raw_chunks(size, t) {
                    direct_write(&file, off, &pattern(seed, off, CHUNK))?;
                }
                file.sync_all().map_err(|e| format!("fsync: {e}"))?;
                for &off in &raw_chunks(size, t) {
                    if direct_read(&file, off, CHUNK)? != pattern(seed, off, CHUNK) {
                        return Err(format!("data read back at {off} differs"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| "raw I/O thread panicked".to_string())??;
    }
    // The last block of the device, to check its size end to end.
    let file = open_direct(device, 0)?;
    let last = size - 4096;
    direct_write(&file, last, &pattern(seed, last, 4096))?;
    if direct_read(&file, last, 4096)? != pattern(seed, last, 4096) {
        return Err("last block differs".into());
    }
    let mut past = Aligned::new(4096);
    match file.read_at(past.as_mut_slice(), size) {
        Ok(0) => Ok(()),
        other => Err(format!("read past the end returned {other:?}")),
    }
}

/// The raw check's data, read from the target itself (not through the kernel).
async fn target_has_raw(target: &dyn BlockTarget, size: u64, seed: u64) -> Result<(), String> {
    for t in 0..THREADS {
        for off in raw_chunks(size, t) {
            let data = target
                .read(off, CHUNK)
                .await
                .map_err(|e| format!("target read at {off}: {e}"))?;
            if data != pattern(seed, off, CHUNK) {
                return Err(format!(
                    "target data at {off} differs from what was written"
                ));
            }
        }
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// mkfs.ext4, mount, write a file, sync, unmount, mount again, read it back.
fn ext4_check(mkfs: &Path, device: &Path, mnt: &Path, seed: u64) -> Result<(), String> {
    std::fs::create_dir_all(mnt).map_err(|e| e.to_string())?;
    run(Command::new(mkfs).args(["-F", "-q", "-m", "0"]).arg(device))?;
    let mount = || {
        run(Command::new("mount")
            .args(["-t", "ext4"])
            .arg(device)
            .arg(mnt))
    };
    mount()?;
    let data = pattern(seed, 0, 1 << 20);
    let file = mnt.join("data.bin");
    let written = (|| -> Result<(), String> {
        std::fs::write(&file, &data).map_err(|e| format!("write {}: {e}", file.display()))?;
        std::fs::File::open(&file)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("fsync: {e}"))?;
        run(&mut Command::new("sync"))
    })();
    run(Command::new("umount").arg(mnt))?;
    written?;
    // Nothing cached survives the unmount: the read below comes from the device.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    mount()?;
    let back = std::fs::read(&file).map_err(|e| format!("read {}: {e}", file.display()));
    run(Command::new("umount").arg(mnt))?;
    if back? != data {
        return Err("file read back after remount differs".into());
    }
    Ok(())
}

/// One replica's connections are cut while a writer streams O_DIRECT|O_DSYNC writes; all
/// of them must complete and read back, with the engine down to the other replica.
async fn cut_check(
    device: &Path,
    engine: &Engine,
    replicas: &[common::Replica],
    seed: u64,
    base: u64,
) -> Result<Vec<u64>, String> {
    const WRITES: usize = 48;
    const LEN: usize = 16 << 10;
    let offsets: Vec<u64> = (0..WRITES as u64).map(|i| base + i * LEN as u64).collect();
    let progress = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (device, offsets, progress) = (device.to_path_buf(), offsets.clone(), progress.clone());
        std::thread::spawn(move || -> Result<(), String> {
            let file = open_direct(&device, libc::O_DSYNC)?;
            for &off in &offsets {
                direct_write(&file, off, &pattern(seed, off, LEN))?;
                progress.fetch_add(1, Ordering::AcqRel);
            }
            Ok(())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.load(Ordering::Acquire) < WRITES / 3 && !writer.is_finished() {
        if Instant::now() > deadline {
            return Err("writer made no progress in 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at = progress.load(Ordering::Acquire);
    replicas[1].link.cut();
    println!("info: cut r1 after {at} of {WRITES} writes");
    let writer_result = tokio::task::spawn_blocking(move || writer.join())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| "writer thread panicked".to_string())?;
    writer_result?;
    if at >= WRITES {
        return Err("the writer finished before the cut; nothing was tested".into());
    }
    let file = open_direct(device, 0)?;
    for &off in &offsets {
        if direct_read(&file, off, LEN)? != pattern(seed, off, LEN) {
            return Err(format!("data at {off} differs after the cut"));
        }
    }
    let status = engine.status().await;
    if status.members != vec!["r0".to_string()] {
        return Err(format!("members after the cut: {:?}", status.members));
    }
    Ok(offsets)
}

/// Detaches, then checks the kernel no longer has the disk (ublk: `/sys/block/ublkbN` is
/// gone; NBD: `/sys/block/nbdN/size` is back to 0).
async fn detach_check(report: &mut Report, name: &str, dev: Attached) {
    let t = Instant::now();
    let is_ublk = matches!(dev, Attached::Ublk(_));
    let sys = Path::new("/sys/block").join(dev.path().file_name().unwrap());
    let result = dev.detach().await.and_then(|()| {
        if is_ublk && sys.exists() {
            return Err(format!("{} still exists", sys.display()));
        }
        let size = std::fs::read_to_string(sys.join("size")).unwrap_or_default();
        if !is_ublk && size.trim() != "0" {
            return Err(format!(
                "{}/size is {:?}, not 0",
                sys.display(),
                size.trim()
            ));
        }
        Ok(())
    });
    report.record(name, t, result);
}

/// A ublk device dropped without `detach` (as on a panic) still goes away.
async fn drop_check(args: &Args, target: Arc<dyn BlockTarget>) -> Result<(), String> {
    let dev = attach(args, target).await?;
    let Attached::Ublk(dev) = dev else {
        return Err("not a ublk device".into());
    };
    let sys = Path::new("/sys/block").join(dev.device().file_name().unwrap());
    let path = dev.device().to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        let file = open_direct(&path, 0)?;
        direct_write(&file, 0, &pattern(7, 0, 4096))?;
        drop(file);
        drop(dev);
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())??;
    if sys.exists() {
        return Err(format!("{} still exists after drop", sys.display()));
    }
    Ok(())
}

async fn file_mode(args: &Args, report: &mut Report) {
    let seed = 0x5eed_f11e;
    let backing = args.backing.with_extension("img");
    let _ = std::fs::remove_file(&backing);
    let target = match FileTarget::open(&backing, args.size) {
        Ok(t) => Arc::new(Counting {
            inner: Arc::new(t),
            now: AtomicUsize::new(0),
            max: AtomicUsize::new(0),
        }),
        Err(e) => {
            report.record::<()>("file/open", Instant::now(), Err(e.to_string()));
            return;
        }
    };
    let t = Instant::now();
    let Some(dev) = report.record("file/attach", t, attach(args, target.clone()).await) else {
        return;
    };
    let path = dev.path();
    let t = Instant::now();
    let raw = {
        let path = path.clone();
        let size = args.size;
        tokio::task::spawn_blocking(move || raw_check(&path, size, seed))
            .await
            .unwrap()
    };
    report.record("file/raw-odirect-concurrent", t, raw);
    let max = target.max.load(Ordering::Acquire);
    let concurrent = if max >= 2 {
        println!("info: up to {max} requests were in flight at once");
        Ok(())
    } else {
        Err(format!(
            "at most {max} request in flight: the frontend serialises I/O"
        ))
    };
    report.record(
        "file/requests-served-concurrently",
        Instant::now(),
        concurrent,
    );
    let t = Instant::now();
    report.record(
        "file/raw-data-in-target",
        t,
        target_has_raw(target.as_ref(), args.size, seed).await,
    );
    if let Some(mkfs) = &args.mkfs {
        let t = Instant::now();
        let (mkfs, path2) = (mkfs.clone(), path.clone());
        let mnt = args.backing.with_extension("mnt");
        let r = tokio::task::spawn_blocking(move || ext4_check(&mkfs, &path2, &mnt, seed + 1))
            .await
            .unwrap();
        report.record("file/ext4-mkfs-mount-write-read", t, r);
    } else {
        println!("info: no mkfs.ext4 (or --mkfs none): ext4 check skipped");
    }
    detach_check(report, "file/detach", dev).await;
    if args.mkfs.is_none() {
        // Nothing overwrote the raw chunks: they must be in the backing file.
        let t = Instant::now();
        let r = (|| -> Result<(), String> {
            let f = std::fs::File::open(&backing).map_err(|e| e.to_string())?;
            for th in 0..THREADS {
                for off in raw_chunks(args.size, th) {
                    let mut buf = vec![0u8; CHUNK];
                    f.read_exact_at(&mut buf, off).map_err(|e| e.to_string())?;
                    if buf != pattern(seed, off, CHUNK) {
                        return Err(format!("backing file differs at {off}"));
                    }
                }
            }
            Ok(())
        })();
        report.record("file/backing-file-after-detach", t, r);
    }
    // Last: it overwrites block 0.
    if args.frontend == "ublk" {
        let t = Instant::now();
        let r = drop_check(args, target.clone()).await;
        report.record("file/ublk-drop-without-detach-removes-device", t, r);
    }
    let _ = std::fs::remove_file(&backing);
}

async fn engine_mode(args: &Args, report: &mut Report) {
    let seed = 0xe9_91ae;
    let dir = args.backing.with_extension("replicas");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let t = Instant::now();
    let replicas = common::replicas(&dir, 2).await;
    let mut config = common::config("vol", args.size, &replicas);
    config.create = true;
    // TCG guests are slow: give replicas time before cutting them out.
    config.io_timeout = Duration::from_secs(10);
    let Some(engine) = report.record(
        "engine/start-2-replicas",
        t,
        Engine::start(config).await.map_err(|e| e.to_string()),
    ) else {
        return;
    };
    let t = Instant::now();
    let Some(dev) = report.record("engine/attach", t, attach(args, engine.clone()).await) else {
        return;
    };
    let path = dev.path();
    let t = Instant::now();
    let raw = {
        let path = path.clone();
        let size = args.size;
        tokio::task::spawn_blocking(move || raw_check(&path, size, seed))
            .await
            .unwrap()
    };
    report.record("engine/raw-odirect-concurrent", t, raw);
    let t = Instant::now();
    report.record(
        "engine/raw-data-in-target",
        t,
        target_has_raw(engine.as_ref(), args.size, seed).await,
    );
    if let Some(mkfs) = &args.mkfs {
        let t = Instant::now();
        let (mkfs, path2) = (mkfs.clone(), path.clone());
        let mnt = args.backing.with_extension("mnt");
        let r = tokio::task::spawn_blocking(move || ext4_check(&mkfs, &path2, &mnt, seed + 1))
            .await
            .unwrap();
        report.record("engine/ext4-mkfs-mount-write-read", t, r);
    }
    // After the file system (which the cut test overwrites): the second half of the device.
    let t = Instant::now();
    let cut = cut_check(&path, &engine, &replicas, seed + 2, args.size / 2).await;
    let offsets = report.record("engine/cut-replica-mid-write", t, cut);
    detach_check(report, "engine/detach", dev).await;
    let t = Instant::now();
    report.record(
        "engine/close",
        t,
        engine.close().await.map_err(|e| e.to_string()),
    );
    if let Some(offsets) = offsets {
        let t = Instant::now();
        let r = (|| -> Result<(), String> {
            let data = replicas[0].data_path("vol");
            let f = std::fs::File::open(&data).map_err(|e| format!("{}: {e}", data.display()))?;
            for off in offsets {
                let mut buf = vec![0u8; 16 << 10];
                f.read_exact_at(&mut buf, off).map_err(|e| e.to_string())?;
                if buf != pattern(seed + 2, off, 16 << 10) {
                    return Err(format!("r0's data file differs at {off}"));
                }
            }
            Ok(())
        })();
        report.record("engine/surviving-replica-has-data", t, r);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("frontend_check: {e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let mut report = Report::default();
    println!(
        "info: frontend={} mode={} size={} MiB mkfs={:?} kernel={}",
        args.frontend,
        args.mode,
        args.size / MIB,
        args.mkfs,
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    if args.mode != "engine" {
        file_mode(&args, &mut report).await;
    }
    if args.mode != "file" {
        engine_mode(&args, &mut report).await;
    }
    println!(
        "{} passed, {} failed ({:.1}s)",
        report.passed,
        report.failed,
        started.elapsed().as_secs_f64()
    );
    if report.failed == 0 && report.passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
