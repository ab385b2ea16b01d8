//! NBD frontend: serves any [`BlockTarget`] over the Network Block Device protocol
//! (<https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>).
//!
//! What is spoken:
//! - fixed newstyle handshake (server flags `FIXED_NEWSTYLE | NO_ZEROES`) with the options
//!   `EXPORT_NAME`, `GO`, `INFO`, `LIST` and `ABORT`; every other option (TLS, structured
//!   replies, metadata contexts, extended headers...) is answered `NBD_REP_ERR_UNSUP`;
//! - one export. Its name is the `export_name` given to [`serve`]; an empty name is the
//!   protocol's "default export" and is always accepted, and an empty `export_name` accepts
//!   every name;
//! - simple replies only, for `READ`, `WRITE` (with `FUA`), `FLUSH`, `TRIM`, `WRITE_ZEROES`
//!   (with `FUA` / `NO_HOLE`) and `DISC`;
//! - pipelining: every request is run on its own task as soon as it has been read, so many
//!   are in flight at once on one connection; replies go out in completion order, one whole
//!   reply at a time. Memory held by requests in flight is bounded (see `INFLIGHT_BUDGET`).
//!
//! Bounds: a read or trim outside the export gets `EINVAL`, a write or write-zeroes outside it
//! gets `ENOSPC`; a read longer than [`MAX_PAYLOAD`] gets `EINVAL`; a write whose payload is
//! longer than [`MAX_PAYLOAD`] closes the connection (the payload cannot be skipped cheaply), as
//! does a request with a bad magic. Errors from the target become `EIO` (`ENOSPC` when the
//! underlying I/O error is `ENOSPC`/`EDQUOT`/`EFBIG`, as the spec asks).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};
use crate::target::BlockTarget;

// Handshake.
const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;
const CLIENT_FLAG_FIXED_NEWSTYLE: u32 = 1 << 0;
const CLIENT_FLAG_NO_ZEROES: u32 = 1 << 1;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

/// Option data longer than this is not a legitimate option (names are at most 4 KiB);
/// the connection is closed rather than reading it.
const MAX_OPTION_LEN: u32 = 64 * 1024;

// Transmission flags.
const FLAG_HAS_FLAGS: u16 = 1 << 0;
const FLAG_SEND_FLUSH: u16 = 1 << 2;
const FLAG_SEND_FUA: u16 = 1 << 3;
const FLAG_SEND_TRIM: u16 = 1 << 5;
const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Transmission flags sent for the export.
///
/// `CAN_MULTI_CONN` is correct because every connection talks to the same
/// `Arc<dyn BlockTarget>` without a per-connection cache, and the trait's contract is
/// global: a completed `write` is visible to every later `read`, and `flush` makes *every*
/// acknowledged write durable, not only the caller's. So a flush (or FUA) answered on one
/// connection covers writes answered on any other, as the spec requires.
pub const TRANSMISSION_FLAGS: u16 = FLAG_HAS_FLAGS
    | FLAG_SEND_FLUSH
    | FLAG_SEND_FUA
    | FLAG_SEND_TRIM
    | FLAG_SEND_WRITE_ZEROES
    | FLAG_CAN_MULTI_CONN;

// Transmission phase.
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;

const CMD_FLAG_FUA: u16 = 1 << 0;
const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

const EIO: u32 = 5;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

/// Largest read or write payload accepted (also advertised as the maximum block size).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Preferred block size advertised to clients.
const PREFERRED_BLOCK: u32 = 4096;
/// Bytes of payload (write data read off the socket, read data not yet sent) that one
/// connection may hold at once; reading further requests waits while it is used up.
const INFLIGHT_BUDGET: usize = 128 << 20;
/// Smallest share of the budget one request takes, so that the count of requests in flight
/// is bounded too.
const MIN_REQUEST_COST: u32 = 4096;

/// Zeros for `WRITE_ZEROES` with `NO_HOLE`, written a chunk at a time.
static ZEROES: [u8; 1 << 20] = [0; 1 << 20];

/// Serves one client connection: handshake, then transmission until the client disconnects.
///
/// Returns `Ok` when the client ends the session cleanly (`NBD_OPT_ABORT`, `NBD_CMD_DISC`,
/// or closing the connection between messages) and an error when the connection breaks or
/// the client violates the protocol (the connection is then closed). Requests already read
/// are completed and answered before this returns, unless the connection itself broke, in
/// which case their tasks finish in the background.
pub async fn serve<S>(mut stream: S, target: Arc<dyn BlockTarget>, export_name: &str) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    if handshake(&mut stream, target.size(), export_name).await? {
        serve_transmission(stream, target).await
    } else {
        Ok(())
    }
}

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

/// Accepts connections on a Unix socket at `path` (created here) and serves each one.
/// Runs until accepting fails for good.
pub async fn serve_unix(path: impl AsRef<Path>, target: Arc<dyn BlockTarget>) -> Result<()> {
    let path = path.as_ref();
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(Error::io(format!("bind NBD socket {}", path.display())))?;
    tracing::info!(socket = %path.display(), "NBD server listening");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => spawn_connection(stream, target.clone(), path.display().to_string()),
            Err(e) => accept_failed(e).await?,
        }
    }
}

/// Accepts connections on `listener` and serves each one. Runs until accepting fails for good.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    target: Arc<dyn BlockTarget>,
) -> Result<()> {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                spawn_connection(stream, target.clone(), peer.to_string());
            }
            Err(e) => accept_failed(e).await?,
        }
    }
}

fn spawn_connection<S>(stream: S, target: Arc<dyn BlockTarget>, peer: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        tracing::debug!(%peer, "NBD client connected");
        match serve(stream, target, "").await {
            Ok(()) => tracing::debug!(%peer, "NBD client disconnected"),
            Err(e) => tracing::warn!(%peer, error = %e, "NBD connection ended"),
        }
    });
}

/// Transient accept failures (out of descriptors, a connection reset before it was taken)
/// are waited out; anything else ends the server.
async fn accept_failed(e: std::io::Error) -> Result<()> {
    use std::io::ErrorKind::*;
    let transient = matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted)
        || matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        );
    if !transient {
        return Err(Error::io("accept NBD connection")(e));
    }
    tracing::warn!(error = %e, "accepting an NBD connection failed; retrying");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Handshake

fn io_err(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    Error::io(context)
}

/// Runs the fixed newstyle handshake. Returns true when the client entered transmission,
/// false when it aborted (or went away between options).
async fn handshake<S>(s: &mut S, size: u64, export_name: &str) -> Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBD_MAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello).await.map_err(io_err("NBD greeting"))?;
    s.flush().await.map_err(io_err("NBD greeting"))?;

    let client_flags = s.read_u32().await.map_err(io_err("NBD client flags"))?;
    if client_flags & !(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES) != 0 {
        return Err(Error::Protocol(format!(
            "NBD client sent unknown flags {client_flags:#x}"
        )));
    }
    let no_zeroes = client_flags & CLIENT_FLAG_NO_ZEROES != 0;
    let accepts =
        |name: &[u8]| export_name.is_empty() || name.is_empty() || name == export_name.as_bytes();

    loop {
        let mut head = [0u8; 16];
        if !read_message_start(s, &mut head)
            .await
            .map_err(io_err("NBD option"))?
        {
            return Ok(false);
        }
        let magic = u64::from_be_bytes(head[0..8].try_into().unwrap());
        let opt = u32::from_be_bytes(head[8..12].try_into().unwrap());
        let len = u32::from_be_bytes(head[12..16].try_into().unwrap());
        if magic != IHAVEOPT {
            return Err(Error::Protocol(format!("bad NBD option magic {magic:#x}")));
        }
        if len > MAX_OPTION_LEN {
            return Err(Error::Protocol(format!(
                "NBD option {opt} carries {len} bytes of data"
            )));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)
            .await
            .map_err(io_err("NBD option data"))?;

        match opt {
            OPT_EXPORT_NAME => {
                if !accepts(&data) {
                    // This option cannot be answered with an error: the spec says to hang up.
                    return Err(Error::Protocol(format!(
                        "NBD client asked for unknown export {:?}",
                        String::from_utf8_lossy(&data)
                    )));
                }
                let mut reply = Vec::with_capacity(10 + 124);
                reply.extend_from_slice(&size.to_be_bytes());
                reply.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                if !no_zeroes {
                    reply.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&reply)
                    .await
                    .map_err(io_err("NBD export reply"))?;
                s.flush().await.map_err(io_err("NBD export reply"))?;
                return Ok(true);
            }
            OPT_ABORT => {
                // The client may already have gone; the reply is a courtesy.
                let _ = option_reply(s, opt, REP_ACK, &[]).await;
                return Ok(false);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    option_reply(s, opt, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data").await?;
                    continue;
                }
                let mut server = Vec::with_capacity(4 + export_name.len());
                server.extend_from_slice(&(export_name.len() as u32).to_be_bytes());
                server.extend_from_slice(export_name.as_bytes());
                option_reply(s, opt, REP_SERVER, &server).await?;
                option_reply(s, opt, REP_ACK, &[]).await?;
            }
            OPT_INFO | OPT_GO => {
                let Some(name) = parse_info_request(&data) else {
                    option_reply(s, opt, REP_ERR_INVALID, b"malformed NBD_OPT_INFO/GO data")
                        .await?;
                    continue;
                };
                if !accepts(name) {
                    option_reply(s, opt, REP_ERR_UNKNOWN, b"no such export").await?;
                    continue;
                }
                let mut export = Vec::with_capacity(12);
                export.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                export.extend_from_slice(&size.to_be_bytes());
                export.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                option_reply(s, opt, REP_INFO, &export).await?;
                // Sent whether or not it was asked for, as the spec allows: any alignment
                // works, 4 KiB is best, and payloads stop at MAX_PAYLOAD.
                let mut block = Vec::with_capacity(14);
                block.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                block.extend_from_slice(&1u32.to_be_bytes());
                block.extend_from_slice(&PREFERRED_BLOCK.to_be_bytes());
                block.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
                option_reply(s, opt, REP_INFO, &block).await?;
                option_reply(s, opt, REP_ACK, &[]).await?;
                if opt == OPT_GO {
                    return Ok(true);
                }
            }
            _ => {
                option_reply(s, opt, REP_ERR_UNSUP, b"option not supported").await?;
            }
        }
    }
}

/// Parses `NBD_OPT_INFO`/`NBD_OPT_GO` data: name length, name, count of information
/// requests, the requests. Returns the name, or None when the lengths do not add up.
fn parse_info_request(data: &[u8]) -> Option<&[u8]> {
    let name_len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4usize.checked_add(name_len)?)?;
    let rest = &data[4 + name_len..];
    let count = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
    (rest.len() == 2 + 2 * count).then_some(name)
}

async fn option_reply<S>(s: &mut S, opt: u32, reply: u32, data: &[u8]) -> Result<()>
where
    S: AsyncWrite + Unpin,
{
    let mut msg = Vec::with_capacity(20 + data.len());
    msg.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    msg.extend_from_slice(&opt.to_be_bytes());
    msg.extend_from_slice(&reply.to_be_bytes());
    msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
    msg.extend_from_slice(data);
    s.write_all(&msg)
        .await
        .map_err(io_err("NBD option reply"))?;
    s.flush().await.map_err(io_err("NBD option reply"))
}

/// Fills `buf` from `r`. Returns false if the peer closed the connection before sending a
/// single byte (a clean end between messages); a close part-way is an error.
async fn read_message_start<R>(r: &mut R, buf: &mut [u8]) -> std::io::Result<bool>
where
    R: AsyncRead + Unpin,
{
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]).await? {
            0 if filled == 0 => return Ok(false),
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => filled += n,
        }
    }
    Ok(true)
}

// ---------------------------------------------------------------------------------------
// Transmission

#[derive(Debug, Clone, Copy)]
struct Request {
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
        let magic = u32::from_be_bytes(head[0..4].try_into().unwrap());
        let req = Request {
            flags: u16::from_be_bytes(head[4..6].try_into().unwrap()),
            kind: u16::from_be_bytes(head[6..8].try_into().unwrap()),
            cookie: u64::from_be_bytes(head[8..16].try_into().unwrap()),
            offset: u64::from_be_bytes(head[16..24].try_into().unwrap()),
            len: u32::from_be_bytes(head[24..28].try_into().unwrap()),
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
        let permit = budget
            .clone()
            .acquire_many_owned(cost)
            .await
            .expect("the budget semaphore is never closed");
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
        _ => unreachable!("unknown commands were refused above"),
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

async fn discard(target: &dyn BlockTarget, offset: u64, len: u64, fua: bool) -> Result<()> {
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

fn errno(e: &Error, is_write: bool) -> u32 {
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

// ---------------------------------------------------------------------------------------
// Kernel NBD device

#[cfg(target_os = "linux")]
pub use kernel::{attach_kernel, KernelNbd};

#[cfg(target_os = "linux")]
mod kernel {
    use std::fs::File;
    use std::os::fd::{AsRawFd, RawFd};
    use std::os::unix::net::UnixStream;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::thread::JoinHandle;

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

    /// A `/dev/nbdX` attached to a [`BlockTarget`] by [`attach_kernel`].
    pub struct KernelNbd {
        device: PathBuf,
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
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::DuplexStream;
    use tokio::sync::Notify;

    use super::*;
    use crate::target::FileTarget;

    const SIZE: u64 = 8 << 20;

    /// A minimal NBD client speaking raw bytes, for poking at the server.
    struct Client {
        s: DuplexStream,
    }

    impl Client {
        async fn greeting(&mut self) -> u16 {
            assert_eq!(self.s.read_u64().await.unwrap(), NBD_MAGIC);
            assert_eq!(self.s.read_u64().await.unwrap(), IHAVEOPT);
            self.s.read_u16().await.unwrap()
        }

        async fn option(&mut self, opt: u32, data: &[u8]) {
            let mut m = Vec::new();
            m.extend_from_slice(&IHAVEOPT.to_be_bytes());
            m.extend_from_slice(&opt.to_be_bytes());
            m.extend_from_slice(&(data.len() as u32).to_be_bytes());
            m.extend_from_slice(data);
            self.s.write_all(&m).await.unwrap();
        }

        /// Reads one option reply: (option, reply type, data).
        async fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
            assert_eq!(self.s.read_u64().await.unwrap(), OPT_REPLY_MAGIC);
            let opt = self.s.read_u32().await.unwrap();
            let kind = self.s.read_u32().await.unwrap();
            let len = self.s.read_u32().await.unwrap();
            let mut data = vec![0; len as usize];
            self.s.read_exact(&mut data).await.unwrap();
            (opt, kind, data)
        }

        async fn request(
            &mut self,
            flags: u16,
            kind: u16,
            cookie: u64,
            offset: u64,
            len: u32,
            payload: &[u8],
        ) {
            let mut m = Vec::new();
            m.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
            m.extend_from_slice(&flags.to_be_bytes());
            m.extend_from_slice(&kind.to_be_bytes());
            m.extend_from_slice(&cookie.to_be_bytes());
            m.extend_from_slice(&offset.to_be_bytes());
            m.extend_from_slice(&len.to_be_bytes());
            m.extend_from_slice(payload);
            self.s.write_all(&m).await.unwrap();
        }

        /// Reads a simple reply header: (error, cookie).
        async fn reply(&mut self) -> (u32, u64) {
            assert_eq!(self.s.read_u32().await.unwrap(), SIMPLE_REPLY_MAGIC);
            let error = self.s.read_u32().await.unwrap();
            (error, self.s.read_u64().await.unwrap())
        }

        async fn data(&mut self, len: usize) -> Vec<u8> {
            let mut data = vec![0; len];
            self.s.read_exact(&mut data).await.unwrap();
            data
        }

        /// Sends a command and returns its error (and consumes read data on success).
        async fn command(
            &mut self,
            flags: u16,
            kind: u16,
            offset: u64,
            len: u32,
            payload: &[u8],
        ) -> (u32, Vec<u8>) {
            self.request(flags, kind, 77, offset, len, payload).await;
            let (error, cookie) = self.reply().await;
            assert_eq!(cookie, 77);
            let data = if kind == CMD_READ && error == 0 {
                self.data(len as usize).await
            } else {
                Vec::new()
            };
            (error, data)
        }

        async fn read(&mut self, offset: u64, len: u32) -> Vec<u8> {
            let (error, data) = self.command(0, CMD_READ, offset, len, &[]).await;
            assert_eq!(error, 0, "read {offset}+{len}");
            data
        }

        async fn assert_closed(&mut self) {
            let mut byte = [0u8; 1];
            assert_eq!(
                self.s.read(&mut byte).await.unwrap(),
                0,
                "server should have hung up"
            );
        }
    }

    fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    fn file_target(dir: &tempfile::TempDir) -> Arc<FileTarget> {
        Arc::new(FileTarget::open(&dir.path().join("disk"), SIZE).unwrap())
    }

    fn start(
        target: Arc<dyn BlockTarget>,
        name: &'static str,
    ) -> (Client, tokio::task::JoinHandle<Result<()>>) {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move { serve(theirs, target, name).await });
        (Client { s: ours }, server)
    }

    /// Connects and negotiates with NBD_OPT_GO, checking the INFO replies.
    async fn connect(
        target: Arc<dyn BlockTarget>,
    ) -> (Client, tokio::task::JoinHandle<Result<()>>) {
        let (mut c, server) = start(target, "");
        assert_eq!(c.greeting().await, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        c.s.write_u32(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES)
            .await
            .unwrap();
        c.option(OPT_GO, &go_data("", &[INFO_BLOCK_SIZE])).await;
        let mut got_export = false;
        loop {
            let (opt, kind, data) = c.option_reply().await;
            assert_eq!(opt, OPT_GO);
            match kind {
                REP_INFO if data[0..2] == INFO_EXPORT.to_be_bytes() => {
                    assert_eq!(u64::from_be_bytes(data[2..10].try_into().unwrap()), SIZE);
                    assert_eq!(
                        u16::from_be_bytes(data[10..12].try_into().unwrap()),
                        TRANSMISSION_FLAGS
                    );
                    got_export = true;
                }
                REP_INFO => {}
                REP_ACK => break,
                other => panic!("unexpected GO reply {other:#x}"),
            }
        }
        assert!(got_export);
        (c, server)
    }

    #[tokio::test]
    async fn handshake_options() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, server) = start(file_target(&dir), "vol");
        assert_eq!(c.greeting().await, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        c.s.write_u32(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES)
            .await
            .unwrap();

        c.option(OPT_LIST, &[]).await;
        let (opt, kind, data) = c.option_reply().await;
        assert_eq!((opt, kind), (OPT_LIST, REP_SERVER));
        assert_eq!(data, b"\0\0\0\x03vol");
        assert_eq!(c.option_reply().await.1, REP_ACK);

        c.option(OPT_LIST, b"junk").await;
        assert_eq!(c.option_reply().await.1, REP_ERR_INVALID);

        // Unknown and unsupported options: STARTTLS, STRUCTURED_REPLY, something made up.
        for opt in [5, 8, 0x1234] {
            c.option(opt, b"whatever").await;
            let (got, kind, _) = c.option_reply().await;
            assert_eq!((got, kind), (opt, REP_ERR_UNSUP));
        }

        c.option(OPT_INFO, &go_data("other", &[])).await;
        assert_eq!(c.option_reply().await.1, REP_ERR_UNKNOWN);
        let mut bad = go_data("vol", &[1, 2]);
        bad.pop();
        c.option(OPT_INFO, &bad).await;
        assert_eq!(c.option_reply().await.1, REP_ERR_INVALID);
        c.option(OPT_GO, &[0xff, 0xff, 0xff, 0xff]).await;
        assert_eq!(c.option_reply().await.1, REP_ERR_INVALID);

        // INFO on the configured name: export info, block sizes, ACK; still negotiating after.
        c.option(OPT_INFO, &go_data("vol", &[INFO_BLOCK_SIZE]))
            .await;
        let (_, kind, data) = c.option_reply().await;
        assert_eq!(kind, REP_INFO);
        let mut want = INFO_EXPORT.to_be_bytes().to_vec();
        want.extend_from_slice(&SIZE.to_be_bytes());
        want.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
        assert_eq!(data, want);
        let (_, kind, data) = c.option_reply().await;
        assert_eq!(kind, REP_INFO);
        assert_eq!(data[0..2], INFO_BLOCK_SIZE.to_be_bytes());
        assert_eq!(data[2..6], 1u32.to_be_bytes());
        assert_eq!(data[6..10], 4096u32.to_be_bytes());
        assert_eq!(data[10..14], MAX_PAYLOAD.to_be_bytes());
        assert_eq!(c.option_reply().await.1, REP_ACK);

        // GO with the empty (default) name enters transmission.
        c.option(OPT_GO, &go_data("", &[])).await;
        assert_eq!(c.option_reply().await.1, REP_INFO);
        assert_eq!(c.option_reply().await.1, REP_INFO);
        assert_eq!(c.option_reply().await.1, REP_ACK);
        assert_eq!(c.read(0, 512).await, vec![0; 512]);
        c.request(0, CMD_DISC, 1, 0, 0, &[]).await;
        c.assert_closed().await;
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn export_name_sends_zeroes_unless_told_not_to() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, server) = start(file_target(&dir), "vol");
        c.greeting().await;
        c.s.write_u32(CLIENT_FLAG_FIXED_NEWSTYLE).await.unwrap();
        c.option(OPT_EXPORT_NAME, b"vol").await;
        assert_eq!(c.s.read_u64().await.unwrap(), SIZE);
        assert_eq!(c.s.read_u16().await.unwrap(), TRANSMISSION_FLAGS);
        assert_eq!(c.data(124).await, vec![0; 124]);
        assert_eq!(c.read(4096, 16).await, vec![0; 16]);
        drop(c);
        server.await.unwrap().unwrap();

        let (mut c, _server) = start(file_target(&dir), "vol");
        c.greeting().await;
        c.s.write_u32(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES)
            .await
            .unwrap();
        c.option(OPT_EXPORT_NAME, b"").await;
        assert_eq!(c.s.read_u64().await.unwrap(), SIZE);
        assert_eq!(c.s.read_u16().await.unwrap(), TRANSMISSION_FLAGS);
        // No zeroes: the next bytes are the reply to our first request.
        assert_eq!(c.read(0, 8).await, vec![0; 8]);
    }

    #[tokio::test]
    async fn handshake_endings() {
        let dir = tempfile::tempdir().unwrap();
        // Unknown export via EXPORT_NAME: the server can only hang up.
        let (mut c, server) = start(file_target(&dir), "vol");
        c.greeting().await;
        c.s.write_u32(CLIENT_FLAG_FIXED_NEWSTYLE).await.unwrap();
        c.option(OPT_EXPORT_NAME, b"other").await;
        c.assert_closed().await;
        assert!(server.await.unwrap().is_err());

        // ABORT is acknowledged and ends the session cleanly.
        let (mut c, server) = start(file_target(&dir), "");
        c.greeting().await;
        c.s.write_u32(CLIENT_FLAG_FIXED_NEWSTYLE).await.unwrap();
        c.option(OPT_ABORT, &[]).await;
        assert_eq!(c.option_reply().await.1, REP_ACK);
        c.assert_closed().await;
        server.await.unwrap().unwrap();

        // Unknown client flags: hang up.
        let (mut c, server) = start(file_target(&dir), "");
        c.greeting().await;
        c.s.write_u32(1 << 7).await.unwrap();
        c.assert_closed().await;
        assert!(server.await.unwrap().is_err());

        // Bad option magic: hang up.
        let (mut c, server) = start(file_target(&dir), "");
        c.greeting().await;
        c.s.write_u32(CLIENT_FLAG_FIXED_NEWSTYLE).await.unwrap();
        c.s.write_all(&[0x55; 16]).await.unwrap();
        c.assert_closed().await;
        assert!(server.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn commands_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, server) = connect(file_target(&dir)).await;

        let pattern: Vec<u8> = (0..65536u32).map(|i| (i * 7 + 3) as u8).collect();
        assert_eq!(c.command(0, CMD_WRITE, 8192, 65536, &pattern).await.0, 0);
        assert!(c.read(8192, 65536).await == pattern);
        // An unaligned write with FUA.
        assert_eq!(
            c.command(CMD_FLAG_FUA, CMD_WRITE, 100, 3, b"abc").await.0,
            0
        );
        assert_eq!(c.read(99, 5).await, b"\0abc\0");
        assert_eq!(c.command(0, CMD_FLUSH, 0, 0, &[]).await.0, 0);
        // Clients set FUA on flush too; it is accepted.
        assert_eq!(c.command(CMD_FLAG_FUA, CMD_FLUSH, 0, 0, &[]).await.0, 0);

        // TRIM reads back as zeros here (the FileTarget punches a hole).
        assert_eq!(
            c.command(CMD_FLAG_FUA, CMD_TRIM, 8192, 4096, &[]).await.0,
            0
        );
        assert_eq!(c.read(8192, 4096).await, vec![0; 4096]);
        assert!(c.read(12288, 4096).await == pattern[4096..8192]);
        // WRITE_ZEROES, hole allowed and not.
        assert_eq!(c.command(0, CMD_WRITE_ZEROES, 12288, 4096, &[]).await.0, 0);
        assert!(c.read(12288, 4096).await == vec![0; 4096]);
        let ones = vec![0xffu8; 8192];
        assert_eq!(
            c.command(0, CMD_WRITE, (1 << 20) + 5000, 8192, &ones)
                .await
                .0,
            0
        );
        let zeroed = c
            .command(
                CMD_FLAG_NO_HOLE | CMD_FLAG_FUA,
                CMD_WRITE_ZEROES,
                1 << 20,
                3 << 20,
                &[],
            )
            .await;
        assert_eq!(zeroed.0, 0);
        assert!(c.read(1 << 20, 3 << 20).await == vec![0; 3 << 20]);
        // Zero-length commands are harmless.
        assert_eq!(c.command(0, CMD_TRIM, 0, 0, &[]).await.0, 0);
        assert_eq!(c.command(0, CMD_WRITE, SIZE, 0, &[]).await.0, 0);
        // The last byte of the export is reachable.
        assert_eq!(c.command(0, CMD_WRITE, SIZE - 1, 1, b"z").await.0, 0);
        assert_eq!(c.read(SIZE - 1, 1).await, b"z");

        c.request(0, CMD_DISC, 9, 0, 0, &[]).await;
        c.assert_closed().await;
        server.await.unwrap().unwrap();
        let on_disk = std::fs::read(dir.path().join("disk")).unwrap();
        assert_eq!(&on_disk[100..103], b"abc");
        assert!(on_disk[16384..8192 + 65536] == pattern[8192..]);
        assert_eq!(on_disk[SIZE as usize - 1], b'z');
    }

    #[tokio::test]
    async fn bounds_and_bad_commands() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, server) = connect(file_target(&dir)).await;

        // Reads and trims past the end: EINVAL, and no data follows the reply.
        assert_eq!(
            c.command(0, CMD_READ, SIZE - 512, 1024, &[]).await.0,
            EINVAL
        );
        assert_eq!(
            c.command(0, CMD_READ, u64::MAX - 10, 100, &[]).await.0,
            EINVAL
        );
        assert_eq!(c.command(0, CMD_TRIM, SIZE, 1, &[]).await.0, EINVAL);
        // Writes past the end: ENOSPC, and the payload is consumed.
        assert_eq!(
            c.command(0, CMD_WRITE, SIZE - 2, 4, b"wxyz").await.0,
            ENOSPC
        );
        assert_eq!(
            c.command(0, CMD_WRITE_ZEROES, SIZE, 512, &[]).await.0,
            ENOSPC
        );
        // Reads over the payload limit, even inside a big enough export.
        let big = Arc::new(FileTarget::open(&dir.path().join("big"), 1 << 30).unwrap());
        let (mut c2, _server2) = connect_sized(big).await;
        assert_eq!(
            c2.command(0, CMD_READ, 0, MAX_PAYLOAD + 1, &[]).await.0,
            EINVAL
        );
        assert_eq!(c2.read(0, MAX_PAYLOAD).await.len(), MAX_PAYLOAD as usize);
        // Unknown commands (CACHE, BLOCK_STATUS, made up) and flags.
        for kind in [5, 7, 99] {
            assert_eq!(c.command(0, kind, 0, 512, &[]).await.0, EINVAL);
        }
        assert_eq!(
            c.command(CMD_FLAG_NO_HOLE, CMD_READ, 0, 512, &[]).await.0,
            EINVAL
        );
        assert_eq!(c.command(1 << 9, CMD_WRITE, 0, 2, b"no").await.0, EINVAL);
        // The connection still works.
        assert_eq!(c.command(0, CMD_WRITE, 0, 2, b"ok").await.0, 0);
        assert_eq!(c.read(0, 2).await, b"ok");
        drop(c);
        server.await.unwrap().unwrap();
    }

    async fn connect_sized(
        target: Arc<dyn BlockTarget>,
    ) -> (Client, tokio::task::JoinHandle<Result<()>>) {
        let (mut c, server) = start(target, "");
        c.greeting().await;
        c.s.write_u32(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES)
            .await
            .unwrap();
        c.option(OPT_EXPORT_NAME, b"").await;
        c.s.read_u64().await.unwrap();
        c.s.read_u16().await.unwrap();
        (c, server)
    }

    #[tokio::test]
    async fn protocol_violations_close_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, server) = connect(file_target(&dir)).await;
        c.s.write_all(&[0xde; 28]).await.unwrap();
        c.assert_closed().await;
        assert!(matches!(server.await.unwrap(), Err(Error::Protocol(_))));

        let (mut c, server) = connect(file_target(&dir)).await;
        c.request(0, CMD_WRITE, 1, 0, MAX_PAYLOAD + 1, &[]).await;
        c.assert_closed().await;
        assert!(matches!(server.await.unwrap(), Err(Error::Protocol(_))));
    }

    /// A FileTarget whose reads at offset 0 wait for a go-ahead, and whose flushes can be
    /// made to fail: lets the tests control timing and inject a target error.
    struct Gated {
        inner: FileTarget,
        gate: Notify,
        fail_flush: AtomicBool,
    }

    #[async_trait::async_trait]
    impl BlockTarget for Gated {
        fn size(&self) -> u64 {
            self.inner.size()
        }
        async fn read(&self, offset: u64, len: usize) -> Result<Bytes> {
            if offset == 0 {
                self.gate.notified().await;
            }
            self.inner.read(offset, len).await
        }
        async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<()> {
            self.inner.write(offset, data, fua).await
        }
        async fn flush(&self) -> Result<()> {
            if self.fail_flush.load(Ordering::SeqCst) {
                return Err(Error::Unavailable("replica lost".into()));
            }
            self.inner.flush().await
        }
        async fn discard(&self, offset: u64, len: u64) -> Result<()> {
            self.inner.discard(offset, len).await
        }
    }

    fn gated(dir: &tempfile::TempDir) -> Arc<Gated> {
        Arc::new(Gated {
            inner: FileTarget::open(&dir.path().join("disk"), SIZE).unwrap(),
            gate: Notify::new(),
            fail_flush: AtomicBool::new(false),
        })
    }

    #[tokio::test]
    async fn pipelined_requests_run_concurrently_and_reply_out_of_order() {
        let dir = tempfile::tempdir().unwrap();
        let target = gated(&dir);
        let (mut c, server) = connect(target.clone()).await;
        c.command(0, CMD_WRITE, 4096, 4, b"late").await;

        // Request 1 blocks in the target; 2..=20 are sent behind it and must all complete.
        c.request(0, CMD_READ, 1, 0, 512, &[]).await;
        c.request(0, CMD_WRITE, 2, 8192, 4, b"2nd!").await;
        for cookie in 3..=20 {
            c.request(0, CMD_READ, cookie, 4096, 4, &[]).await;
        }
        let mut seen = Vec::new();
        for _ in 2..=20 {
            let (error, cookie) = c.reply().await;
            assert_eq!(error, 0);
            if cookie != 2 {
                assert_eq!(c.data(4).await, b"late");
            }
            seen.push(cookie);
        }
        seen.sort();
        assert_eq!(seen, (2..=20).collect::<Vec<_>>());

        target.gate.notify_one();
        assert_eq!(c.reply().await, (0, 1));
        assert_eq!(c.data(512).await, vec![0; 512]);
        assert_eq!(c.read(8192, 4).await, b"2nd!");
        drop(c);
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn disconnect_answers_requests_in_flight_first() {
        let dir = tempfile::tempdir().unwrap();
        let target = gated(&dir);
        let (mut c, server) = connect(target.clone()).await;
        c.request(0, CMD_READ, 1, 0, 16, &[]).await;
        c.request(CMD_FLAG_FUA, CMD_WRITE, 2, 512, 4, b"last").await;
        c.request(0, CMD_DISC, 3, 0, 0, &[]).await;
        assert_eq!(c.reply().await, (0, 2));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!server.is_finished(), "the blocked read is still in flight");
        target.gate.notify_one();
        assert_eq!(c.reply().await, (0, 1));
        assert_eq!(c.data(16).await, vec![0; 16]);
        c.assert_closed().await;
        server.await.unwrap().unwrap();
        assert_eq!(
            &std::fs::read(dir.path().join("disk")).unwrap()[512..516],
            b"last"
        );
    }

    #[tokio::test]
    async fn target_errors_are_eio() {
        let dir = tempfile::tempdir().unwrap();
        let target = gated(&dir);
        let (mut c, _server) = connect(target.clone()).await;
        target.fail_flush.store(true, Ordering::SeqCst);
        assert_eq!(c.command(0, CMD_FLUSH, 0, 0, &[]).await.0, EIO);
        // FUA on a trim flushes, so it fails the same way.
        assert_eq!(c.command(CMD_FLAG_FUA, CMD_TRIM, 0, 4096, &[]).await.0, EIO);
        target.fail_flush.store(false, Ordering::SeqCst);
        assert_eq!(c.command(0, CMD_FLUSH, 0, 0, &[]).await.0, 0);
    }

    #[test]
    fn error_mapping() {
        let enospc = Error::io("write")(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(errno(&enospc, true), ENOSPC);
        let eio = Error::io("write")(std::io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(errno(&eio, false), EIO);
        assert_eq!(errno(&Error::Fenced("old".into()), true), EIO);
        let oor = Error::OutOfRange {
            offset: 1,
            len: 2,
            size: 0,
        };
        assert_eq!((errno(&oor, true), errno(&oor, false)), (ENOSPC, EINVAL));
    }
}
