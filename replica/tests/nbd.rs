//! The NBD frontend against real NBD clients: qemu-io / qemu-img (package `qemu-utils`),
//! nbdinfo / nbdcopy (`libnbd-bin`) and nbdsh (`python3-libnbd`), over a FileTarget.
//!
//! A test whose client is not installed says so on stderr and passes, unless
//! WARREN_REQUIRE_NBD_TOOLS=1, when it fails instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_replica::frontend::nbd::{serve_tcp, serve_unix, MAX_PAYLOAD};
use warren_replica::{BlockTarget, FileTarget};

const MIB: u64 = 1 << 20;

/// True if `tool` runs; otherwise explains the skip (or fails when tools are required).
fn have(tool: &str) -> bool {
    let runs = nbd_tool(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !runs {
        let why = format!(
            "`{tool}` is not installed or does not run \
             (apt-get install -y libnbd-bin qemu-utils python3-libnbd)"
        );
        warren_test_support::skip("WARREN_REQUIRE_NBD_TOOLS", &why);
    }
    runs
}

fn nbd_tool(tool: &str) -> Command {
    let mut cmd = Command::new(tool);
    if tool == "nbdsh" {
        // nbdsh runs `python3 -m nbd`: the distribution's python3, which has the bindings,
        // must come before any other python3 (pyenv, venvs) on PATH.
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("/usr/bin:/bin:{path}"));
    }
    cmd
}

/// Runs a blocking client command off the runtime; returns its output.
async fn run(mut cmd: Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    eprintln!(
        "{shown}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn unix_uri(socket: &Path) -> String {
    format!("nbd+unix:///?socket={}", socket.display())
}

/// Starts `serve_unix` on a socket in `dir` and waits until it accepts connections.
async fn start_unix(dir: &Path, target: Arc<dyn BlockTarget>) -> PathBuf {
    let socket = dir.join("nbd.sock");
    let path = socket.clone();
    tokio::spawn(async move { serve_unix(&path, target).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "NBD socket never came up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    socket
}

async fn start_tcp(target: Arc<dyn BlockTarget>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve_tcp(listener, target));
    port
}

fn file_target(dir: &Path, size: u64) -> (PathBuf, Arc<dyn BlockTarget>) {
    let path = dir.join("disk.img");
    let target = FileTarget::open(&path, size).unwrap();
    (path, Arc::new(target))
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn qemu_io(uri: &str, commands: &[&str]) -> Command {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw", uri]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    cmd
}

/// qemu-io reports failed commands on stdout/stderr but may still exit 0.
fn qemu_io_ok(out: &Output) -> bool {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success() && !text.contains("failed") && !text.contains("error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn qemu_io_reads_writes_and_flushes_over_unix_socket() {
    if !have("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (image, target) = file_target(dir.path(), 64 * MIB);
    let socket = start_unix(dir.path(), target).await;
    let uri = unix_uri(&socket);

    let out = run(qemu_io(
        &uri,
        &[
            "write -P 0xab 0 1M",
            "read -P 0xab 0 1M",
            "flush",
            "write -P 0xcd -f 3M 512k",
            "aio_write -P 0x11 8M 1M",
            "aio_write -P 0x22 9M 1M",
            "aio_write -P 0x33 10M 1M",
            "aio_flush",
            "read -P 0x22 9M 1M",
            "write -P 0x44 20M 2M",
            "write -z 20M 1M",
            "read -P 0 20M 1M",
            "read -P 0x44 21M 1M",
            "discard 40M 1M",
            "read -P 0x11 8M 1M",
            "write -P 0x55 67104768 4k",
            "read -P 0x55 67104768 4k",
        ],
    ))
    .await;
    assert!(qemu_io_ok(&out), "qemu-io failed");

    // The bytes reached the backing file.
    let on_disk = std::fs::read(&image).unwrap();
    assert_eq!(on_disk.len() as u64, 64 * MIB);
    assert!(on_disk[..MIB as usize].iter().all(|&b| b == 0xab));
    let at = |m: u64| (m * MIB) as usize;
    assert!(on_disk[at(3)..at(3) + 512 * 1024]
        .iter()
        .all(|&b| b == 0xcd));
    assert!(on_disk[at(10)..at(11)].iter().all(|&b| b == 0x33));
    assert!(on_disk[at(20)..at(21)].iter().all(|&b| b == 0));
    assert!(on_disk[at(21)..at(22)].iter().all(|&b| b == 0x44));
    assert!(on_disk[at(64) - 4096..].iter().all(|&b| b == 0x55));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nbdinfo_sees_size_and_export_list() {
    if !have("nbdinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, target) = file_target(dir.path(), 48 * MIB + 512);
    let socket = start_unix(dir.path(), target).await;
    let uri = unix_uri(&socket);

    let mut size = Command::new("nbdinfo");
    size.args(["--size", &uri]);
    let out = run(size).await;
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (48 * MIB + 512).to_string()
    );

    // The full report negotiates with NBD_OPT_GO and prints the advertised capabilities.
    let mut info = Command::new("nbdinfo");
    info.arg(&uri);
    let out = run(info).await;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "can_flush: true",
        "can_fua: true",
        "can_trim: true",
        "can_zero: true",
        "can_multi_conn: true",
        "is_read_only: false",
        "block_size_preferred: 4096",
    ] {
        assert!(text.contains(want), "nbdinfo output lacks {want:?}");
    }

    // --list uses NBD_OPT_LIST, then NBD_OPT_INFO per export.
    let mut list = Command::new("nbdinfo");
    list.args(["--list", &uri]);
    let out = run(list).await;
    assert!(out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nbdcopy_round_trips_16_mib_over_tcp() {
    if !have("nbdcopy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (image, target) = file_target(dir.path(), 16 * MIB);
    let port = start_tcp(target).await;
    let uri = format!("nbd://127.0.0.1:{port}");

    let data = noise(16 * MIB as usize, 0x9e37_79b9_7f4a_7c15);
    let source = dir.path().join("source.bin");
    std::fs::write(&source, &data).unwrap();
    let copy_back = dir.path().join("copy.bin");
    std::fs::write(&copy_back, b"").unwrap();

    // Several connections (the export advertises multi-conn), many requests in flight each.
    let mut upload = Command::new("nbdcopy");
    upload.args(["--connections=4", "--requests=16", "--flush"]);
    upload.arg(&source).arg(&uri);
    assert!(run(upload).await.status.success());
    assert!(
        std::fs::read(&image).unwrap() == data,
        "backing file differs from the upload"
    );

    let mut download = Command::new("nbdcopy");
    download.args(["--connections=4", "--requests=16"]);
    download.arg(&uri).arg(&copy_back);
    assert!(run(download).await.status.success());
    assert!(
        std::fs::read(&copy_back).unwrap() == data,
        "download differs from the upload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_range_read_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (_, target) = file_target(dir.path(), 4 * MIB);
    let socket = start_unix(dir.path(), target).await;
    let uri = unix_uri(&socket);

    if have("nbdsh") {
        // libnbd checks bounds itself; with that check off the request reaches the server,
        // which must refuse it with EINVAL and keep the connection usable.
        let script = "\
import errno
h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_BOUNDS)
h.connect_uri(uri)
try:
    h.pread(4096, h.get_size() - 1024)
    raise SystemExit('out-of-range read succeeded')
except nbd.Error as e:
    assert e.errnum == errno.EINVAL, e
try:
    h.pwrite(b'x' * 4096, h.get_size() - 1024)
    raise SystemExit('out-of-range write succeeded')
except nbd.Error as e:
    assert e.errnum == errno.ENOSPC, e
h.pwrite(b'y' * 4096, 0)
assert h.pread(4096, 0) == b'y' * 4096
h.shutdown()
print('bounds ok')
";
        let mut cmd = nbd_tool("nbdsh");
        cmd.args(["-c", &format!("uri = {uri:?}"), "-c", script]);
        let out = run(cmd).await;
        assert!(out.status.success(), "nbdsh bounds script failed");
        assert!(String::from_utf8_lossy(&out.stdout).contains("bounds ok"));
    }

    if have("qemu-io") {
        // qemu checks the range against the size the server advertised.
        let out = run(qemu_io(&uri, &["read 4M 4k"])).await;
        assert!(!qemu_io_ok(&out), "qemu-io read past the end succeeded");
        let out = run(qemu_io(&uri, &["read 4190208 4k"])).await;
        assert!(qemu_io_ok(&out), "qemu-io read of the last block failed");
    }
}

/// A hand-rolled client connection, for sending what real clients never would.
struct Raw(tokio::net::UnixStream);

impl Raw {
    /// Connects and enters transmission with NBD_OPT_EXPORT_NAME.
    async fn connect(socket: &Path) -> Raw {
        let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
        s.write_u32(0b11).await.unwrap(); // FIXED_NEWSTYLE | NO_ZEROES
        s.write_all(b"IHAVEOPT").await.unwrap();
        s.write_u32(1).await.unwrap(); // NBD_OPT_EXPORT_NAME
        s.write_u32(0).await.unwrap();
        s.read_u64().await.unwrap(); // size
        s.read_u16().await.unwrap(); // flags
        Raw(s)
    }

    async fn request(&mut self, kind: u16, cookie: u64, offset: u64, len: u32) {
        let mut m = Vec::new();
        m.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        self.0.write_all(&m).await.unwrap();
    }

    /// Reads a simple reply; returns (error, cookie).
    async fn reply(&mut self) -> (u32, u64) {
        assert_eq!(self.0.read_u32().await.unwrap(), 0x6744_6698);
        let error = self.0.read_u32().await.unwrap();
        (error, self.0.read_u64().await.unwrap())
    }

    async fn read_ok(&mut self, offset: u64, len: u32) -> Vec<u8> {
        self.request(0, 7, offset, len).await;
        assert_eq!(self.reply().await, (0, 7));
        let mut data = vec![0; len as usize];
        self.0.read_exact(&mut data).await.unwrap();
        data
    }

    /// True once the server has closed the connection (within a few seconds).
    async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.0.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_do_not_disturb_other_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (_, target) = file_target(dir.path(), 64 * MIB);
    let socket = start_unix(dir.path(), target).await;

    // A well-behaved connection held open throughout.
    let mut steady = Raw::connect(&socket).await;
    assert_eq!(steady.read_ok(0, 4096).await, vec![0; 4096]);

    // Garbage instead of a request: that connection is closed.
    let mut bad = Raw::connect(&socket).await;
    bad.0.write_all(&[0xa5; 28]).await.unwrap();
    assert!(
        bad.closed().await,
        "server kept a connection that sent a bad magic"
    );

    // A write announcing more than 32 MiB of payload: closed without reading it.
    let mut huge = Raw::connect(&socket).await;
    huge.request(1, 1, 0, MAX_PAYLOAD + 1).await;
    assert!(
        huge.closed().await,
        "server kept a connection with an oversized write"
    );

    // An oversized read is refused but the connection lives on.
    let mut big = Raw::connect(&socket).await;
    big.request(0, 2, 0, u32::MAX).await;
    assert_eq!(big.reply().await, (22, 2));
    assert_eq!(big.read_ok(MIB, 512).await, vec![0; 512]);

    // A connection dropped half-way through a request.
    let mut torn = Raw::connect(&socket).await;
    torn.0
        .write_all(&0x2560_9513u32.to_be_bytes())
        .await
        .unwrap();
    drop(torn);

    // A client that hangs up in the middle of the handshake.
    let mut early = tokio::net::UnixStream::connect(&socket).await.unwrap();
    early.write_all(b"\0\0").await.unwrap();
    drop(early);

    // Everyone else is unaffected.
    assert_eq!(steady.read_ok(0, 4096).await, vec![0; 4096]);
    if have("qemu-io") {
        let out = run(qemu_io(
            &unix_uri(&socket),
            &["write -P 0x5a 0 64k", "read -P 0x5a 0 64k"],
        ))
        .await;
        assert!(
            qemu_io_ok(&out),
            "a real client failed after the bad connections"
        );
        assert_eq!(steady.read_ok(0, 4).await, vec![0x5a; 4]);
    }
}
