//! Direct I/O on a file inside a mounted volume, fio-like, for hosts without fio: each
//! of `qd` threads keeps one synchronous `pread`/`pwrite` with O_DIRECT in flight (what
//! fio's `psync` engine does with `numjobs=qd`), for a fixed time. Write runs end with an
//! `fdatasync`, included in their time, so nothing counted is still only in a cache.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(target_arch = "x86_64")]
const O_DIRECT: i32 = 0o40000;
#[cfg(target_arch = "aarch64")]
const O_DIRECT: i32 = 0o200000;

const ALIGN: usize = 4096;

/// A buffer aligned for O_DIRECT, filled with bytes that do not compress.
struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// The buffer is owned by one thread at a time.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn new(len: usize, seed: u64) -> AlignedBuf {
        let layout = Layout::from_size_align(len, ALIGN).unwrap();
        // SAFETY: len > 0 and the layout is valid.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        let mut buf = AlignedBuf { ptr, len };
        let mut x = seed | 1;
        for chunk in buf.as_mut().chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        buf
    }
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a live allocation of len bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    fn as_ref(&self) -> &[u8] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, Layout::from_size_align(self.len, ALIGN).unwrap()) }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub label: &'static str,
    pub write: bool,
    pub io: u64,
    pub qd: usize,
    pub random: bool,
}

pub const WORKLOADS: [Workload; 4] = [
    Workload {
        label: "seq write 1 MiB QD4",
        write: true,
        io: 1 << 20,
        qd: 4,
        random: false,
    },
    Workload {
        label: "seq read 1 MiB QD4",
        write: false,
        io: 1 << 20,
        qd: 4,
        random: false,
    },
    Workload {
        label: "rand write 4 KiB QD16",
        write: true,
        io: 4096,
        qd: 16,
        random: true,
    },
    Workload {
        label: "rand read 4 KiB QD16",
        write: false,
        io: 4096,
        qd: 16,
        random: true,
    },
];

#[derive(Clone, Debug)]
pub struct Result {
    pub mb_s: f64,
    pub iops: f64,
    pub p50_us: u64,
    pub p99_us: u64,
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .custom_flags(O_DIRECT)
        .open(path)
}

/// Writes the whole file once (1 MiB direct writes, then fdatasync), so that the runs
/// overwrite allocated blocks, as fio lays out its files first. Not timed.
pub fn lay_out(path: &Path, size: u64) -> std::io::Result<()> {
    let file = open(path)?;
    let buf = AlignedBuf::new(1 << 20, 3);
    let mut off = 0;
    while off < size {
        file.write_all_at(buf.as_ref(), off)?;
        off += 1 << 20;
    }
    file.sync_data()
}

/// One run of `w` on the file at `path` (of `size` bytes) for `time`.
pub fn run(path: &Path, size: u64, w: Workload, time: Duration) -> std::io::Result<Result> {
    let file = Arc::new(open(path)?);
    let slots = size / w.io;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + time;
    let threads: Vec<_> = (0..w.qd)
        .map(|t| {
            let (file, next) = (file.clone(), next.clone());
            std::thread::spawn(move || -> std::io::Result<Vec<u32>> {
                let mut buf = AlignedBuf::new(w.io as usize, 17 + t as u64);
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) << 32);
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let slot = if w.random {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x % slots
                    } else {
                        next.fetch_add(1, Ordering::Relaxed) % slots
                    };
                    let t0 = Instant::now();
                    if w.write {
                        file.write_all_at(buf.as_ref(), slot * w.io)?;
                    } else {
                        file.read_exact_at(buf.as_mut(), slot * w.io)?;
                    }
                    lat.push(t0.elapsed().as_micros() as u32);
                }
                Ok(lat)
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in threads {
        lat.extend(t.join().expect("I/O thread panicked")?);
    }
    if w.write {
        file.sync_data()?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let ops = lat.len() as f64;
    Ok(Result {
        mb_s: ops * w.io as f64 / elapsed / (1 << 20) as f64,
        iops: ops / elapsed,
        p50_us: lat.get(lat.len() / 2).copied().unwrap_or(0) as u64,
        p99_us: lat.get(lat.len() * 99 / 100).copied().unwrap_or(0) as u64,
    })
}

/// `reps` runs of `w`; the median by throughput (a shared 2-vCPU VM varies from run to
/// run), as bench/src/replication.rs reports.
pub fn median(
    path: &Path,
    size: u64,
    w: Workload,
    time: Duration,
    reps: usize,
) -> std::io::Result<Result> {
    let mut runs = Vec::new();
    for _ in 0..reps.max(1) {
        runs.push(run(path, size, w, time)?);
    }
    runs.sort_by(|a, b| a.iops.total_cmp(&b.iops));
    Ok(runs.swap_remove(runs.len() / 2))
}
