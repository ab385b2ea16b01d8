//! The NBD transmission phase: requests read, run concurrently on the target, and
//! answered with simple replies in completion order.

use std::sync::Arc;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::{io_err, read_message_start, MAX_PAYLOAD};
use crate::error::{Error, Result};
use crate::target::BlockTarget;

pub(super) const REQUEST_MAGIC: u32 = 0x2560_9513;
pub(super) const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

pub(super) const CMD_READ: u16 = 0;
pub(super) const CMD_WRITE: u16 = 1;
pub(super) const CMD_DISC: u16 = 2;
pub(super) const CMD_FLUSH: u16 = 3;
pub(super) const CMD_TRIM: u16 = 4;
pub(super) const CMD_WRITE_ZEROES: u16 = 6;

pub(super) const CMD_FLAG_FUA: u16 = 1 << 0;
pub(super) const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

pub(super) const EIO: u32 = 5;
pub(super) const EINVAL: u32 = 22;
pub(super) const ENOSPC: u32 = 28;
/// Bytes of payload (write data read off the socket, read data not yet sent) that one
/// connection may hold at once; reading further requests waits while it is used up.
pub(super) const INFLIGHT_BUDGET: usize = 128 << 20;
/// Smallest share of the budget one request takes, so that the count of requests in flight
/// is bounded too.
const MIN_REQUEST_COST: u32 = 4096;

/// Zeros for `WRITE_ZEROES` with `NO_HOLE`, written a chunk at a time.
static ZEROES: [u8; 1 << 20] = [0; 1 << 20];

/// Serves the transmission phase only, on a connection whose handshake happened elsewhere
/// (the kernel's ioctl-configured NBD client speaks nothing else). The export's flags are
/// [`TRANSMISSION_FLAGS`].
pub async fn serve_transmission<S>(stream: S, target: Arc<dyn BlockTarget>) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel(256);
    let reader = read_requests(rd, target, tx);
    let writer = write_replies(wr, rx);
    tokio::pin!(reader, writer);
    tokio::select! {
        read = &mut reader => {
            // The reader is done (disconnect or protocol error); the writer ends once every
            // request in flight has been answered.
            let written = writer.await;
            read.and(written)
        }
        written = &mut writer => {
            // The writer only ends early when the connection broke under it.
            written.and(Err(Error::Protocol("NBD connection closed while replying".into())))
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Request {
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    len: u32,
}

struct Reply {
    cookie: u64,
    error: u32,
    /// Read data; only sent when `error` is zero.
    data: Option<Bytes>,
    /// This request's share of the connection's in-flight budget, returned once the reply
    /// has been written.
    _budget: OwnedSemaphorePermit,
}

/// Reads requests until `NBD_CMD_DISC`, end of stream, or a protocol violation, starting a
/// task for each. Dropping `replies` (when this returns, and as the tasks finish) is what
/// ends the writer.
async fn read_requests<R>(
    rd: R,
    target: Arc<dyn BlockTarget>,
    replies: mpsc::Sender<Reply>,
) -> Result<()>
where
    R: AsyncRead + Unpin,
{
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let budget = Arc::new(Semaphore::new(INFLIGHT_BUDGET));
    loop {
        let mut head = [0u8; 28];
        if !read_message_start(&mut rd, &mut head)
            .await
            .map_err(io_err("NBD request"))?
        {
            tracing::debug!("NBD client closed the connection without NBD_CMD_DISC");
            return Ok(());
        }
        // Big-endian fields that fill the 28 bytes exactly, read in order.
        let mut fields = &head[..];
        let magic = fields.get_u32();
        let req = Request {
            flags: fields.get_u16(),
            kind: fields.get_u16(),
            cookie: fields.get_u64(),
            offset: fields.get_u64(),
            len: fields.get_u32(),
        };
        if magic != REQUEST_MAGIC {
            return Err(Error::Protocol(format!("bad NBD request magic {magic:#x}")));
        }
        if req.kind == CMD_DISC {
            return Ok(());
        }
        if req.kind == CMD_WRITE && req.len > MAX_PAYLOAD {
            return Err(Error::Protocol(format!(
                "NBD write of {} bytes exceeds the {MAX_PAYLOAD}-byte limit",
                req.len
            )));
        }
        let cost = match req.kind {
            CMD_READ | CMD_WRITE => req.len.clamp(MIN_REQUEST_COST, MAX_PAYLOAD),
            _ => MIN_REQUEST_COST,
        };
        // The semaphore is this function's own and never closed: this cannot fail.
        let permit = budget
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| Error::Internal("the NBD request budget was closed".into()))?;
        let payload = if req.kind == CMD_WRITE {
            let mut buf = vec![0u8; req.len as usize];
            rd.read_exact(&mut buf)
                .await
                .map_err(io_err("NBD write payload"))?;
            Some(Bytes::from(buf))
        } else {
            None
        };
        let target = target.clone();
        let replies = replies.clone();
        tokio::spawn(async move {
            let (error, data) = execute(&*target, req, payload).await;
            // Fails only when the connection is already gone.
            let _ = replies
                .send(Reply {
                    cookie: req.cookie,
                    error,
                    data,
                    _budget: permit,
                })
                .await;
        });
    }
}

/// Writes replies as they come, one whole reply at a time; flushes whenever no other reply
/// is waiting. Ends when every sender is gone.
async fn write_replies<W>(wr: W, mut replies: mpsc::Receiver<Reply>) -> Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut wr = BufWriter::with_capacity(256 * 1024, wr);
    while let Some(reply) = replies.recv().await {
        let mut head = [0u8; 16];
        head[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        head[4..8].copy_from_slice(&reply.error.to_be_bytes());
        head[8..16].copy_from_slice(&reply.cookie.to_be_bytes());
        wr.write_all(&head).await.map_err(io_err("NBD reply"))?;
        if let (0, Some(data)) = (reply.error, &reply.data) {
            wr.write_all(data).await.map_err(io_err("NBD reply"))?;
        }
        drop(reply);
        if replies.is_empty() {
            wr.flush().await.map_err(io_err("NBD reply"))?;
        }
    }
    wr.flush().await.map_err(io_err("NBD reply"))?;
    // Best effort: the client may have closed its end already.
    let _ = wr.shutdown().await;
    Ok(())
}

/// Runs one request against the target; returns the NBD error (0 for success) and, for a
/// read, the data.
async fn execute(
    target: &dyn BlockTarget,
    req: Request,
    payload: Option<Bytes>,
) -> (u32, Option<Bytes>) {
    let allowed = match req.kind {
        CMD_READ | CMD_WRITE | CMD_FLUSH | CMD_TRIM => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        _ => {
            tracing::debug!(kind = req.kind, "unknown NBD command");
            return (EINVAL, None);
        }
    };
    if req.flags & !allowed != 0 {
        return (EINVAL, None);
    }
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let len = u64::from(req.len);
    let inside = req
        .offset
        .checked_add(len)
        .is_some_and(|end| end <= target.size());

    let is_write = matches!(req.kind, CMD_WRITE | CMD_WRITE_ZEROES);
    if !inside {
        return (if is_write { ENOSPC } else { EINVAL }, None);
    }
    let result = match req.kind {
        CMD_READ => {
            if req.len > MAX_PAYLOAD {
                return (EINVAL, None);
            }
            match target.read(req.offset, req.len as usize).await {
                Ok(data) if data.len() == req.len as usize => return (0, Some(data)),
                Ok(data) => Err(Error::Internal(format!(
                    "target returned {} bytes for a {}-byte read",
                    data.len(),
                    req.len
                ))),
                Err(e) => Err(e),
            }
        }
        CMD_WRITE => {
            let data = payload.unwrap_or_default();
            target.write(req.offset, data, fua).await
        }
        CMD_FLUSH => target.flush().await,
        CMD_TRIM => discard(target, req.offset, len, fua).await,
        CMD_WRITE_ZEROES if req.flags & CMD_FLAG_NO_HOLE != 0 => {
            write_zeroes(target, req.offset, len, fua).await
        }
        // The target's discard reads back as zeros, which is all WRITE_ZEROES promises.
        CMD_WRITE_ZEROES => discard(target, req.offset, len, fua).await,
        // Refused above already; answered the same way for completeness.
        _ => return (EINVAL, None),
    };
    match result {
        Ok(()) => (0, None),
        Err(e) => {
            tracing::warn!(
                command = req.kind,
                offset = req.offset,
                len = req.len,
                error = %e,
                "NBD request failed"
            );
            (errno(&e, is_write), None)
        }
    }
}

pub(super) async fn discard(
    target: &dyn BlockTarget,
    offset: u64,
    len: u64,
    fua: bool,
) -> Result<()> {
    if len > 0 {
        target.discard(offset, len).await?;
        if fua {
            target.flush().await?;
        }
    }
    Ok(())
}

async fn write_zeroes(target: &dyn BlockTarget, offset: u64, len: u64, fua: bool) -> Result<()> {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZEROES.len() as u64) as usize;
        target
            .write(offset + done, Bytes::from_static(&ZEROES[..n]), false)
            .await?;
        done += n as u64;
    }
    if fua && len > 0 {
        target.flush().await?;
    }
    Ok(())
}

pub(super) fn errno(e: &Error, is_write: bool) -> u32 {
    match e {
        Error::OutOfRange { .. } if is_write => ENOSPC,
        Error::OutOfRange { .. } => EINVAL,
        Error::Io { source, .. }
            if matches!(
                source.raw_os_error(),
                Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)
            ) =>
        {
            ENOSPC
        }
        _ => EIO,
    }
}
