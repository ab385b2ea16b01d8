//! The NBD fixed newstyle handshake: greeting, option haggling, and the export's size and
//! flags once the client picks it.

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{io_err, read_message_start, MAX_PAYLOAD, TRANSMISSION_FLAGS};
use crate::error::{Error, Result};

pub(super) const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
pub(super) const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
pub(super) const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

pub(super) const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub(super) const FLAG_NO_ZEROES: u16 = 1 << 1;
pub(super) const CLIENT_FLAG_FIXED_NEWSTYLE: u32 = 1 << 0;
pub(super) const CLIENT_FLAG_NO_ZEROES: u32 = 1 << 1;

pub(super) const OPT_EXPORT_NAME: u32 = 1;
pub(super) const OPT_ABORT: u32 = 2;
pub(super) const OPT_LIST: u32 = 3;
pub(super) const OPT_INFO: u32 = 6;
pub(super) const OPT_GO: u32 = 7;

pub(super) const REP_ACK: u32 = 1;
pub(super) const REP_SERVER: u32 = 2;
pub(super) const REP_INFO: u32 = 3;
pub(super) const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub(super) const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub(super) const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

pub(super) const INFO_EXPORT: u16 = 0;
pub(super) const INFO_BLOCK_SIZE: u16 = 3;

/// Option data longer than this is not a legitimate option (names are at most 4 KiB);
/// the connection is closed rather than reading it.
const MAX_OPTION_LEN: u32 = 64 * 1024;

/// Preferred block size advertised to clients.
const PREFERRED_BLOCK: u32 = 4096;

/// Runs the fixed newstyle handshake. Returns true when the client entered transmission,
/// false when it aborted (or went away between options).
pub(super) async fn handshake<S>(s: &mut S, size: u64, export_name: &str) -> Result<bool>
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
        // Big-endian fields that fill the 16 bytes exactly.
        let mut fields = &head[..];
        let magic = fields.get_u64();
        let opt = fields.get_u32();
        let len = fields.get_u32();
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

pub(super) async fn option_reply<S>(s: &mut S, opt: u32, reply: u32, data: &[u8]) -> Result<()>
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
