//! Device lifecycle through `/dev/ublk-control`: `ADD_DEV`, `SET_PARAMS`, the queue
//! threads, `START_DEV`; and `STOP_DEV`, `DEL_DEV` on the way out.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::abi::{
    ctrl_cmd, dev_info, ioctl_op, params, parse_dev_info, CMD_ADD_DEV, CMD_DEL_DEV, CMD_SET_PARAMS,
    CMD_START_DEV, CMD_STOP_DEV, CTRL_CMD_SIZE,
};
use super::queue::{Queue, QueueCtx, QueueShared};
use super::{UblkOptions, CONTROL_PATH};
use crate::error::{Error, Result};
use crate::locks::lock;
use crate::target::BlockTarget;

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
        lock(&self.control)
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
        lock(&self.control)
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
            if let Err(e) = lock(&self.control).command(CMD_STOP_DEV, self.dev_id, None, 0) {
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
        if let Err(e) = lock(&self.control).command(CMD_DEL_DEV, self.dev_id, None, 0) {
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
