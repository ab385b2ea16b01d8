//! A minimal NBD client for tests: fixed-newstyle handshake with NBD_OPT_GO, then one
//! request at a time. A reply means the server acknowledged the request.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_FLUSH: u16 = 3;
const FLAG_FUA: u16 = 1;

pub struct NbdClient {
    stream: UnixStream,
    pub size: u64,
    handle: u64,
}

type Res<T> = std::io::Result<T>;

fn bad(what: &str) -> std::io::Error {
    std::io::Error::other(what.to_string())
}

impl NbdClient {
    pub async fn connect(path: &std::path::Path) -> Res<NbdClient> {
        let mut s = UnixStream::connect(path).await?;
        if s.read_u64().await? != NBDMAGIC || s.read_u64().await? != IHAVEOPT {
            return Err(bad("not an NBD newstyle server"));
        }
        let _server_flags = s.read_u16().await?;
        s.write_u32(3).await?; // FIXED_NEWSTYLE | NO_ZEROES
                               // NBD_OPT_GO, empty export name, no info requests.
        s.write_u64(IHAVEOPT).await?;
        s.write_u32(OPT_GO).await?;
        s.write_u32(6).await?;
        s.write_u32(0).await?;
        s.write_u16(0).await?;
        let mut size = None;
        loop {
            if s.read_u64().await? != REPLY_MAGIC {
                return Err(bad("bad option reply magic"));
            }
            let _opt = s.read_u32().await?;
            let kind = s.read_u32().await?;
            let len = s.read_u32().await? as usize;
            let mut body = vec![0u8; len];
            s.read_exact(&mut body).await?;
            match kind {
                REP_INFO if len >= 12 && body[..2] == [0, 0] => {
                    size = Some(u64::from_be_bytes(body[2..10].try_into().unwrap()));
                }
                REP_INFO => {}
                REP_ACK => break,
                _ => return Err(bad(&format!("option refused: {kind:#x}"))),
            }
        }
        Ok(NbdClient {
            stream: s,
            size: size.ok_or_else(|| bad("no export size"))?,
            handle: 0,
        })
    }

    async fn request(
        &mut self,
        flags: u16,
        cmd: u16,
        offset: u64,
        len: u32,
        data: &[u8],
    ) -> Res<()> {
        self.handle += 1;
        let mut req = Vec::with_capacity(28 + data.len());
        req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req.extend_from_slice(&flags.to_be_bytes());
        req.extend_from_slice(&cmd.to_be_bytes());
        req.extend_from_slice(&self.handle.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        req.extend_from_slice(data);
        self.stream.write_all(&req).await?;
        if self.stream.read_u32().await? != SIMPLE_REPLY_MAGIC {
            return Err(bad("bad reply magic"));
        }
        let error = self.stream.read_u32().await?;
        if self.stream.read_u64().await? != self.handle {
            return Err(bad("reply for another request"));
        }
        if error != 0 {
            return Err(bad(&format!("NBD error {error}")));
        }
        Ok(())
    }

    pub async fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Res<()> {
        let flags = if fua { FLAG_FUA } else { 0 };
        self.request(flags, CMD_WRITE, offset, data.len() as u32, data)
            .await
    }

    pub async fn read(&mut self, offset: u64, len: u32) -> Res<Vec<u8>> {
        self.request(0, CMD_READ, offset, len, &[]).await?;
        let mut buf = vec![0u8; len as usize];
        self.stream.read_exact(&mut buf).await?;
        Ok(buf)
    }

    pub async fn flush(&mut self) -> Res<()> {
        self.request(0, CMD_FLUSH, 0, 0, &[]).await
    }
}
