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
//!
//! Layout: `abi.rs` (the kernel's structures, constants and command encodings),
//! `control.rs` (adding, starting, stopping and deleting a device through
//! `/dev/ublk-control`), `queue.rs` (one queue thread's I/O loop); this file holds the
//! options and the device handle.
// Without the `ublk` feature only the ABI helpers' unit tests use them.
#![cfg_attr(not(all(target_os = "linux", feature = "ublk")), allow(dead_code))]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::target::BlockTarget;

mod abi;
#[cfg(all(target_os = "linux", feature = "ublk"))]
mod control;
#[cfg(all(target_os = "linux", feature = "ublk"))]
mod queue;

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

/// The defaults keep a device's buffers at 2 MiB (32 tags × 64 KiB). A node process serves
/// every replicated volume staged on it, and each tag's buffer is fixed: the kernel copies
/// each write into it, so every page a write ever touched stays resident, and mkfs alone
/// touches them all. Measured in the kernel lab with 10 volumes staged (docs/benchmarks.md):
/// 64 × 512 KiB, ~150 MiB; 32 × 128 KiB, 55 MiB. A queue depth of 32 keeps small random
/// I/O deep; the kernel splits larger requests, and 2 MiB in flight keeps a disk busy.
/// Buffers taken per request from a shared pool (UBLK_F_USER_COPY) would lift the bound.
impl Default for UblkOptions {
    fn default() -> Self {
        Self {
            queue_depth: 32,
            queues: 1,
            logical_block_size: 4096,
            max_io_bytes: 64 << 10,
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
    inner: Option<Box<control::Device>>,
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
        let start = move || control::Device::start(target, &options, size, runtime);
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn attach_without_a_runtime_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = crate::target::FileTarget::open(&dir.path().join("t"), 1 << 20).unwrap();
        let err = attach(Arc::new(target), UblkOptions::default()).unwrap_err();
        assert!(err.to_string().contains("tokio runtime"), "{err}");
    }
}
