//! ublk frontend: exposes any [`BlockTarget`] as a kernel block device `/dev/ublkbN`
//! through the userspace block driver (`ublk_drv`, Linux 6.0+;
//! <https://docs.kernel.org/block/ublk.html>).
//!
//! Why not the `libublk` crate: its `libublk-rs-sys` build script runs `bindgen`, which
//! needs libclang at build time (not on a plain Debian 12 host: `libclang-dev` would have
//! to be installed on every build machine). This is a minimal implementation on the
//! pure-Rust `io-uring` crate (no liburing, no C toolchain) instead:
//!
//! - control: `ADD_DEV`, `SET_PARAMS`, `START_DEV`, `STOP_DEV`, `DEL_DEV` sent as
//!   ioctl-encoded `IORING_OP_URING_CMD`s on `/dev/ublk-control` (a 128-byte-SQE ring);
//! - data: one thread per hardware queue, each with its own io_uring on `/dev/ublkcN`. Every
//!   tag (queue depth many) has a `FETCH_REQ` / `COMMIT_AND_FETCH_REQ` command in flight and
//!   its own I/O buffer (the kernel copies write data into it and read data out of it). A
//!   request that arrives is run as a task on the tokio runtime that attached the device,
//!   so up to queue-depth requests per queue are served concurrently; finished tasks hand
//!   their result back through a channel and wake the queue thread with an eventfd that
//!   the queue's ring itself is reading.
//! - `READ`, `WRITE` (with `FUA`), `FLUSH`, `DISCARD` and `WRITE_ZEROES` map to the target.
//!   The device advertises a volatile write cache with FUA, so the kernel sends flushes.
//!
//! Needs root (CAP_SYS_ADMIN) and the `ublk_drv` module; see [`available`].
// Without the `ublk` feature only the ABI helpers' unit tests use them.
#![cfg_attr(not(all(target_os = "linux", feature = "ublk")), allow(dead_code))]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::target::BlockTarget;

/// The ublk control device; it exists once `ublk_drv` is loaded.
pub const CONTROL_PATH: &str = "/dev/ublk-control";

/// How a device is set up by [`attach`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UblkOptions {
    /// Requests in flight per queue (1..=4096).
    pub queue_depth: u16,
    /// Hardware queues, one serving thread each; the kernel caps this at its CPU count.
    pub queues: u16,
    /// Logical block size: 512 or 4096.
    pub logical_block_size: u32,
    /// Largest single request, in bytes (a multiple of 4096, at most 1 MiB); also the size of
    /// each tag's buffer, so memory is `queues * queue_depth * max_io_bytes` (lazily mapped).
    pub max_io_bytes: u32,
}

impl Default for UblkOptions {
    fn default() -> Self {
        Self {
            queue_depth: 64,
            queues: 1,
            logical_block_size: 4096,
            max_io_bytes: 512 << 10,
        }
    }
}

impl UblkOptions {
    /// Checks the options against what this frontend and the kernel accept.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.queue_depth == 0 || self.queue_depth > 4096 {
            return bad(format!(
                "queue depth {} is not in 1..=4096",
                self.queue_depth
            ));
        }
        if self.queues == 0 || self.queues > 64 {
            return bad(format!("queue count {} is not in 1..=64", self.queues));
        }
        if self.logical_block_size != 512 && self.logical_block_size != 4096 {
            return bad(format!(
                "logical block size {} is neither 512 nor 4096",
                self.logical_block_size
            ));
        }
        if self.max_io_bytes < 4096
            || self.max_io_bytes > (1 << 20)
            || !self.max_io_bytes.is_multiple_of(4096)
        {
            return bad(format!(
                "max I/O size {} is not a multiple of 4096 in 4 KiB..=1 MiB",
                self.max_io_bytes
            ));
        }
        Ok(())
    }
}

/// Whether a ublk device can be attached here: the frontend is built in (cargo feature
/// `ublk`), and `/dev/ublk-control` exists or `modprobe -n ublk_drv` finds the module.
pub fn available() -> bool {
    cfg!(all(target_os = "linux", feature = "ublk"))
        && (Path::new(CONTROL_PATH).exists() || module_available("ublk_drv"))
}

/// `modprobe -n -q MODULE` succeeds: the module exists for the running kernel (or is built
/// in). Loads nothing.
pub(crate) fn module_available(module: &str) -> bool {
    std::process::Command::new("modprobe")
        .args(["-n", "-q", module])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A `/dev/ublkbN` serving a [`BlockTarget`]; made by [`attach`], removed by
/// [`UblkDevice::detach`]. Dropping it without `detach` removes the device too, but the
/// queues stop first, so I/O still queued then fails.
pub struct UblkDevice {
    #[cfg(all(target_os = "linux", feature = "ublk"))]
    inner: Option<Box<imp::Device>>,
    dev_id: u32,
    path: PathBuf,
    queues: u16,
}

impl std::fmt::Debug for UblkDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UblkDevice")
            .field("dev_id", &self.dev_id)
            .field("path", &self.path)
            .field("queues", &self.queues)
            .finish()
    }
}

impl UblkDevice {
    /// The block device, `/dev/ublkbN`.
    pub fn device(&self) -> &Path {
        &self.path
    }

    /// The kernel's device number N.
    pub fn dev_id(&self) -> u32 {
        self.dev_id
    }

    /// Hardware queues actually in use (the kernel may have granted fewer than asked).
    pub fn queues(&self) -> u16 {
        self.queues
    }

    /// Stops the device (the kernel deletes the disk, writing back what it caches, while the
    /// queues still serve), stops the queue threads and deletes the device. Blocking work
    /// runs on tokio's blocking pool.
    pub async fn detach(self) -> Result<()> {
        tokio::task::spawn_blocking(move || self.detach_blocking())
            .await
            .map_err(|e| Error::Internal(format!("ublk detach task failed: {e}")))?
    }

    /// [`detach`](Self::detach) for blocking contexts. Must not run on the only thread of
    /// the runtime that serves the target (the kernel's final writeback needs it).
    pub fn detach_blocking(mut self) -> Result<()> {
        #[cfg(all(target_os = "linux", feature = "ublk"))]
        if let Some(inner) = self.inner.take() {
            inner.shutdown(true)?;
            tracing::info!(device = %self.path.display(), "ublk device detached");
        }
        let _ = &mut self;
        Ok(())
    }
}

impl Drop for UblkDevice {
    fn drop(&mut self) {
        #[cfg(all(target_os = "linux", feature = "ublk"))]
        if let Some(inner) = self.inner.take() {
            tracing::warn!(device = %self.path.display(), "ublk device dropped without detach");
            if let Err(e) = inner.shutdown(false) {
                tracing::warn!(error = %e, "removing the dropped ublk device failed");
            }
        }
    }
}

/// Creates a ublk device serving `target` and waits until `/dev/ublkbN` is live.
///
/// Requests are run on the current tokio runtime (this must be called within one). The call
/// blocks while the kernel starts the disk, which reads the partition table through the
/// queues: on a multi-thread runtime it is wrapped in `block_in_place`; on a current-thread
/// runtime call it from `spawn_blocking` (or use [`attach_async`]), never directly on the
/// runtime's thread.
///
/// The device size is the target's size rounded down to the logical block size.
pub fn attach(target: Arc<dyn BlockTarget>, options: UblkOptions) -> Result<UblkDevice> {
    options.validate()?;
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| Error::Internal("ublk attach must run inside a tokio runtime".into()))?;
    let size = target.size() / u64::from(options.logical_block_size)
        * u64::from(options.logical_block_size);
    if size == 0 {
        return Err(Error::InvalidArgument(format!(
            "a {}-byte target is too small for a ublk device",
            target.size()
        )));
    }
    #[cfg(all(target_os = "linux", feature = "ublk"))]
    {
        let in_worker = matches!(
            runtime.runtime_flavor(),
            tokio::runtime::RuntimeFlavor::MultiThread
        );
        let depth = options.queue_depth;
        let block = options.logical_block_size;
        let start = move || imp::Device::start(target, &options, size, runtime);
        let inner = if in_worker {
            tokio::task::block_in_place(start)?
        } else {
            start()?
        };
        let dev_id = inner.dev_id();
        let queues = inner.queues();
        let path = PathBuf::from(format!("/dev/ublkb{dev_id}"));
        tracing::info!(device = %path.display(), size, queues, depth,
            block, "ublk device attached");
        Ok(UblkDevice {
            inner: Some(Box::new(inner)),
            dev_id,
            path,
            queues,
        })
    }
    #[cfg(not(all(target_os = "linux", feature = "ublk")))]
    {
        let _ = (runtime, target, size);
        Err(Error::Unavailable(
            "this build has no ublk frontend (cargo feature `ublk`, Linux only)".into(),
        ))
    }
}

/// [`attach`] from async code: runs it on tokio's blocking pool.
pub async fn attach_async(
    target: Arc<dyn BlockTarget>,
    options: UblkOptions,
) -> Result<UblkDevice> {
    tokio::task::spawn_blocking(move || attach(target, options))
        .await
        .map_err(|e| Error::Internal(format!("ublk attach task failed: {e}")))?
}

// ---------------------------------------------------------------------------------------
// Kernel ABI, from <linux/ublk_cmd.h>. Encoded by hand (little-endian byte layouts) so the
// layouts are checked by unit tests and no unsafe casts are needed.

/// Control commands (`UBLK_CMD_*`); sent ioctl-encoded: `_IOWR('u', nr, ublksrv_ctrl_cmd)`.
const CMD_ADD_DEV: u8 = 0x04;
const CMD_DEL_DEV: u8 = 0x05;
const CMD_START_DEV: u8 = 0x06;
const CMD_STOP_DEV: u8 = 0x07;
const CMD_SET_PARAMS: u8 = 0x08;
/// I/O commands (`UBLK_IO_*`): `_IOWR('u', nr, ublksrv_io_cmd)`.
const IO_FETCH_REQ: u8 = 0x20;
const IO_COMMIT_AND_FETCH_REQ: u8 = 0x21;

const CTRL_CMD_SIZE: usize = 32; // struct ublksrv_ctrl_cmd
const IO_CMD_SIZE: usize = 16; // struct ublksrv_io_cmd
const DEV_INFO_SIZE: usize = 64; // struct ublksrv_ctrl_dev_info
const IO_DESC_SIZE: usize = 24; // struct ublksrv_io_desc
/// Header + `ublk_param_basic` + `ublk_param_discard`.
const PARAMS_SIZE: usize = 60;

/// `UBLK_F_CMD_IOCTL_ENCODE`.
const F_CMD_IOCTL_ENCODE: u64 = 1 << 6;

const PARAM_TYPE_BASIC: u32 = 1 << 0;
const PARAM_TYPE_DISCARD: u32 = 1 << 1;
const ATTR_VOLATILE_CACHE: u32 = 1 << 2;
const ATTR_FUA: u32 = 1 << 3;

const OP_READ: u8 = 0;
const OP_WRITE: u8 = 1;
const OP_FLUSH: u8 = 2;
const OP_DISCARD: u8 = 3;
const OP_WRITE_ZEROES: u8 = 5;
const IO_F_FUA: u32 = 1 << 13;

/// Offset of queue `q`'s descriptor array in the `/dev/ublkcN` mmap space:
/// `q * round_up(UBLK_MAX_QUEUE_DEPTH * sizeof(ublksrv_io_desc), PAGE_SIZE)`.
const MAX_QUEUE_DEPTH: usize = 4096;

/// `_IOWR('u', nr, size)`.
fn ioctl_op(nr: u8, size: usize) -> u32 {
    const IOC_READ_WRITE: u32 = 3;
    (IOC_READ_WRITE << 30) | ((size as u32) << 16) | (u32::from(b'u') << 8) | u32::from(nr)
}

/// `struct ublksrv_ctrl_cmd`, in the first bytes of an 80-byte URING_CMD payload.
/// `queue_id` is always -1 (the kernel insists on it for `ADD_DEV`).
fn ctrl_cmd(dev_id: u32, buf_addr: u64, buf_len: u16, data0: u64) -> [u8; 80] {
    let mut c = [0u8; 80];
    c[0..4].copy_from_slice(&dev_id.to_le_bytes());
    c[4..6].copy_from_slice(&u16::MAX.to_le_bytes());
    c[6..8].copy_from_slice(&buf_len.to_le_bytes());
    c[8..16].copy_from_slice(&buf_addr.to_le_bytes());
    c[16..24].copy_from_slice(&data0.to_le_bytes());
    c
}

/// `struct ublksrv_io_cmd`.
fn io_cmd(q_id: u16, tag: u16, result: i32, buf_addr: u64) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0..2].copy_from_slice(&q_id.to_le_bytes());
    c[2..4].copy_from_slice(&tag.to_le_bytes());
    c[4..8].copy_from_slice(&result.to_le_bytes());
    c[8..16].copy_from_slice(&buf_addr.to_le_bytes());
    c
}

/// `struct ublksrv_ctrl_dev_info` for `ADD_DEV` (device number chosen by the kernel).
fn dev_info(queues: u16, depth: u16, max_io_bytes: u32) -> [u8; DEV_INFO_SIZE] {
    let mut d = [0u8; DEV_INFO_SIZE];
    d[0..2].copy_from_slice(&queues.to_le_bytes());
    d[2..4].copy_from_slice(&depth.to_le_bytes());
    d[8..12].copy_from_slice(&max_io_bytes.to_le_bytes());
    d[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    d[24..32].copy_from_slice(&F_CMD_IOCTL_ENCODE.to_le_bytes());
    d
}

/// (nr_hw_queues, queue_depth, dev_id) from a `ublksrv_ctrl_dev_info` the kernel filled in.
fn parse_dev_info(d: &[u8; DEV_INFO_SIZE]) -> (u16, u16, u32) {
    (
        u16::from_le_bytes([d[0], d[1]]),
        u16::from_le_bytes([d[2], d[3]]),
        u32::from_le_bytes([d[12], d[13], d[14], d[15]]),
    )
}

/// `struct ublk_params` with the basic and discard parameters.
fn params(size: u64, logical_block_size: u32, max_io_bytes: u32) -> [u8; PARAMS_SIZE] {
    let shift = logical_block_size.trailing_zeros() as u8;
    let mut p = [0u8; PARAMS_SIZE];
    p[0..4].copy_from_slice(&(PARAMS_SIZE as u32).to_le_bytes());
    p[4..8].copy_from_slice(&(PARAM_TYPE_BASIC | PARAM_TYPE_DISCARD).to_le_bytes());
    // ublk_param_basic at 8.
    p[8..12].copy_from_slice(&(ATTR_VOLATILE_CACHE | ATTR_FUA).to_le_bytes());
    p[12] = shift; // logical_bs_shift
    p[13] = 12; // physical_bs_shift
    p[14] = 12; // io_opt_shift
    p[15] = shift; // io_min_shift
    p[16..20].copy_from_slice(&(max_io_bytes >> 9).to_le_bytes()); // max_sectors
    p[24..32].copy_from_slice(&(size >> 9).to_le_bytes()); // dev_sectors
                                                           // ublk_param_discard at 40: one segment, block granularity, up to 1 GiB at once.
    p[44..48].copy_from_slice(&logical_block_size.to_le_bytes());
    p[48..52].copy_from_slice(&((1u32 << 30) >> 9).to_le_bytes());
    p[56..58].copy_from_slice(&1u16.to_le_bytes());
    p
}

/// One request as the kernel describes it (`struct ublksrv_io_desc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IoDesc {
    op: u8,
    fua: bool,
    offset: u64,
    len: u64,
}

fn parse_io_desc(d: &[u8; IO_DESC_SIZE]) -> IoDesc {
    let op_flags = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
    let nr_sectors = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
    let mut start = [0u8; 8];
    start.copy_from_slice(&d[8..16]);
    IoDesc {
        op: (op_flags & 0xff) as u8,
        fua: op_flags & IO_F_FUA != 0,
        offset: u64::from_le_bytes(start) << 9,
        len: u64::from(nr_sectors) << 9,
    }
}

/// The negative errno a failed target operation is reported with.
fn errno_of(e: &Error) -> i32 {
    match e {
        Error::OutOfRange { .. } | Error::InvalidArgument(_) => -libc::EINVAL,
        Error::Io { source, .. } => match source.raw_os_error() {
            Some(code @ (libc::ENOSPC | libc::EDQUOT | libc::EFBIG)) => -code,
            _ => -libc::EIO,
        },
        _ => -libc::EIO,
    }
}

#[cfg(all(target_os = "linux", feature = "ublk"))]
mod imp {
    use std::fs::File;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc, Mutex};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use io_uring::{cqueue, opcode, squeue, types, IoUring};

    use super::*;

    /// The control device and its 128-byte-SQE ring; one command at a time.
    struct Control {
        file: File,
        ring: IoUring<squeue::Entry128, cqueue::Entry>,
    }

    impl Control {
        fn open() -> Result<Control> {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(CONTROL_PATH)
                .map_err(Error::io(format!(
                    "open {CONTROL_PATH} (is the ublk_drv module loaded?)"
                )))?;
            let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
                .build(4)
                .map_err(Error::io("io_uring for ublk control"))?;
            Ok(Control { file, ring })
        }

        /// Sends one control command and waits for its result (>= 0, or the errno).
        fn command(
            &mut self,
            nr: u8,
            dev_id: u32,
            buf: Option<&mut [u8]>,
            data0: u64,
        ) -> std::io::Result<i32> {
            let (addr, len) = match buf {
                Some(b) => (b.as_mut_ptr() as u64, b.len() as u16),
                None => (0, 0),
            };
            let sqe = opcode::UringCmd80::new(
                types::Fd(self.file.as_raw_fd()),
                ioctl_op(nr, CTRL_CMD_SIZE),
            )
            .cmd(ctrl_cmd(dev_id, addr, len, data0))
            .build()
            .user_data(u64::from(nr));
            // SAFETY: the command and the buffer it points to (borrowed for this call) stay
            // valid until the completion is reaped below.
            unsafe { self.ring.submission().push(&sqe) }
                .map_err(|_| std::io::Error::other("ublk control ring full"))?;
            loop {
                match self.ring.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) => return Err(e),
                }
                if let Some(cqe) = self.ring.completion().next() {
                    let res = cqe.result();
                    return if res < 0 {
                        Err(std::io::Error::from_raw_os_error(-res))
                    } else {
                        Ok(res)
                    };
                }
            }
        }
    }

    /// What a queue thread shares with the device handle.
    struct QueueShared {
        stop: AtomicBool,
        /// Wakes the queue thread: written by finished requests and by `shutdown`.
        wake: OwnedFd,
    }

    impl QueueShared {
        fn wake(&self) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
            unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    struct Queue {
        shared: Arc<QueueShared>,
        thread: Option<JoinHandle<()>>,
    }

    pub(super) struct Device {
        control: Mutex<Control>,
        dev_id: u32,
        queues: Vec<Queue>,
        /// `/dev/ublkcN`: the kernel allows it to be open only once, so the queues share it.
        cdev: Option<Arc<File>>,
    }

    impl Device {
        pub(super) fn dev_id(&self) -> u32 {
            self.dev_id
        }

        pub(super) fn queues(&self) -> u16 {
            self.queues.len() as u16
        }

        pub(super) fn start(
            target: Arc<dyn BlockTarget>,
            options: &UblkOptions,
            size: u64,
            runtime: tokio::runtime::Handle,
        ) -> Result<Device> {
            let mut control = Control::open()?;
            let mut info = dev_info(options.queues, options.queue_depth, options.max_io_bytes);
            control
                .command(CMD_ADD_DEV, u32::MAX, Some(&mut info), 0)
                .map_err(Error::io("ublk ADD_DEV"))?;
            let (queues, depth, dev_id) = parse_dev_info(&info);
            // From here on, a failure deletes the device again.
            let mut device = Device {
                control: Mutex::new(control),
                dev_id,
                queues: Vec::new(),
                cdev: None,
            };
            match device.bring_up(target, options, size, runtime, queues, depth) {
                Ok(()) => Ok(device),
                Err(e) => {
                    let _ = device.shutdown_inner(false);
                    Err(e)
                }
            }
        }

        fn bring_up(
            &mut self,
            target: Arc<dyn BlockTarget>,
            options: &UblkOptions,
            size: u64,
            runtime: tokio::runtime::Handle,
            queues: u16,
            depth: u16,
        ) -> Result<()> {
            let dev_id = self.dev_id;
            let mut p = params(size, options.logical_block_size, options.max_io_bytes);
            self.control
                .lock()
                .unwrap()
                .command(CMD_SET_PARAMS, dev_id, Some(&mut p), 0)
                .map_err(Error::io("ublk SET_PARAMS"))?;
            let cdev_path = format!("/dev/ublkc{dev_id}");
            wait_for_node(Path::new(&cdev_path))?;
            let cdev = Arc::new(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&cdev_path)
                    .map_err(Error::io(format!("open {cdev_path}")))?,
            );
            self.cdev = Some(cdev.clone());
            let (ready_tx, ready_rx) = mpsc::channel::<std::io::Result<()>>();
            for q_id in 0..queues {
                // SAFETY: plain eventfd creation; the result is checked before use.
                let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
                if fd < 0 {
                    return Err(Error::io("eventfd")(std::io::Error::last_os_error()));
                }
                let shared = Arc::new(QueueShared {
                    stop: AtomicBool::new(false),
                    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
                    wake: unsafe { OwnedFd::from_raw_fd(fd) },
                });
                let ctx = QueueCtx {
                    q_id,
                    depth,
                    buf_bytes: options.max_io_bytes,
                    cdev: cdev.clone(),
                    target: target.clone(),
                    runtime: runtime.clone(),
                    shared: shared.clone(),
                };
                let ready = ready_tx.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("ublk{dev_id}-q{q_id}"))
                    .spawn(move || ctx.run(ready))
                    .map_err(Error::io("start a ublk queue thread"))?;
                self.queues.push(Queue {
                    shared,
                    thread: Some(thread),
                });
            }
            drop(ready_tx);
            for _ in 0..queues {
                match ready_rx.recv() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(Error::io("ublk queue setup")(e)),
                    Err(_) => return Err(Error::Internal("a ublk queue thread died".into())),
                }
            }
            // Every tag has FETCH_REQ in flight: START_DEV adds the disk (which reads the
            // partition table through the queues) and returns once it is live.
            let pid = std::process::id();
            self.control
                .lock()
                .unwrap()
                .command(CMD_START_DEV, dev_id, None, u64::from(pid))
                .map_err(Error::io("ublk START_DEV"))?;
            wait_for_node(Path::new(&format!("/dev/ublkb{dev_id}")))?;
            Ok(())
        }

        /// `clean`: STOP_DEV first while the queues still serve (the kernel writes back
        /// cached data); otherwise the queues stop first and queued I/O fails.
        pub(super) fn shutdown(mut self, clean: bool) -> Result<()> {
            self.shutdown_inner(clean)
        }

        fn shutdown_inner(&mut self, clean: bool) -> Result<()> {
            let mut first_error = None;
            if clean && !self.queues.is_empty() {
                if let Err(e) =
                    self.control
                        .lock()
                        .unwrap()
                        .command(CMD_STOP_DEV, self.dev_id, None, 0)
                {
                    first_error.get_or_insert(Error::io("ublk STOP_DEV")(e));
                }
            }
            for queue in &self.queues {
                queue.shared.stop.store(true, Ordering::Release);
                queue.shared.wake();
            }
            for queue in &mut self.queues {
                if let Some(thread) = queue.thread.take() {
                    if thread.join().is_err() {
                        first_error
                            .get_or_insert(Error::Internal("a ublk queue thread panicked".into()));
                    }
                }
            }
            self.queues.clear();
            // Our handle on /dev/ublkcN goes before DEL_DEV, which waits for it to close.
            self.cdev = None;
            if let Err(e) = self
                .control
                .lock()
                .unwrap()
                .command(CMD_DEL_DEV, self.dev_id, None, 0)
            {
                first_error.get_or_insert(Error::io("ublk DEL_DEV")(e));
            }
            match first_error {
                None => Ok(()),
                Some(e) => Err(e),
            }
        }
    }

    /// Waits (up to 10 s) for devtmpfs/udev to create a device node.
    fn wait_for_node(path: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !path.exists() {
            if Instant::now() > deadline {
                return Err(Error::Unavailable(format!(
                    "{} did not appear within 10 s",
                    path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// `user_data` of the eventfd read; tags are below 4096.
    const WAKE: u64 = u64::MAX;

    /// A finished request: its tag, the result to commit and, for reads, the data.
    struct Done {
        tag: u16,
        result: i32,
        data: Option<Bytes>,
    }

    /// An anonymous or device memory mapping, unmapped on drop.
    struct Mapping {
        ptr: *mut u8,
        len: usize,
    }

    impl Mapping {
        fn new(len: usize, prot: i32, flags: i32, fd: RawFd, offset: i64) -> std::io::Result<Self> {
            // SAFETY: a fresh mapping chosen by the kernel; checked for failure.
            let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, offset) };
            if ptr == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Mapping {
                ptr: ptr.cast(),
                len,
            })
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the region mapped in `new`, once.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }

    struct QueueCtx {
        q_id: u16,
        depth: u16,
        buf_bytes: u32,
        cdev: Arc<File>,
        target: Arc<dyn BlockTarget>,
        runtime: tokio::runtime::Handle,
        shared: Arc<QueueShared>,
    }

    impl QueueCtx {
        fn run(self, ready: mpsc::Sender<std::io::Result<()>>) {
            if let Err(e) = self.serve(&ready) {
                tracing::warn!(queue = self.q_id, error = %e, "ublk queue stopped on an error");
                let _ = ready.send(Err(e));
            }
        }

        fn serve(&self, ready: &mpsc::Sender<std::io::Result<()>>) -> std::io::Result<()> {
            let depth = usize::from(self.depth);
            let buf_bytes = self.buf_bytes as usize;
            let page = 4096usize;
            let desc_len = (depth * IO_DESC_SIZE).div_ceil(page) * page;
            let desc_stride = (MAX_QUEUE_DEPTH * IO_DESC_SIZE).div_ceil(page) * page;
            let descs = Mapping::new(
                desc_len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                self.cdev.as_raw_fd(),
                (usize::from(self.q_id) * desc_stride) as i64,
            )?;
            let bufs = Mapping::new(
                depth * buf_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )?;
            let buf_addr = |tag: u16| bufs.ptr as u64 + u64::from(tag) * buf_bytes as u64;
            let mut ring: IoUring =
                IoUring::builder().build((depth + 2).next_power_of_two() as u32)?;
            let cdev = types::Fd(self.cdev.as_raw_fd());
            let fetch_op = ioctl_op(IO_FETCH_REQ, IO_CMD_SIZE);
            let commit_op = ioctl_op(IO_COMMIT_AND_FETCH_REQ, IO_CMD_SIZE);
            let mut wake_buf = [0u8; 8];
            let wake_read = |buf: &mut [u8; 8]| {
                opcode::Read::new(types::Fd(self.shared.wake.as_raw_fd()), buf.as_mut_ptr(), 8)
                    .build()
                    .user_data(WAKE)
            };
            let push = |ring: &mut IoUring, sqe: &squeue::Entry| -> std::io::Result<()> {
                // SAFETY: every command's buffers (tag buffers, wake_buf, the mappings) live
                // until the ring is dropped at the end of this function, after which the
                // kernel cancels what is still in flight.
                if unsafe { ring.submission().push(sqe) }.is_err() {
                    ring.submit()?;
                    unsafe { ring.submission().push(sqe) }
                        .map_err(|_| std::io::Error::other("ublk queue ring full"))?;
                }
                Ok(())
            };
            for tag in 0..self.depth {
                let sqe = opcode::UringCmd16::new(cdev, fetch_op)
                    .cmd(io_cmd(self.q_id, tag, -1, buf_addr(tag)))
                    .build()
                    .user_data(u64::from(tag));
                push(&mut ring, &sqe)?;
            }
            push(&mut ring, &wake_read(&mut wake_buf))?;
            ring.submit()?;
            let _ = ready.send(Ok(()));

            let (done_tx, done_rx) = mpsc::channel::<Done>();
            let mut live = usize::from(self.depth);
            let mut cqes = Vec::with_capacity(depth + 1);
            while live > 0 {
                match ring.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) => return Err(e),
                }
                cqes.clear();
                cqes.extend(ring.completion().map(|c| (c.user_data(), c.result())));
                for &(user_data, res) in &cqes {
                    if user_data == WAKE {
                        if self.shared.stop.load(Ordering::Acquire) {
                            return Ok(());
                        }
                        while let Ok(done) = done_rx.try_recv() {
                            if let Some(data) = &done.data {
                                // SAFETY: the tag's buffer is `buf_bytes` long, the read was
                                // at most that (the kernel's max_sectors), and the kernel
                                // does not touch it until the commit below.
                                let n = data.len().min(buf_bytes);
                                unsafe {
                                    std::ptr::copy_nonoverlapping(
                                        data.as_ptr(),
                                        buf_addr(done.tag) as *mut u8,
                                        n,
                                    )
                                };
                            }
                            let sqe = opcode::UringCmd16::new(cdev, commit_op)
                                .cmd(io_cmd(self.q_id, done.tag, done.result, buf_addr(done.tag)))
                                .build()
                                .user_data(u64::from(done.tag));
                            push(&mut ring, &sqe)?;
                        }
                        push(&mut ring, &wake_read(&mut wake_buf))?;
                        continue;
                    }
                    let tag = user_data as u16;
                    if res == 0 {
                        // UBLK_IO_RES_OK: a request for this tag.
                        let mut raw = [0u8; IO_DESC_SIZE];
                        // SAFETY: `tag < depth`, so the descriptor lies inside the mapping;
                        // the kernel filled it in before completing the command.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                descs.ptr.add(usize::from(tag) * IO_DESC_SIZE),
                                raw.as_mut_ptr(),
                                IO_DESC_SIZE,
                            )
                        };
                        let desc = parse_io_desc(&raw);
                        // SAFETY: the tag's buffer, which the kernel filled for writes and
                        // leaves alone until this tag's next commit.
                        let buf = unsafe {
                            std::slice::from_raw_parts(buf_addr(tag) as *const u8, buf_bytes)
                        };
                        self.dispatch(tag, desc, buf, &done_tx);
                    } else {
                        // UBLK_IO_RES_ABORT (-ENODEV): the device is going away; any other
                        // error also ends this tag.
                        if res != -libc::ENODEV {
                            tracing::warn!(queue = self.q_id, tag, res, "ublk I/O command failed");
                        }
                        live -= 1;
                    }
                }
            }
            Ok(())
        }

        /// Starts serving one request on the runtime.
        fn dispatch(&self, tag: u16, desc: IoDesc, buf: &[u8], done: &mpsc::Sender<Done>) {
            let target = self.target.clone();
            let shared = self.shared.clone();
            let done = done.clone();
            let IoDesc {
                op,
                fua,
                offset,
                len,
            } = desc;
            let finish = move |result: i32, data: Option<Bytes>| {
                let _ = done.send(Done { tag, result, data });
                shared.wake();
            };
            if len > buf.len() as u64 && matches!(op, OP_READ | OP_WRITE) {
                finish(-libc::EINVAL, None);
                return;
            }
            let ok = move |r: Result<()>, n: u64| match r {
                Ok(()) => n as i32,
                Err(e) => {
                    tracing::debug!(op, offset, len, error = %e, "ublk request failed");
                    errno_of(&e)
                }
            };
            match op {
                OP_READ => {
                    self.runtime.spawn(async move {
                        match target.read(offset, len as usize).await {
                            Ok(data) if data.len() as u64 == len => finish(len as i32, Some(data)),
                            Ok(_) => finish(-libc::EIO, None),
                            Err(e) => finish(ok(Err(e), 0), None),
                        }
                    });
                }
                OP_WRITE => {
                    let data = Bytes::copy_from_slice(&buf[..len as usize]);
                    self.runtime.spawn(async move {
                        finish(ok(target.write(offset, data, fua).await, len), None)
                    });
                }
                OP_FLUSH => {
                    self.runtime
                        .spawn(async move { finish(ok(target.flush().await, 0), None) });
                }
                OP_DISCARD => {
                    self.runtime.spawn(async move {
                        finish(ok(target.discard(offset, len).await, 0), None)
                    });
                }
                OP_WRITE_ZEROES => {
                    self.runtime.spawn(async move {
                        let zeros = Bytes::from(vec![0u8; len as usize]);
                        finish(ok(target.write(offset, zeros, fua).await, 0), None)
                    });
                }
                _ => finish(-libc::EOPNOTSUPP, None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_encoding_matches_the_kernel_header() {
        // UBLK_U_CMD_ADD_DEV = _IOWR('u', 0x04, struct ublksrv_ctrl_cmd) = 0xc0207504.
        assert_eq!(ioctl_op(CMD_ADD_DEV, CTRL_CMD_SIZE), 0xc020_7504);
        // UBLK_U_IO_FETCH_REQ = _IOWR('u', 0x20, struct ublksrv_io_cmd) = 0xc0107520.
        assert_eq!(ioctl_op(IO_FETCH_REQ, IO_CMD_SIZE), 0xc010_7520);
        assert_eq!(ioctl_op(IO_COMMIT_AND_FETCH_REQ, IO_CMD_SIZE), 0xc010_7521);
        let nix_code = nix::request_code_readwrite!(b'u', CMD_STOP_DEV, CTRL_CMD_SIZE);
        assert_eq!(u64::from(ioctl_op(CMD_STOP_DEV, CTRL_CMD_SIZE)), nix_code);
    }

    #[test]
    fn structures_are_laid_out_like_the_kernel_header() {
        let c = ctrl_cmd(7, 0x1122_3344_5566_7788, 64, 42);
        assert_eq!(&c[0..4], &7u32.to_le_bytes());
        assert_eq!(&c[4..6], &[0xff, 0xff]);
        assert_eq!(&c[6..8], &64u16.to_le_bytes());
        assert_eq!(&c[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&c[16..24], &42u64.to_le_bytes());
        assert!(c[24..].iter().all(|&b| b == 0));

        let info = dev_info(2, 64, 512 << 10);
        assert_eq!(parse_dev_info(&info), (2, 64, u32::MAX));
        assert_eq!(&info[24..32], &F_CMD_IOCTL_ENCODE.to_le_bytes());

        let p = params(1 << 30, 4096, 512 << 10);
        assert_eq!(u32::from_le_bytes(p[0..4].try_into().unwrap()), 60);
        assert_eq!((p[12], p[13]), (12, 12));
        assert_eq!(u32::from_le_bytes(p[16..20].try_into().unwrap()), 1024);
        assert_eq!(u64::from_le_bytes(p[24..32].try_into().unwrap()), 1 << 21);
        assert_eq!(u32::from_le_bytes(p[44..48].try_into().unwrap()), 4096);
        assert_eq!(u16::from_le_bytes(p[56..58].try_into().unwrap()), 1);
        let p512 = params(1 << 20, 512, 4096);
        assert_eq!((p512[12], p512[15]), (9, 9));

        let cmd = io_cmd(1, 5, -5, 0xabc);
        assert_eq!(&cmd[0..2], &1u16.to_le_bytes());
        assert_eq!(&cmd[2..4], &5u16.to_le_bytes());
        assert_eq!(&cmd[4..8], &(-5i32).to_le_bytes());
        assert_eq!(&cmd[8..16], &0xabcu64.to_le_bytes());

        let mut d = [0u8; IO_DESC_SIZE];
        d[0..4].copy_from_slice(&(u32::from(OP_WRITE) | IO_F_FUA).to_le_bytes());
        d[4..8].copy_from_slice(&8u32.to_le_bytes());
        d[8..16].copy_from_slice(&16u64.to_le_bytes());
        let desc = parse_io_desc(&d);
        assert_eq!(
            desc,
            IoDesc {
                op: OP_WRITE,
                fua: true,
                offset: 16 * 512,
                len: 4096
            }
        );
    }

    #[test]
    fn options_are_validated() {
        assert!(UblkOptions::default().validate().is_ok());
        let with = |f: fn(&mut UblkOptions)| {
            let mut o = UblkOptions::default();
            f(&mut o);
            o.validate()
        };
        assert!(with(|o| o.queue_depth = 0).is_err());
        assert!(with(|o| o.queue_depth = 4097).is_err());
        assert!(with(|o| o.queues = 0).is_err());
        assert!(with(|o| o.logical_block_size = 1024).is_err());
        assert!(with(|o| o.logical_block_size = 512).is_ok());
        assert!(with(|o| o.max_io_bytes = 1000).is_err());
    }

    #[test]
    fn errors_map_to_errnos() {
        let enospc = Error::io("x")(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(errno_of(&enospc), -libc::ENOSPC);
        let other = Error::io("x")(std::io::Error::from_raw_os_error(libc::EBADF));
        assert_eq!(errno_of(&other), -libc::EIO);
        assert_eq!(
            errno_of(&Error::OutOfRange {
                offset: 0,
                len: 1,
                size: 0
            }),
            -libc::EINVAL
        );
        assert_eq!(errno_of(&Error::Unavailable("x".into())), -libc::EIO);
    }

    #[test]
    fn attach_without_a_runtime_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = crate::target::FileTarget::open(&dir.path().join("t"), 1 << 20).unwrap();
        let err = attach(Arc::new(target), UblkOptions::default()).unwrap_err();
        assert!(err.to_string().contains("tokio runtime"), "{err}");
    }
}
