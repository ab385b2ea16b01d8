//! The replica wire protocol: length-prefixed frames, each with a CRC32C over header and
//! body. Data requests carry their generation and offset in the fixed header and raw bytes
//! as the body; control messages carry JSON bodies (they are rare, and readable in a trace).
//!
//! ```text
//! 0      4     5     6       8            16     24        32        36     40
//! | magic | kind | flags | status | request_id | gen | offset | body_len | crc32c | body...
//! ```
//! All integers little-endian. `crc32c` is the CRC32C of the body followed by header
//! bytes 0..36 (body first, so a body sent to several replicas is checksummed once, and
//! each frame only appends its own header: `frame_crc`). A frame whose
//! magic, kind, length or checksum is wrong is refused and the connection closed: after a
//! bad frame the byte stream cannot be trusted to be re-synchronised.

use std::sync::{Arc, OnceLock};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::pool::BufferPool;

pub const MAGIC: u32 = 0x3153_4e57; // "WNS1" on the wire
pub const HEADER_LEN: usize = 40;
/// Largest data request: the engine splits larger I/O.
pub const MAX_IO: usize = 4 << 20;
/// Largest body of any frame (a region bitmap of a 64 TiB volume at 1 MiB regions is 8 MiB).
pub const MAX_BODY: usize = 8 << 20;

/// FUA: the write is durable on this replica before it is acknowledged.
pub const FLAG_FUA: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Challenge = 2,
    Auth = 3,
    AuthOk = 4,
    Open = 10,
    GetState = 11,
    Commit = 12,
    BeginRebuild = 13,
    Checkpoint = 14,
    Close = 15,
    GetBitmap = 16,
    /// Grow the replica (`GrowRequest`): an engine growing its volume on the node's word.
    Grow = 17,
    /// Copy the replica's data, as it is now, into a snapshot (`SnapshotRequest`): sent by
    /// an engine holding its membership write lock, so no I/O is in flight.
    Snapshot = 18,
    Read = 20,
    Write = 21,
    Flush = 22,
    Discard = 23,
    /// Every reply: `status` 0 with the answer's body, or an error status with a message.
    Reply = 100,
}

impl Kind {
    fn from_u8(value: u8) -> Option<Kind> {
        use Kind::*;
        Some(match value {
            1 => Hello,
            2 => Challenge,
            3 => Auth,
            4 => AuthOk,
            10 => Open,
            11 => GetState,
            12 => Commit,
            13 => BeginRebuild,
            14 => Checkpoint,
            15 => Close,
            16 => GetBitmap,
            17 => Grow,
            18 => Snapshot,
            20 => Read,
            21 => Write,
            22 => Flush,
            23 => Discard,
            100 => Reply,
            _ => return None,
        })
    }
}

/// Error statuses in replies; the engine acts on them (a fenced engine stops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Status {
    Ok = 0,
    Invalid = 1,
    NotFound = 2,
    Fenced = 3,
    Busy = 4,
    Io = 5,
    OutOfRange = 6,
    Internal = 7,
}

impl Status {
    pub fn from_u16(value: u16) -> Status {
        match value {
            0 => Status::Ok,
            1 => Status::Invalid,
            2 => Status::NotFound,
            3 => Status::Fenced,
            4 => Status::Busy,
            5 => Status::Io,
            6 => Status::OutOfRange,
            _ => Status::Internal,
        }
    }

    /// The status a replica answers for an error.
    pub fn of(error: &Error) -> Status {
        match error {
            Error::InvalidArgument(_) | Error::Protocol(_) => Status::Invalid,
            Error::NotFound(_) => Status::NotFound,
            Error::Fenced(_) => Status::Fenced,
            Error::Busy(_) => Status::Busy,
            Error::OutOfRange { .. } => Status::OutOfRange,
            Error::Io { .. } => Status::Io,
            _ => Status::Internal,
        }
    }

    /// The error a client sees for a non-OK reply.
    pub fn into_error(self, message: String) -> Error {
        match self {
            Status::Ok => Error::Internal("OK status used as an error".into()),
            Status::Invalid => Error::InvalidArgument(message),
            Status::NotFound => Error::NotFound(message),
            Status::Fenced => Error::Fenced(message),
            Status::Busy => Error::Busy(message),
            Status::Io => Error::Io {
                context: "replica".into(),
                source: std::io::Error::other(message),
            },
            Status::OutOfRange => Error::InvalidArgument(message),
            Status::Internal => Error::Internal(message),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub flags: u8,
    pub status: u16,
    pub request_id: u64,
    pub gen: u64,
    pub offset: u64,
    pub body: Bytes,
    /// The body's checksum, shared with the other frames that carry the same body (see
    /// `BodyCrc`); `None` computes it when the frame is encoded.
    pub body_crc: Option<BodyCrc>,
}

/// A body's CRC32C, computed at most once however many frames carry that body: the engine
/// sends each write to every replica, and each extra checksum is one more pass over the
/// data. Attach it only to frames whose body is that same data.
/// (Combining a header checksum with a body checksum instead, `crc32c_combine`, costs
/// ~9 µs for a 4 KiB body here, more than checksumming it again.)
#[derive(Debug, Clone, Default)]
pub struct BodyCrc(Arc<OnceLock<u32>>);

impl BodyCrc {
    fn of(&self, body: &[u8]) -> u32 {
        *self.0.get_or_init(|| crc32c::crc32c(body))
    }
}

/// A cache of a value derived from the body, not part of the frame's value.
impl PartialEq for BodyCrc {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for BodyCrc {}

impl Frame {
    pub fn request(kind: Kind, request_id: u64, body: Bytes) -> Frame {
        Frame {
            kind,
            flags: 0,
            status: 0,
            request_id,
            gen: 0,
            offset: 0,
            body,
            body_crc: None,
        }
    }

    /// A frame with `value` as its JSON body. Fails only for a value JSON cannot hold (a
    /// map with non-string keys, a failing `Serialize`); the protocol's messages are not.
    pub fn json<T: serde::Serialize>(kind: Kind, request_id: u64, value: &T) -> Result<Frame> {
        let body = serde_json::to_vec(value)
            .map_err(|e| Error::Internal(format!("encode {kind:?} body: {e}")))?;
        Ok(Frame::request(kind, request_id, Bytes::from(body)))
    }

    pub fn reply(request_id: u64, body: Bytes) -> Frame {
        Frame::request(Kind::Reply, request_id, body)
    }

    pub fn error_reply(request_id: u64, error: &Error) -> Frame {
        let mut frame = Frame::reply(request_id, Bytes::from(error.to_string()));
        frame.status = Status::of(error) as u16;
        frame
    }

    pub fn parse_json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::Protocol(format!("bad {:?} body: {e}", self.kind)))
    }

    /// The frame's bytes: header then body.
    pub fn encode(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(HEADER_LEN + self.body.len());
        out.put_u32_le(MAGIC);
        out.put_u8(self.kind as u8);
        out.put_u8(self.flags);
        out.put_u16_le(self.status);
        out.put_u64_le(self.request_id);
        out.put_u64_le(self.gen);
        out.put_u64_le(self.offset);
        out.put_u32_le(self.body.len() as u32);
        let body_crc = match &self.body_crc {
            Some(shared) => shared.of(&self.body),
            None => crc32c::crc32c(&self.body),
        };
        let crc = crc32c::crc32c_append(body_crc, &out[..36]);
        out.put_u32_le(crc);
        out
    }
}

/// A frame's checksum: the body's CRC32C, continued over the first 36 header bytes.
pub fn frame_crc(header: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(body), header)
}

/// The header fields, once checked; the body is read next.
struct Header {
    kind: Kind,
    flags: u8,
    status: u16,
    request_id: u64,
    gen: u64,
    offset: u64,
    body_len: usize,
    crc: u32,
}

fn parse_header(raw: &[u8; HEADER_LEN]) -> Result<Header> {
    parse_header_limited(raw, MAX_BODY)
}

fn parse_header_limited(raw: &[u8; HEADER_LEN], max_body: usize) -> Result<Header> {
    // The fields fill the 40 bytes exactly; each is checked as soon as it is read.
    let mut fields = &raw[..];
    let magic = fields.get_u32_le();
    if magic != MAGIC {
        return Err(Error::Protocol(format!("bad magic {magic:#x}")));
    }
    let kind_byte = fields.get_u8();
    let kind = Kind::from_u8(kind_byte)
        .ok_or_else(|| Error::Protocol(format!("unknown frame kind {kind_byte}")))?;
    let flags = fields.get_u8();
    let status = fields.get_u16_le();
    let request_id = fields.get_u64_le();
    let gen = fields.get_u64_le();
    let offset = fields.get_u64_le();
    let body_len = fields.get_u32_le() as usize;
    if body_len > max_body {
        return Err(Error::Protocol(format!(
            "frame body of {body_len} bytes exceeds {max_body}"
        )));
    }
    let crc = fields.get_u32_le();
    Ok(Header {
        kind,
        flags,
        status,
        request_id,
        gen,
        offset,
        body_len,
        crc,
    })
}

/// Decodes one frame from the front of `buf` if it is complete: `Ok(None)` asks for more
/// bytes. Used by the fuzz target and tests; the stream reader below shares the checks.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>> {
    let Some(raw) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = parse_header(raw)?;
    let total = HEADER_LEN + header.body_len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = Bytes::copy_from_slice(&buf[HEADER_LEN..total]);
    Ok(Some((finish(raw, header, body)?, total)))
}

fn finish(raw: &[u8; HEADER_LEN], header: Header, body: Bytes) -> Result<Frame> {
    if frame_crc(&raw[..36], &body) != header.crc {
        return Err(Error::Protocol(format!(
            "checksum mismatch in {:?} frame {}",
            header.kind, header.request_id
        )));
    }
    Ok(Frame {
        kind: header.kind,
        flags: header.flags,
        status: header.status,
        request_id: header.request_id,
        gen: header.gen,
        offset: header.offset,
        body,
        body_crc: None,
    })
}

/// Reads one frame. `Ok(None)` at a clean end of stream (between frames).
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Frame>> {
    read_frame_limited(reader, MAX_BODY).await
}

/// `read_frame` refusing bodies over `max_body` from the header alone (before allocating):
/// the handshake uses a small limit, so a peer without the token cannot make us hold
/// megabytes.
pub async fn read_frame_limited<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_body: usize,
) -> Result<Option<Frame>> {
    let mut raw = [0u8; HEADER_LEN];
    match reader.read_exact(&mut raw).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::io("read frame header")(e)),
    }
    let header = parse_header_limited(&raw, max_body)?;
    // Read into spare capacity: no zeroing of buffers that are about to be overwritten.
    // Large bodies reuse pooled memory (see pool.rs).
    let pool = BufferPool::global();
    let mut body = pool.take(header.body_len);
    while body.len() < header.body_len {
        let want = (header.body_len - body.len()) as u64;
        let n = (&mut *reader)
            .take(want)
            .read_buf(&mut body)
            .await
            .map_err(Error::io("read frame body"))?;
        if n == 0 {
            return Err(Error::io("read frame body")(
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
    }
    finish(&raw, header, pool.freeze(body)).map(Some)
}

/// A frame on its way out, with the share of the connection's in-flight budget it holds
/// until it is written (see `server.rs`).
pub struct Outgoing(pub Frame, pub Option<Box<dyn Send + Sync>>);

impl From<Frame> for Outgoing {
    fn from(frame: Frame) -> Self {
        Outgoing(frame, None)
    }
}

/// Socket buffer size on both ends: many small frames travel in one syscall.
pub const SOCKET_BUFFER: usize = 256 << 10;

/// Writes frames from `frames` to `writer` until the channel closes or the socket fails,
/// flushing only when no further frame is waiting: under load, replies and requests are
/// batched into few syscalls; when idle, each goes out at once.
pub async fn pump_frames<W: AsyncWrite + Unpin>(
    writer: W,
    mut frames: tokio::sync::mpsc::Receiver<Outgoing>,
) -> Result<()> {
    let mut writer = tokio::io::BufWriter::with_capacity(SOCKET_BUFFER, writer);
    while let Some(first) = frames.recv().await {
        write_frame(&mut writer, &first.0).await?;
        while let Ok(next) = frames.try_recv() {
            write_frame(&mut writer, &next.0).await?;
        }
        writer.flush().await.map_err(Error::io("write frames"))?;
    }
    Ok(())
}

pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, frame: &Frame) -> Result<()> {
    let header = frame.encode();
    // Header and body in one vectored write: no copy of the data, one syscall when it fits.
    let mut parts = [
        std::io::IoSlice::new(&header),
        std::io::IoSlice::new(&frame.body),
    ];
    let mut slices: &mut [std::io::IoSlice] = &mut parts;
    let total = header.len() + frame.body.len();
    let mut written = 0;
    while written < total {
        let n = writer
            .write_vectored(slices)
            .await
            .map_err(Error::io("write frame"))?;
        if n == 0 {
            return Err(Error::io("write frame")(
                std::io::ErrorKind::WriteZero.into(),
            ));
        }
        written += n;
        std::io::IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Frame {
        Frame {
            kind: Kind::Write,
            flags: FLAG_FUA,
            status: 0,
            request_id: 42,
            gen: 7,
            offset: 1 << 20,
            body: Bytes::from(vec![0x5a; 4096]),
            body_crc: None,
        }
    }

    #[test]
    fn a_shared_body_checksum_encodes_the_same_frames() {
        let shared = BodyCrc::default();
        for (id, gen) in [(1, 5), (2, 9)] {
            let mut plain = sample();
            plain.request_id = id;
            plain.gen = gen;
            let mut with_shared = plain.clone();
            with_shared.body_crc = Some(shared.clone());
            assert_eq!(with_shared.encode(), plain.encode());
        }
        assert_eq!(
            shared.0.get().copied(),
            Some(crc32c::crc32c(&sample().body)),
            "computed once, kept for the next frame"
        );
    }

    #[test]
    fn round_trip() {
        let bytes = sample().encode();
        let mut all = bytes.to_vec();
        all.extend_from_slice(&sample().body);
        let (frame, used) = decode(&all).unwrap().unwrap();
        assert_eq!(frame, sample());
        assert_eq!(used, all.len());
        assert!(decode(&all[..all.len() - 1]).unwrap().is_none());
    }

    fn wire(frame: &Frame) -> Vec<u8> {
        let mut all = frame.encode().to_vec();
        all.extend_from_slice(&frame.body);
        all
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let good = wire(&Frame {
            body: Bytes::from_static(b"abc"),
            ..sample()
        });
        for byte in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[byte] ^= 1 << bit;
                // A flip in the length may make the frame look incomplete; never valid.
                assert!(
                    !matches!(decode(&bad), Ok(Some(_))),
                    "flip of bit {bit} in byte {byte} accepted"
                );
            }
        }
    }

    #[test]
    fn oversized_body_is_refused_from_the_header_alone() {
        let mut raw = wire(&sample());
        raw[32..36].copy_from_slice(&((MAX_BODY as u32) + 1).to_le_bytes());
        assert!(matches!(
            decode(&raw[..HEADER_LEN]),
            Err(Error::Protocol(_))
        ));
    }

    #[tokio::test]
    async fn stream_round_trip_and_truncation() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, &sample()).await.unwrap();
        assert_eq!(read_frame(&mut b).await.unwrap().unwrap(), sample());
        // A frame cut short mid-body is an error, not a clean end.
        let bytes = wire(&sample());
        a.write_all(&bytes[..100]).await.unwrap();
        drop(a);
        assert!(read_frame(&mut b).await.is_err());
    }
}
