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
//!
//! Layout: `handshake.rs` (newstyle negotiation), `transmission.rs` (the request/reply
//! loop), `kernel.rs` (attaching `/dev/nbdX` through ioctls); this file holds the entry
//! points and what the phases share.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::error::{Error, Result};
use crate::target::BlockTarget;

mod handshake;
#[cfg(target_os = "linux")]
mod kernel;
mod transmission;

#[cfg(target_os = "linux")]
pub use kernel::{attach_kernel, KernelNbd};
pub use transmission::serve_transmission;

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

/// Largest read or write payload accepted (also advertised as the maximum block size).
pub const MAX_PAYLOAD: u32 = 32 << 20;

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
    if handshake::handshake(&mut stream, target.size(), export_name).await? {
        serve_transmission(stream, target).await
    } else {
        Ok(())
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

fn io_err(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    Error::io(context)
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

#[cfg(test)]
mod tests;
