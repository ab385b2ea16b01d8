//! The kernel NBD device: `/dev/nbdX` configured through the legacy ioctl interface and
//! fed by [`serve_transmission`] over a socket pair.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{serve_transmission, TRANSMISSION_FLAGS};
use crate::error::{Error, Result};
use crate::target::BlockTarget;

// ioctl numbers from <linux/nbd.h>: _IO(0xab, n).
const NBD_SET_SOCK: u8 = 0;
const NBD_SET_BLKSIZE: u8 = 1;
const NBD_DO_IT: u8 = 3;
const NBD_CLEAR_SOCK: u8 = 4;
const NBD_CLEAR_QUE: u8 = 5;
const NBD_SET_SIZE_BLOCKS: u8 = 7;
const NBD_DISCONNECT: u8 = 8;
const NBD_SET_FLAGS: u8 = 10;

/// Issues one NBD ioctl; they all take an integer argument by value (or none).
fn nbd_ioctl(fd: RawFd, nr: u8, arg: u64) -> std::io::Result<()> {
    let request = nix::request_code_none!(0xab, nr);
    // SAFETY: `fd` is an open file descriptor and NBD ioctls read no memory through
    // their argument, which is passed by value.
    let rc = unsafe { libc::ioctl(fd, request as _, arg as libc::c_ulong) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The size the kernel shows for a block device (BLKGETSIZE64).
fn device_size(fd: RawFd) -> std::io::Result<u64> {
    let request = nix::request_code_read!(0x12, 114, std::mem::size_of::<u64>());
    let mut bytes: u64 = 0;
    // SAFETY: `fd` is an open block device and BLKGETSIZE64 writes one u64 through the
    // pointer, which points at a live u64.
    let rc = unsafe { libc::ioctl(fd, request as _, &mut bytes as *mut u64) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(bytes)
    }
}

/// A `/dev/nbdX` attached to a [`BlockTarget`] by [`attach_kernel`]; it serves I/O once
/// [`KernelNbd::started`] says so.
pub struct KernelNbd {
    device: PathBuf,
    /// The size the device is configured with (whole blocks).
    size: u64,
    file: Arc<File>,
    /// Our copy of the kernel's end of the socket pair; the kernel holds its own.
    _kernel_end: UnixStream,
    do_it: Option<JoinHandle<std::io::Result<()>>>,
    server: Option<tokio::task::JoinHandle<Result<()>>>,
}

/// Attaches `target` to the kernel NBD device `device` (e.g. `/dev/nbd0`, needs the
/// `nbd` module and CAP_SYS_ADMIN) using the legacy ioctl interface: block size and size,
/// [`TRANSMISSION_FLAGS`], and one end of a Unix socket pair handed over with
/// `NBD_SET_SOCK`; the other end is served by [`serve_transmission`] on the current tokio
/// runtime (no handshake: the kernel speaks only the transmission phase). `NBD_DO_IT`
/// blocks a dedicated thread for the device's lifetime.
///
/// The size given to the kernel is the target's size rounded down to 512 bytes (4 KiB
/// blocks when the size allows). Must be called from within a tokio runtime; if that
/// runtime stops, the device starts failing I/O.
///
/// **Untested here**: the development host has no `nbd` module; this is exercised in
/// the QEMU guest tests only.
pub fn attach_kernel(device: &Path, target: Arc<dyn BlockTarget>) -> Result<KernelNbd> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| Error::Internal("attach_kernel must run inside a tokio runtime".into()))?;
    let size = target.size();
    let block: u64 = if size & 4095 == 0 { 4096 } else { 512 };
    if size < block {
        return Err(Error::InvalidArgument(format!(
            "a {size}-byte target is too small for a kernel block device"
        )));
    }
    let what = |op: &str| format!("{op} on {}", device.display());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(Error::io(what("open")))?;
    let fd = file.as_raw_fd();
    let (ours, kernel_end) = UnixStream::pair().map_err(Error::io("NBD socket pair"))?;

    let configure = || -> Result<()> {
        nbd_ioctl(fd, NBD_SET_BLKSIZE, block).map_err(Error::io(what("NBD_SET_BLKSIZE")))?;
        nbd_ioctl(fd, NBD_SET_SIZE_BLOCKS, size / block)
            .map_err(Error::io(what("NBD_SET_SIZE_BLOCKS")))?;
        nbd_ioctl(fd, NBD_SET_FLAGS, u64::from(TRANSMISSION_FLAGS))
            .map_err(Error::io(what("NBD_SET_FLAGS")))?;
        nbd_ioctl(fd, NBD_SET_SOCK, kernel_end.as_raw_fd() as u64)
            .map_err(Error::io(what("NBD_SET_SOCK")))?;
        ours.set_nonblocking(true)
            .map_err(Error::io("NBD socket"))?;
        Ok(())
    };
    if let Err(e) = configure() {
        let _ = nbd_ioctl(fd, NBD_CLEAR_SOCK, 0);
        return Err(e);
    }
    let stream = {
        let _guard = runtime.enter();
        tokio::net::UnixStream::from_std(ours)
    };
    let stream = match stream {
        Ok(stream) => stream,
        Err(e) => {
            let _ = nbd_ioctl(fd, NBD_CLEAR_SOCK, 0);
            return Err(Error::io("NBD socket")(e));
        }
    };
    let server = runtime.spawn(serve_transmission(stream, target));

    let file = Arc::new(file);
    let device_file = file.clone();
    let do_it = std::thread::Builder::new()
        .name("nbd-do-it".into())
        .spawn(move || {
            let fd = device_file.as_raw_fd();
            // Returns once the device is disconnected or its socket dies.
            let result = nbd_ioctl(fd, NBD_DO_IT, 0);
            let _ = nbd_ioctl(fd, NBD_CLEAR_QUE, 0);
            let _ = nbd_ioctl(fd, NBD_CLEAR_SOCK, 0);
            result
        });
    let do_it = match do_it {
        Ok(handle) => handle,
        Err(e) => {
            let _ = nbd_ioctl(fd, NBD_CLEAR_SOCK, 0);
            server.abort();
            return Err(Error::io("start NBD_DO_IT thread")(e));
        }
    };
    tracing::info!(device = %device.display(), size, block, "NBD device attached");
    Ok(KernelNbd {
        device: device.to_path_buf(),
        size: size / block * block,
        file,
        _kernel_end: kernel_end,
        do_it: Some(do_it),
        server: Some(server),
    })
}

impl KernelNbd {
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// Waits until the kernel shows the device at its size. `NBD_DO_IT` starts the device
    /// in its own thread, and until it has, the device reads as empty: a probe of its
    /// contents (is there a file system?) would see nothing, or an error. UNAVAILABLE
    /// after `timeout`.
    pub async fn started(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let shown = device_size(self.file.as_raw_fd()).map_err(Error::io(format!(
                "BLKGETSIZE64 on {}",
                self.device.display()
            )))?;
            if shown == self.size {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "{} shows {shown} bytes, not {}, {timeout:?} after NBD_DO_IT",
                    self.device.display(),
                    self.size
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Disconnects the device (`NBD_DISCONNECT`, then `NBD_CLEAR_SOCK`), waits for
    /// `NBD_DO_IT` to return and for the server to answer what was in flight.
    pub async fn detach(mut self) -> Result<()> {
        let fd = self.file.as_raw_fd();
        let what = |op: &str| format!("{op} on {}", self.device.display());
        nbd_ioctl(fd, NBD_DISCONNECT, 0).map_err(Error::io(what("NBD_DISCONNECT")))?;
        nbd_ioctl(fd, NBD_CLEAR_SOCK, 0).map_err(Error::io(what("NBD_CLEAR_SOCK")))?;
        if let Some(do_it) = self.do_it.take() {
            let joined = tokio::task::spawn_blocking(move || do_it.join())
                .await
                .map_err(|e| Error::Internal(format!("NBD_DO_IT waiter failed: {e}")))?;
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "NBD_DO_IT ended with an error"),
                Err(_) => return Err(Error::Internal("NBD_DO_IT thread panicked".into())),
            }
        }
        if let Some(server) = self.server.take() {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "NBD kernel connection ended"),
                Err(e) => return Err(Error::Internal(format!("NBD server task failed: {e}"))),
            }
        }
        tracing::info!(device = %self.device.display(), "NBD device detached");
        Ok(())
    }
}

impl Drop for KernelNbd {
    /// A device dropped without `detach` is disconnected, without waiting.
    fn drop(&mut self) {
        if self.do_it.is_some() {
            let fd = self.file.as_raw_fd();
            let _ = nbd_ioctl(fd, NBD_DISCONNECT, 0);
            let _ = nbd_ioctl(fd, NBD_CLEAR_SOCK, 0);
            tracing::warn!(device = %self.device.display(), "NBD device dropped without detach");
        }
    }
}
