//! One hardware queue: its thread, its io_uring on `/dev/ublkcN`, and the requests it
//! hands to the tokio runtime.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use bytes::Bytes;
use io_uring::{opcode, squeue, types, IoUring};

use super::abi::{
    errno_of, io_cmd, ioctl_op, parse_io_desc, IoDesc, IO_CMD_SIZE, IO_COMMIT_AND_FETCH_REQ,
    IO_DESC_SIZE, IO_FETCH_REQ, MAX_QUEUE_DEPTH, OP_DISCARD, OP_FLUSH, OP_READ, OP_WRITE,
    OP_WRITE_ZEROES,
};
use crate::error::Result;
use crate::target::BlockTarget;

/// What a queue thread shares with the device handle.
pub(super) struct QueueShared {
    pub(super) stop: AtomicBool,
    /// Wakes the queue thread: written by finished requests and by `shutdown`.
    pub(super) wake: OwnedFd,
}

impl QueueShared {
    pub(super) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

pub(super) struct Queue {
    pub(super) shared: Arc<QueueShared>,
    pub(super) thread: Option<JoinHandle<()>>,
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

pub(super) struct QueueCtx {
    pub(super) q_id: u16,
    pub(super) depth: u16,
    pub(super) buf_bytes: u32,
    pub(super) cdev: Arc<File>,
    pub(super) target: Arc<dyn BlockTarget>,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) shared: Arc<QueueShared>,
}

impl QueueCtx {
    pub(super) fn run(self, ready: mpsc::Sender<std::io::Result<()>>) {
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
        let mut ring: IoUring = IoUring::builder().build((depth + 2).next_power_of_two() as u32)?;
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
                self.runtime
                    .spawn(async move { finish(ok(target.discard(offset, len).await, 0), None) });
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
