//! The NBD server against a raw-bytes client: handshake options, every command, bounds,
//! pipelining and protocol violations.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::Notify;

use super::handshake::*;
use super::transmission::*;
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
async fn connect(target: Arc<dyn BlockTarget>) -> (Client, tokio::task::JoinHandle<Result<()>>) {
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
