//! Many gRPC clients that dial a Unix socket send the socket's path as the HTTP/2
//! `:authority` of every request: the kubelet's plugin watcher (grpc-go dialling a bare
//! path), Python's grpcio (`unix:///path/csi.sock`), and others. The h2 crate under tonic
//! refuses such a request (a path is not a URI authority) with RST_STREAM PROTOCOL_ERROR
//! (hyperium/h2#487 is open), so the kubelet would never register the plugin and a user's
//! own tools could not call the CSI socket.
//!
//! So every connection to a Warren Unix socket is read through `AuthorityFilter`
//! (`super::grpc_connections`): the client's header blocks are decoded (HPACK, with the
//! connection's dynamic table) and encoded again with a `:authority` of `localhost` when
//! the one sent is not a valid authority; every other frame, and everything the server
//! sends back, passes byte for byte. Written by hand because no crate offers it: h2 has
//! no switch for it, and the HPACK codec itself comes from `fluke-hpack`.

use std::borrow::Cow;

use fluke_hpack::encoder::encode_integer_into;
use fluke_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};

fn malformed(what: &str) -> Error {
    Error::InvalidArgument(format!("HTTP/2 from a client: {what}"))
}

/// What every HTTP/2 client sends first.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE a peer may have; rewritten blocks are cut to it.
const MAX_FRAME: usize = 16_384;
/// A registration request's headers are a few hundred bytes; anything near this is abuse.
const MAX_BLOCK: usize = 64 * 1024;
/// The HPACK table size h2 allows its peers (the protocol's default; tonic keeps it).
const TABLE_SIZE: usize = 4096;

struct PendingBlock {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
}

/// Rewrites the client-to-server half of one HTTP/2 connection, frame by frame.
pub struct AuthorityFilter {
    decoder: Decoder<'static>,
    pending: Option<PendingBlock>,
}

impl Default for AuthorityFilter {
    fn default() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        AuthorityFilter {
            decoder,
            pending: None,
        }
    }
}

impl AuthorityFilter {
    /// One frame from the client (its 9-byte header and payload) in, the bytes to pass on
    /// out: nothing while a header block is still incomplete.
    pub fn frame(&mut self, header: &[u8; 9], payload: &[u8]) -> Result<Vec<u8>> {
        let kind = header[3];
        let flags = header[4];
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        match (kind, self.pending.as_mut()) {
            (HEADERS, None) => {
                let fragment = headers_fragment(flags, payload)?;
                self.pending = Some(PendingBlock {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    block: fragment.to_vec(),
                });
            }
            (CONTINUATION, Some(pending)) if pending.stream == stream => {
                pending.block.extend_from_slice(payload);
                if pending.block.len() > MAX_BLOCK {
                    return Err(malformed(&format!(
                        "a header block of {} bytes",
                        pending.block.len()
                    )));
                }
            }
            (CONTINUATION, _) | (_, Some(_)) => {
                return Err(malformed("a header block was interrupted"))
            }
            (_, None) => {
                let mut out = Vec::with_capacity(9 + payload.len());
                out.extend_from_slice(header);
                out.extend_from_slice(payload);
                return Ok(out);
            }
        }
        if flags & END_HEADERS == 0 {
            return Ok(Vec::new());
        }
        let Some(pending) = self.pending.take() else {
            return Err(malformed("END_HEADERS outside a header block"));
        };
        let block = self.rewrite_block(&pending.block)?;
        Ok(frames_for_block(pending.stream, pending.end_stream, &block))
    }

    fn rewrite_block(&mut self, block: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(block.len() + 16);
        self.decoder
            .decode_with_cb(block, |name: Cow<[u8]>, value: Cow<[u8]>| {
                let value: &[u8] = if &name[..] == b":authority" && !valid_authority(&value) {
                    b"localhost"
                } else {
                    &value
                };
                encode_literal(&name, value, &mut out);
            })
            .map_err(|e| malformed(&format!("header block does not decode: {e:?}")))?;
        Ok(out)
    }
}

/// The header block fragment of a HEADERS frame, without padding and priority.
fn headers_fragment(flags: u8, payload: &[u8]) -> Result<&[u8]> {
    let mut fragment = payload;
    let mut padding = 0usize;
    if flags & PADDED != 0 {
        let (&pad, rest) = fragment
            .split_first()
            .ok_or(malformed("PADDED HEADERS without a pad length"))?;
        padding = pad as usize;
        fragment = rest;
    }
    if flags & PRIORITY != 0 {
        fragment = fragment
            .get(5..)
            .ok_or(malformed("PRIORITY HEADERS too short"))?;
    }
    if padding > fragment.len() {
        return Err(malformed("padding longer than the frame"));
    }
    Ok(&fragment[..fragment.len() - padding])
}

/// A header block as one HEADERS frame and as many CONTINUATION frames as it needs. The
/// priority fields are dropped: deprecated by RFC 9113, and ignored by h2.
fn frames_for_block(stream: u32, end_stream: bool, block: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(block.len() + 18);
    let chunks: Vec<&[u8]> = if block.is_empty() {
        vec![&[]]
    } else {
        block.chunks(MAX_FRAME).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let mut flags = 0;
        if i == 0 && end_stream {
            flags |= END_STREAM;
        }
        if i + 1 == chunks.len() {
            flags |= END_HEADERS;
        }
        out.extend_from_slice(&(chunk.len() as u32).to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// "Literal header field without indexing, new name" (RFC 7541 6.2.2), plain strings: the
/// server's HPACK table never changes, so nothing about it can go out of step.
#[allow(clippy::expect_used)] // encoding into a Vec cannot fail: it has no I/O to fail
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0);
    for string in [name, value] {
        encode_integer_into(string.len(), 7, 0, out).expect("writing to a Vec cannot fail");
        out.extend_from_slice(string);
    }
}

fn valid_authority(value: &[u8]) -> bool {
    !value.is_empty() && http::uri::Authority::try_from(value).is_ok()
}

/// Copies `client` to `server` through an `AuthorityFilter` until either side ends.
pub async fn filter_connection<R, W>(mut client: R, mut server: W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let invalid = |e: Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
    let mut preface = [0u8; 24];
    client.read_exact(&mut preface).await?;
    if &preface != PREFACE {
        return Err(invalid(malformed("no connection preface")));
    }
    server.write_all(&preface).await?;
    let mut filter = AuthorityFilter::default();
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; 9];
        match client.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        payload.resize(len, 0);
        client.read_exact(&mut payload).await?;
        let out = filter.frame(&header, &payload).map_err(invalid)?;
        if !out.is_empty() {
            server.write_all(&out).await?;
        }
    }
    server.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluke_hpack::Encoder;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> ([u8; 9], Vec<u8>) {
        let mut header = [0u8; 9];
        header[..3].copy_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        header[3] = kind;
        header[4] = flags;
        header[5..].copy_from_slice(&stream.to_be_bytes());
        (header, payload.to_vec())
    }

    /// Splits the filter's output into (kind, flags, stream, payload) frames.
    fn parse(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            frames.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        frames
    }

    fn request(authority: &[u8]) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (
                b":path",
                b"/pluginregistration.Registration/GetInfo".to_vec(),
            ),
            (b":authority", authority.to_vec()),
            (b"content-type", b"application/grpc".to_vec()),
        ]
    }

    fn decoded(block: &[u8], decoder: &mut Decoder) -> Vec<(Vec<u8>, Vec<u8>)> {
        decoder.decode(block).expect("the rewritten block decodes")
    }

    #[test]
    fn a_socket_path_authority_becomes_localhost_and_the_rest_is_kept() {
        let path = b"/var/lib/kubelet/plugins_registry/warren.csi.dev-reg.sock";
        let mut client = Encoder::new();
        let mut filter = AuthorityFilter::default();
        let mut server = Decoder::new();
        // Twice on one connection: the second block refers to the client's dynamic table.
        for stream in [1u32, 3] {
            let headers = request(path);
            let block = client.encode(headers.iter().map(|(n, v)| (*n, &v[..])));
            let (h, p) = frame(HEADERS, END_HEADERS, stream, &block);
            let frames = parse(&filter.frame(&h, &p).unwrap());
            assert_eq!(frames.len(), 1);
            let (kind, flags, id, payload) = &frames[0];
            assert_eq!((*kind, *flags, *id), (HEADERS, END_HEADERS, stream));
            let got = decoded(payload, &mut server);
            let mut want: Vec<(Vec<u8>, Vec<u8>)> = headers
                .iter()
                .map(|(n, v)| (n.to_vec(), v.clone()))
                .collect();
            want[3].1 = b"localhost".to_vec();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn a_valid_authority_is_left_alone() {
        let mut client = Encoder::new();
        let headers = request(b"localhost:1234");
        let block = client.encode(headers.iter().map(|(n, v)| (*n, &v[..])));
        let (h, p) = frame(HEADERS, END_HEADERS | END_STREAM, 1, &block);
        let frames = parse(&AuthorityFilter::default().frame(&h, &p).unwrap());
        assert_eq!(frames[0].1, END_HEADERS | END_STREAM);
        let got = decoded(&frames[0].3, &mut Decoder::new());
        assert_eq!(got[3], (b":authority".to_vec(), b"localhost:1234".to_vec()));
    }

    #[test]
    fn padded_prioritized_and_continued_blocks_are_joined() {
        let mut client = Encoder::new();
        let block = client.encode(
            request(b"/a/socket")
                .iter()
                .map(|(n, v)| (*n, &v[..]))
                .collect::<Vec<_>>(),
        );
        let (first, rest) = block.split_at(7);
        let mut payload = vec![3u8]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
        payload.extend_from_slice(first);
        payload.extend_from_slice(&[0, 0, 0]); // padding
        let mut filter = AuthorityFilter::default();
        let (h, p) = frame(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &payload);
        assert!(
            filter.frame(&h, &p).unwrap().is_empty(),
            "waits for the block's end"
        );
        let (h, p) = frame(CONTINUATION, END_HEADERS, 5, rest);
        let frames = parse(&filter.frame(&h, &p).unwrap());
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].1, END_STREAM | END_HEADERS);
        let got = decoded(&frames[0].3, &mut Decoder::new());
        assert_eq!(got[3].1, b"localhost");
        assert_eq!(got[2].1, b"/pluginregistration.Registration/GetInfo");
    }

    #[test]
    fn other_frames_pass_byte_for_byte() {
        let mut filter = AuthorityFilter::default();
        for (kind, flags, stream, payload) in [
            (0x4u8, 0u8, 0u32, vec![0, 3, 0, 0, 0, 100]), // SETTINGS
            (0x0, END_STREAM, 1, vec![0, 0, 0, 0, 2, 8, 1]), // DATA
            (0x8, 0, 0, vec![0, 1, 0, 0]),                // WINDOW_UPDATE
        ] {
            let (h, p) = frame(kind, flags, stream, &payload);
            let mut want = h.to_vec();
            want.extend_from_slice(&p);
            assert_eq!(filter.frame(&h, &p).unwrap(), want);
        }
    }

    #[test]
    fn broken_input_is_refused() {
        let mut filter = AuthorityFilter::default();
        let (h, p) = frame(CONTINUATION, END_HEADERS, 1, b"x");
        assert!(filter.frame(&h, &p).is_err());
        let (h, p) = frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 1, 2]);
        assert!(filter.frame(&h, &p).is_err());
        let (h, p) = frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff]);
        assert!(filter.frame(&h, &p).is_err());
        let mut filter = AuthorityFilter::default();
        let (h, p) = frame(HEADERS, 0, 1, &[0x82]);
        filter.frame(&h, &p).unwrap();
        let (h, p) = frame(0x0, 0, 1, b"data");
        assert!(filter.frame(&h, &p).is_err());
    }
}
