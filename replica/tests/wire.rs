//! Bad input on the replica wire is refused without harm: a real `ReplicaService` on
//! loopback is sent hand-built frames and raw bytes, before and after authentication.
//! Every case checks that the peer got an error reply and/or a closed connection, that the
//! replica's files did not change (or were never created), that no server code panicked,
//! and that a well-behaved `ReplicaClient` on its own connection kept being served.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_replica::auth::{client_handshake, Token};
use warren_replica::client::ReplicaClient;
use warren_replica::messages::{GenerationChange, OpenRequest};
use warren_replica::protocol::{
    frame_crc, read_frame, Frame, Kind, Status, HEADER_LEN, MAGIC, MAX_BODY, MAX_IO,
};
use warren_replica::server::ReplicaService;
use warren_replica::Error;

const TOKEN: &str = "wire-test-token-0123456789abcdef";
const REPLICA: &str = "r1";
const SIZE: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(5);

fn token() -> Token {
    Token::new(TOKEN.as_bytes().to_vec()).unwrap()
}

// ---------------------------------------------------------------------------------------
// Panics in the service. A spawned connection task that panics only ends that connection
// in a test build, but release builds are `panic = "abort"`: there it ends the replica.
// A panic hook records every panic that did not come from this file's own assertions.

fn server_panics() -> &'static Mutex<Vec<String>> {
    static PANICS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    PANICS.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let from_tests = info
                .location()
                .is_some_and(|l| l.file().ends_with("tests/wire.rs"));
            if !from_tests {
                if let Ok(mut panics) = server_panics().lock() {
                    panics.push(info.to_string());
                }
            }
            previous(info);
        }));
        Mutex::new(Vec::new())
    })
}

fn assert_no_server_panic() {
    let panics = server_panics()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert!(panics.is_empty(), "server code panicked: {panics:#?}");
}

// ---------------------------------------------------------------------------------------
// Fixtures.

struct Server {
    root: PathBuf,
    address: SocketAddr,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start() -> Server {
    server_panics(); // install the hook before anything can panic
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("replicas");
    let service = ReplicaService::new(root.clone(), REPLICA.into(), token()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = service.serve(listener).await;
    });
    Server {
        root,
        address,
        _dir: dir,
        task,
    }
}

impl Server {
    async fn client(&self) -> ReplicaClient {
        ReplicaClient::connect(REPLICA, &self.address.to_string(), &token(), WAIT)
            .await
            .unwrap()
    }

    async fn raw(&self) -> TcpStream {
        let stream = TcpStream::connect(self.address).await.unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    }

    /// A raw connection past a valid handshake.
    async fn authenticated(&self) -> TcpStream {
        let mut stream = self.raw().await;
        client_handshake(&mut stream, &token()).await.unwrap();
        stream
    }

    /// A raw connection past a valid handshake with `volume` open.
    async fn opened(&self, volume: &str) -> TcpStream {
        let mut stream = self.authenticated().await;
        let open = OpenRequest {
            volume: volume.into(),
            size: SIZE,
            create: false,
        };
        let reply = exchange(&mut stream, &Frame::json(Kind::Open, 77, &open).unwrap()).await;
        assert_eq!(reply.status, Status::Ok as u16, "{}", text(&reply));
        assert_eq!(reply.request_id, 77);
        stream
    }

    /// Creates `volume` at generation 1 holding a pattern, through a real client.
    async fn prepare(&self, volume: &str) {
        let client = self.client().await;
        client.open(volume, SIZE, true).await.unwrap();
        client.commit(0, 1, &[REPLICA.to_string()]).await.unwrap();
        let pattern: Vec<u8> = (0..SIZE).map(|i| (i * 7 + 3) as u8).collect();
        client
            .write(1, 0, Bytes::from(pattern), true)
            .await
            .unwrap();
    }

    fn files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    out.insert(path.clone(), Vec::new());
                    walk(&path, out);
                } else {
                    out.insert(path.clone(), std::fs::read(&path).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.root, &mut out);
        out
    }

    fn names(&self) -> Vec<PathBuf> {
        self.files().into_keys().collect()
    }

    /// The bytes a bad peer must not change.
    fn snapshot(&self, volume: &str) -> (Vec<u8>, Vec<u8>) {
        let dir = self.root.join(volume);
        (
            std::fs::read(dir.join("data")).unwrap(),
            std::fs::read(dir.join("meta.json")).unwrap(),
        )
    }
}

/// The well-behaved engine: its own volume, its own connection, served throughout.
struct Bystander {
    client: ReplicaClient,
    round: u8,
}

impl Bystander {
    async fn new(server: &Server) -> Bystander {
        let client = server.client().await;
        client.open("bystander", SIZE, true).await.unwrap();
        client.commit(0, 1, &[REPLICA.to_string()]).await.unwrap();
        Bystander { client, round: 0 }
    }

    async fn still_served(&mut self, after: &str) {
        self.round = self.round.wrapping_add(1);
        let data = Bytes::from(vec![self.round; 4096]);
        let offset = 4096 * (self.round as u64 % 64);
        self.client
            .write(1, offset, data.clone(), false)
            .await
            .unwrap_or_else(|e| panic!("bystander write after {after}: {e}"));
        let back = self
            .client
            .read(1, offset, 4096)
            .await
            .unwrap_or_else(|e| panic!("bystander read after {after}: {e}"));
        assert_eq!(back, data, "bystander data after {after}");
        assert!(!self.client.is_failed(), "bystander failed after {after}");
        assert_no_server_panic();
    }
}

fn wire(frame: &Frame) -> Vec<u8> {
    let mut all = frame.encode().to_vec();
    all.extend_from_slice(&frame.body);
    all
}

fn at(kind: Kind, id: u64, gen: u64, offset: u64, body: impl Into<Bytes>) -> Frame {
    let mut frame = Frame::request(kind, id, body.into());
    frame.gen = gen;
    frame.offset = offset;
    frame
}

fn read_req(id: u64, gen: u64, offset: u64, len: u32) -> Frame {
    at(Kind::Read, id, gen, offset, len.to_le_bytes().to_vec())
}

/// Rewrites the CRC of a hand-edited frame so that only the edit is wrong.
fn reseal(raw: &mut [u8]) {
    let crc = frame_crc(&raw[..36], &raw[HEADER_LEN..]);
    raw[36..40].copy_from_slice(&crc.to_le_bytes());
}

fn text(frame: &Frame) -> String {
    String::from_utf8_lossy(&frame.body).into_owned()
}

async fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
}

async fn reply(stream: &mut TcpStream) -> Frame {
    tokio::time::timeout(WAIT, read_frame(stream))
        .await
        .expect("no reply in time")
        .expect("a readable reply")
        .expect("a reply, not a closed connection")
}

async fn exchange(stream: &mut TcpStream, frame: &Frame) -> Frame {
    send(stream, &wire(frame)).await;
    reply(stream).await
}

/// A request answered with `status`, on a connection that stays usable.
async fn refused(stream: &mut TcpStream, frame: &Frame, status: Status) -> String {
    let answer = exchange(stream, frame).await;
    assert_eq!(answer.kind, Kind::Reply);
    assert_eq!(answer.request_id, frame.request_id);
    assert_eq!(
        Status::from_u16(answer.status),
        status,
        "{:?}: {}",
        frame.kind,
        text(&answer)
    );
    text(&answer)
}

/// Reads until the server closes the connection (within `limit`); returns what it said
/// on the way out. A reset counts as closed.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Vec<Frame> {
    let mut said = Vec::new();
    let mut rest = Vec::new();
    let outcome = tokio::time::timeout(limit, async {
        loop {
            let mut buf = [0u8; 4096];
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => rest.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(outcome.is_ok(), "the server kept the connection open");
    let mut at = 0;
    while let Ok(Some((frame, used))) = warren_replica::protocol::decode(&rest[at..]) {
        said.push(frame);
        at += used;
    }
    assert_eq!(
        at,
        rest.len(),
        "the server's last bytes are not whole frames"
    );
    said
}

async fn closed(stream: &mut TcpStream) -> Vec<Frame> {
    closed_within(stream, WAIT).await
}

/// Closed after saying only errors (if anything).
async fn closed_with_errors(stream: &mut TcpStream) -> Vec<Frame> {
    let said = closed(stream).await;
    for frame in &said {
        assert_eq!(frame.kind, Kind::Reply);
        assert_ne!(frame.status, Status::Ok as u16, "{}", text(frame));
    }
    said
}

// ---------------------------------------------------------------------------------------
// (a) Unauthenticated peers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_peers_are_refused_and_create_nothing() {
    let server = start().await;
    let mut bystander = Bystander::new(&server).await;
    let before = server.names();
    let open = OpenRequest {
        volume: "intruder".into(),
        size: SIZE,
        create: true,
    };

    // Requests without any handshake, each a well-formed frame.
    let requests = [
        Frame::json(Kind::Open, 1, &open).unwrap(),
        read_req(2, 1, 0, 4096),
        at(Kind::Write, 3, 1, 0, vec![0xee; 4096]),
        Frame::json(
            Kind::Commit,
            4,
            &GenerationChange {
                expect: 0,
                gen: 1,
                members: vec![REPLICA.into()],
            },
        )
        .unwrap(),
        Frame::request(Kind::GetState, 5, Bytes::new()),
        Frame::request(Kind::Reply, 6, Bytes::new()),
        Frame::request(
            Kind::AuthOk,
            7,
            Bytes::from_static(b"{\"nonce\":\"\",\"mac\":\"\"}"),
        ),
    ];
    for request in &requests {
        let mut stream = server.raw().await;
        send(&mut stream, &wire(request)).await;
        // Whatever follows is ignored too.
        let _ = stream
            .write_all(&wire(&Frame::json(Kind::Open, 9, &open).unwrap()))
            .await;
        closed_with_errors(&mut stream).await;
        bystander
            .still_served(&format!("{:?} before auth", request.kind))
            .await;
    }

    // A wrong token: the server says so and closes; what follows is never served.
    for wrong in [
        "wrong-token-0123456789abcdef",
        "WIRE-TEST-TOKEN-0123456789ABCDEF",
    ] {
        let mut stream = server.raw().await;
        let result = client_handshake(&mut stream, &Token::new(wrong).unwrap()).await;
        assert!(
            matches!(result, Err(Error::Unauthenticated(_))),
            "{result:?}"
        );
        let _ = stream
            .write_all(&wire(&Frame::json(Kind::Open, 1, &open).unwrap()))
            .await;
        closed_with_errors(&mut stream).await;
        bystander.still_served("a wrong token").await;
    }

    // Handshake frames that are malformed in every way we can think of.
    let hello = |body: &str| Frame::request(Kind::Hello, 0, Bytes::from(body.to_string()));
    let bad_hellos = [
        hello(""),
        hello("not json"),
        hello("{\"version\":2,\"nonce\":\"00\"}"),
        hello("{\"version\":1,\"nonce\":\"0\"}"),
        hello("{\"version\":1,\"nonce\":\"zz\"}"),
        // Two-byte characters: byte pairs straddle them (this used to panic the server).
        hello("{\"version\":1,\"nonce\":\"aéb\"}"),
        hello("{\"version\":1,\"nonce\":\"éééé\"}"),
        hello(&format!(
            "{{\"version\":1,\"nonce\":\"{}\"}}",
            "ab".repeat(65)
        )),
        hello(&format!(
            "{{\"version\":1,\"nonce\":\"{}\"}}",
            "é".repeat(4000)
        )),
    ];
    for bad in &bad_hellos {
        let mut stream = server.raw().await;
        send(&mut stream, &wire(bad)).await;
        closed_with_errors(&mut stream).await;
        bystander
            .still_served(&format!("hello {:?}", text(bad)))
            .await;
    }

    // A good Hello, then a bad proof.
    let good_hello = hello(&format!(
        "{{\"version\":1,\"nonce\":\"{}\"}}",
        "5a".repeat(32)
    ));
    let bad_proofs = [
        "{\"nonce\":\"\",\"mac\":\"\"}",
        "{\"nonce\":\"\",\"mac\":\"00\"}",
        "{\"nonce\":\"\",\"mac\":\"é\"}",
        "{\"nonce\":\"\",\"mac\":\"ééé\"}",
        "garbage",
    ];
    for proof in bad_proofs {
        let mut stream = server.raw().await;
        let challenge = exchange(&mut stream, &good_hello).await;
        assert_eq!(challenge.kind, Kind::Challenge);
        send(
            &mut stream,
            &wire(&Frame::request(Kind::Auth, 0, Bytes::from(proof))),
        )
        .await;
        let said = closed_with_errors(&mut stream).await;
        assert!(said.iter().all(|f| f.kind != Kind::AuthOk));
        bystander.still_served(&format!("proof {proof:?}")).await;
    }

    // Bytes that are not frames at all, and frames the protocol refuses.
    let mut oversized = wire(&good_hello);
    oversized[32..36].copy_from_slice(&(MAX_BODY as u32 + 1).to_le_bytes());
    reseal(&mut oversized[..HEADER_LEN]);
    let mut bad_crc = wire(&good_hello);
    bad_crc[HEADER_LEN + 3] ^= 0x20;
    let mut bad_magic = wire(&good_hello);
    bad_magic[0] ^= 1;
    reseal(&mut bad_magic);
    let mut bad_kind = wire(&good_hello);
    bad_kind[4] = 99;
    reseal(&mut bad_kind);
    let junk: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (what, bytes) in [
        ("oversized header", oversized[..HEADER_LEN].to_vec()),
        ("bad crc", bad_crc),
        ("bad magic", bad_magic),
        ("unknown kind", bad_kind),
        ("junk", junk),
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(4)),
    ] {
        let mut stream = server.raw().await;
        let _ = stream.write_all(&bytes).await;
        closed_with_errors(&mut stream).await;
        bystander.still_served(what).await;
    }

    // Connections that end mid-handshake.
    for cut in [1, 20, HEADER_LEN, HEADER_LEN + 5] {
        let mut stream = server.raw().await;
        send(&mut stream, &wire(&good_hello)[..cut]).await;
        stream.shutdown().await.unwrap();
        closed_with_errors(&mut stream).await;
    }

    assert_eq!(
        server.names(),
        before,
        "an unauthenticated peer created files"
    );
    bystander.still_served("every unauthenticated case").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_cut_off() {
    let server = start().await;
    let mut bystander = Bystander::new(&server).await;
    let before = server.names();
    let hello = Frame::request(
        Kind::Hello,
        0,
        Bytes::from(format!(
            "{{\"version\":1,\"nonce\":\"{}\"}}",
            "5a".repeat(32)
        )),
    );
    // Silent from the start; after half a header; after a body cut short; after the Hello.
    let mut silent = server.raw().await;
    let mut half_header = server.raw().await;
    send(&mut half_header, &wire(&hello)[..HEADER_LEN / 2]).await;
    let mut half_body = server.raw().await;
    send(&mut half_body, &wire(&hello)[..HEADER_LEN + 4]).await;
    let mut after_hello = server.raw().await;
    let challenge = exchange(&mut after_hello, &hello).await;
    assert_eq!(challenge.kind, Kind::Challenge);

    // Meanwhile the replica serves others.
    for _ in 0..5 {
        bystander.still_served("stalled handshakes").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The handshake deadline is 10 s.
    let limit = Duration::from_secs(15);
    let (a, b, c, d) = tokio::join!(
        closed_within(&mut silent, limit),
        closed_within(&mut half_header, limit),
        closed_within(&mut half_body, limit),
        closed_within(&mut after_hello, limit),
    );
    for said in [a, b, c, d] {
        assert!(said.iter().all(|f| f.status != Status::Ok as u16));
    }
    assert_eq!(server.names(), before);
    bystander.still_served("stalled handshakes were cut").await;
}

// ---------------------------------------------------------------------------------------
// (b) Authenticated peers with a volume open.

/// What a connection must see before it may close for one bad frame.
async fn fatal(
    server: &Server,
    bystander: &mut Bystander,
    what: &str,
    bytes: &[u8],
    shutdown: bool,
) {
    let before = server.snapshot("victim");
    let mut stream = server.opened("victim").await;
    send(&mut stream, bytes).await;
    if shutdown {
        stream.shutdown().await.unwrap();
    }
    let said = closed_with_errors(&mut stream).await;
    assert!(said.len() <= 1, "{what}: {} replies", said.len());
    assert_eq!(
        server.snapshot("victim"),
        before,
        "{what} changed the replica"
    );
    bystander.still_served(what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_frames_close_the_connection_and_change_nothing() {
    let server = start().await;
    server.prepare("victim").await;
    let mut bystander = Bystander::new(&server).await;
    let write = wire(&at(Kind::Write, 10, 1, 8192, vec![0xee; 4096]));

    // Truncated frames: the header cut, the body cut, then the peer goes away.
    for cut in [1, 17, HEADER_LEN - 1] {
        fatal(
            &server,
            &mut bystander,
            &format!("header cut at {cut}"),
            &write[..cut],
            true,
        )
        .await;
    }
    for cut in [HEADER_LEN, HEADER_LEN + 1, write.len() - 1] {
        fatal(
            &server,
            &mut bystander,
            &format!("body cut at {cut}"),
            &write[..cut],
            true,
        )
        .await;
    }

    // A body length beyond MAX_BODY, correctly checksummed: refused from the header alone.
    // No body follows, and the connection is still open on our side: a server that
    // allocated and waited for the body would never answer.
    for len in [MAX_BODY as u32 + 1, 64 << 20, u32::MAX] {
        let mut header = write[..HEADER_LEN].to_vec();
        header[32..36].copy_from_slice(&len.to_le_bytes());
        reseal(&mut header);
        let before = server.snapshot("victim");
        let mut stream = server.opened("victim").await;
        send(&mut stream, &header).await;
        let said = closed_with_errors(&mut stream).await;
        assert_eq!(said.len(), 1, "body_len {len}: no reason given");
        assert_eq!(Status::from_u16(said[0].status), Status::Invalid);
        assert!(text(&said[0]).contains("exceeds"), "{}", text(&said[0]));
        assert_eq!(server.snapshot("victim"), before);
        bystander.still_served(&format!("body_len {len}")).await;
    }

    // Corrupted bytes: every field of the header and the body, one byte at a time, with
    // the CRC left as it was. Offsets and generations among them would have been valid.
    for byte in [
        0,
        4,
        5,
        6,
        8,
        16,
        24,
        28,
        36,
        39,
        HEADER_LEN,
        write.len() - 1,
    ] {
        let mut bad = write.clone();
        bad[byte] ^= 0x04;
        let what = format!("corrupted byte {byte}");
        if (32..36).contains(&byte) {
            continue; // a length change is a truncation, covered above
        }
        fatal(&server, &mut bystander, &what, &bad, false).await;
    }
    // A body longer than its header says: the rest is a frame with a bad magic.
    let mut long = write.clone();
    long[32..36].copy_from_slice(&4000u32.to_le_bytes());
    long.truncate(HEADER_LEN + 4000);
    reseal(&mut long);
    long.extend_from_slice(&[0xee; 96]);
    long.extend_from_slice(&[0u8; HEADER_LEN]);
    let before = server.snapshot("victim");
    {
        let mut stream = server.opened("victim").await;
        send(&mut stream, &long).await;
        let said = closed(&mut stream).await;
        // The well-formed 4000-byte write may be served; the junk after it is not.
        assert!(said.iter().any(|f| f.status == Status::Invalid as u16));
        let mut expected = before.0.clone();
        expected[8192..8192 + 4000].fill(0xee);
        let now = server.snapshot("victim");
        assert!(now.0 == before.0 || now.0 == expected, "junk was written");
        assert_eq!(now.1, before.1);
        // Put the victim back as it was for the cases below.
        let fixer = server.client().await;
        fixer.open("victim", SIZE, false).await.unwrap();
        fixer
            .write(
                1,
                8192,
                Bytes::copy_from_slice(&before.0[8192..8192 + 4096]),
                true,
            )
            .await
            .unwrap();
        assert_eq!(server.snapshot("victim"), before);
    }
    bystander.still_served("a body longer than declared").await;

    // Wrong magic and unknown kinds, correctly checksummed.
    for magic in [0u32, MAGIC.swap_bytes(), MAGIC ^ 1, u32::MAX] {
        let mut bad = write.clone();
        bad[0..4].copy_from_slice(&magic.to_le_bytes());
        reseal(&mut bad);
        fatal(
            &server,
            &mut bystander,
            &format!("magic {magic:#x}"),
            &bad,
            false,
        )
        .await;
    }
    for kind in [0u8, 5, 9, 19, 24, 30, 99, 101, 255] {
        let mut bad = write.clone();
        bad[4] = kind;
        reseal(&mut bad);
        fatal(
            &server,
            &mut bystander,
            &format!("kind {kind}"),
            &bad,
            false,
        )
        .await;
    }
    // A good frame after a bad one on the same connection is never served.
    let mut bad_then_good = write.clone();
    bad_then_good[HEADER_LEN] ^= 1;
    bad_then_good.extend_from_slice(&write);
    fatal(
        &server,
        &mut bystander,
        "bad then good",
        &bad_then_good,
        false,
    )
    .await;

    assert_no_server_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_answered_with_errors_and_change_nothing() {
    let server = start().await;
    server.prepare("victim").await;
    let mut bystander = Bystander::new(&server).await;
    let before = server.snapshot("victim");
    let mut stream = server.opened("victim").await;
    let mut id = 100;
    let mut next = || {
        id += 1;
        id
    };

    // Beyond the volume's end, or wrapping around u64.
    for (offset, len) in [
        (SIZE, 1u32),
        (SIZE - 1, 2),
        (SIZE - 4096, 8192),
        (u64::MAX, 1),
        (u64::MAX - 10, 4096),
    ] {
        refused(
            &mut stream,
            &read_req(next(), 1, offset, len),
            Status::OutOfRange,
        )
        .await;
        let write = at(Kind::Write, next(), 1, offset, vec![0xee; len as usize]);
        refused(&mut stream, &write, Status::OutOfRange).await;
        let discard = at(
            Kind::Discard,
            next(),
            1,
            offset,
            (len as u64).to_le_bytes().to_vec(),
        );
        refused(&mut stream, &discard, Status::OutOfRange).await;
    }
    let discard = at(
        Kind::Discard,
        next(),
        1,
        4096,
        u64::MAX.to_le_bytes().to_vec(),
    );
    refused(&mut stream, &discard, Status::OutOfRange).await;
    bystander.still_served("out-of-range requests").await;

    // Larger than MAX_IO, though a legal frame: refused, the connection stays.
    let big = at(Kind::Write, next(), 1, 0, vec![0xee; MAX_IO + 4096]);
    let why = refused(&mut stream, &big, Status::Invalid).await;
    assert!(why.contains("exceeds"), "{why}");
    let biggest = at(Kind::Write, next(), 1, 0, vec![0xee; MAX_BODY]);
    refused(&mut stream, &biggest, Status::Invalid).await;
    for len in [MAX_IO as u32 + 1, u32::MAX] {
        refused(&mut stream, &read_req(next(), 1, 0, len), Status::Invalid).await;
    }
    bystander.still_served("oversized I/O").await;

    // Bodies of the wrong shape.
    for body in [&b""[..], b"123", b"12345"] {
        refused(
            &mut stream,
            &at(Kind::Read, next(), 1, 0, body.to_vec()),
            Status::Invalid,
        )
        .await;
    }
    for body in [&b""[..], b"1234567", b"123456789"] {
        refused(
            &mut stream,
            &at(Kind::Discard, next(), 1, 0, body.to_vec()),
            Status::Invalid,
        )
        .await;
    }
    for body in [
        &b""[..],
        b"{}",
        b"[1,2]",
        b"{\"expect\":1,\"gen\":-1,\"members\":[]}",
    ] {
        let commit = at(Kind::Commit, next(), 1, 0, body.to_vec());
        refused(&mut stream, &commit, Status::Invalid).await;
        let rebuild = at(Kind::BeginRebuild, next(), 1, 0, body.to_vec());
        refused(&mut stream, &rebuild, Status::Invalid).await;
    }
    // Frames that are not requests.
    for kind in [
        Kind::Hello,
        Kind::Challenge,
        Kind::Auth,
        Kind::AuthOk,
        Kind::Reply,
    ] {
        refused(
            &mut stream,
            &at(kind, next(), 1, 0, vec![1, 2, 3]),
            Status::Invalid,
        )
        .await;
    }
    bystander.still_served("malformed bodies").await;

    // The wrong generation, for every request that carries one.
    for gen in [0, 2, 1 << 32, u64::MAX] {
        refused(&mut stream, &read_req(next(), gen, 0, 4096), Status::Fenced).await;
        let write = at(Kind::Write, next(), gen, 0, vec![0xee; 4096]);
        refused(&mut stream, &write, Status::Fenced).await;
        let discard = at(
            Kind::Discard,
            next(),
            gen,
            0,
            4096u64.to_le_bytes().to_vec(),
        );
        refused(&mut stream, &discard, Status::Fenced).await;
        for kind in [Kind::Flush, Kind::Checkpoint, Kind::Close] {
            refused(
                &mut stream,
                &at(kind, next(), gen, 0, Vec::new()),
                Status::Fenced,
            )
            .await;
        }
    }
    // Generation changes that do not compare-and-set.
    for (expect, gen) in [(0, 2), (2, 3), (1, 1), (1, 0), (u64::MAX, 5)] {
        let change = GenerationChange {
            expect,
            gen,
            members: vec!["someone-else".into()],
        };
        refused(
            &mut stream,
            &Frame::json(Kind::Commit, next(), &change).unwrap(),
            Status::Fenced,
        )
        .await;
    }
    let rebuild = GenerationChange {
        expect: 0,
        gen: 9,
        members: vec![],
    };
    refused(
        &mut stream,
        &Frame::json(Kind::BeginRebuild, next(), &rebuild).unwrap(),
        Status::Fenced,
    )
    .await;
    bystander.still_served("wrong generations").await;

    // Re-opening with a different size, a bad name, or a size no replica may allocate.
    let files = server.names();
    for (volume, size, create) in [
        ("victim", SIZE * 2, true),
        ("victim", 0, false),
        ("../victim", SIZE, true),
        ("a/b", SIZE, true),
        (".hidden", SIZE, true),
        ("", SIZE, true),
        ("new-one", 1000, true),
        ("new-one", SIZE, false),
        ("huge", 1 << 62, true),
        ("huge", u64::MAX - 4095, true),
        ("huge", (64 << 40) + 4096, true),
    ] {
        let open = OpenRequest {
            volume: volume.into(),
            size,
            create,
        };
        let answer = exchange(
            &mut stream,
            &Frame::json(Kind::Open, next(), &open).unwrap(),
        )
        .await;
        assert_ne!(answer.status, Status::Ok as u16, "open {volume} {size}");
    }
    refused(
        &mut stream,
        &at(Kind::Open, next(), 0, 0, b"not json".to_vec()),
        Status::Invalid,
    )
    .await;
    assert_eq!(server.names(), files, "a refused Open created files");

    // The connection still works, and nothing changed.
    let good = exchange(&mut stream, &read_req(next(), 1, 4096, 16)).await;
    assert_eq!(good.status, Status::Ok as u16, "{}", text(&good));
    assert_eq!(&good.body[..], &before.0[4096..4096 + 16]);
    assert_eq!(server.snapshot("victim"), before);
    bystander.still_served("every bad request").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_before_open_are_refused() {
    let server = start().await;
    server.prepare("victim").await;
    let before = server.snapshot("victim");
    let files = server.names();
    let mut stream = server.authenticated().await;
    for frame in [
        read_req(1, 1, 0, 4096),
        at(Kind::Write, 2, 1, 0, vec![0xee; 4096]),
        at(Kind::Flush, 3, 1, 0, Vec::new()),
        Frame::request(Kind::GetState, 4, Bytes::new()),
        Frame::request(Kind::GetBitmap, 5, Bytes::new()),
    ] {
        refused(&mut stream, &frame, Status::Invalid).await;
    }
    assert_eq!(server.snapshot("victim"), before);
    assert_eq!(server.names(), files);
    assert_no_server_panic();
}

// ---------------------------------------------------------------------------------------
// Takeover.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_takes_the_volume_over_and_fences_the_first() {
    let server = start().await;
    let first = server.client().await;
    first.open("shared", SIZE, true).await.unwrap();
    first.commit(0, 1, &[REPLICA.to_string()]).await.unwrap();
    first
        .write(1, 0, Bytes::from(vec![1u8; 4096]), true)
        .await
        .unwrap();

    let second = server.client().await;
    second.open("shared", SIZE, false).await.unwrap();
    let before = server.snapshot("shared");

    // Every request of the first connection is fenced, at any generation.
    let fenced = |r: Result<(), Error>, what: &str| {
        assert!(matches!(r, Err(Error::Fenced(_))), "{what}: {r:?}");
    };
    fenced(
        first.write(1, 0, Bytes::from(vec![2u8; 4096]), true).await,
        "write",
    );
    fenced(first.read(1, 0, 4096).await.map(drop), "read");
    fenced(first.flush(1).await, "flush");
    fenced(first.discard(1, 0, 4096).await, "discard");
    fenced(first.checkpoint(1).await, "checkpoint");
    fenced(first.close(1).await, "close");
    fenced(first.state().await.map(drop), "state");
    fenced(first.bitmap().await.map(drop), "bitmap");
    fenced(
        first.commit(1, 2, &[REPLICA.to_string()]).await.map(drop),
        "commit",
    );
    assert!(
        !first.is_failed(),
        "fencing is an answer, not a broken connection"
    );
    assert_eq!(server.snapshot("shared"), before);

    // The new owner is served.
    assert_eq!(
        &second.read(1, 0, 4096).await.unwrap()[..],
        &[1u8; 4096][..]
    );
    second
        .write(1, 0, Bytes::from(vec![3u8; 4096]), true)
        .await
        .unwrap();
    second.commit(1, 2, &[REPLICA.to_string()]).await.unwrap();
    assert_eq!(
        &second.read(2, 0, 4096).await.unwrap()[..],
        &[3u8; 4096][..]
    );
    // The first connection stays fenced, even at the new generation.
    fenced(
        first.write(2, 0, Bytes::from(vec![4u8; 4096]), true).await,
        "write at the new generation",
    );
    assert_eq!(
        &second.read(2, 0, 4096).await.unwrap()[..],
        &[3u8; 4096][..]
    );
    assert_no_server_panic();
}
