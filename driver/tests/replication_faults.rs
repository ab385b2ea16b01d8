//! Replicated volumes under faults, with real processes: each replica service runs as
//! `warren replica` in its own network namespace (a "node" with its own veth link), the
//! engine runs as `warren volume` serving NBD, and the test writes through a real NBD
//! connection, remembering every write the engine acknowledged. Replicas are killed with
//! SIGKILL, links are cut, the engine is killed mid-write; afterwards every acknowledged
//! write must read back, and all replicas must be byte-identical once rebuilt.
//!
//! Needs root and `ip netns` (iproute2); without them the tests say why and skip, unless
//! WARREN_REQUIRE_NETNS=1 (CI sets it), which makes that a failure.

#[path = "support/nbd_client.rs"]
mod nbd_client;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nbd_client::NbdClient;

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// One "node": a network namespace linked to the host by a veth pair.
struct Node {
    name: String,
    ns: String,
    host_if: String,
    address: String,
    root: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

struct Cluster {
    dir: tempfile::TempDir,
    token: PathBuf,
    nodes: Vec<Node>,
    engine: Option<Child>,
    volume_args: Vec<String>,
    /// The engine's process keeps the first node's replica itself (`--local-root`), as a
    /// node process hosting both does: no `warren replica` runs for it.
    hosted: bool,
}

fn netns_available(tag: &str) -> bool {
    let probe = format!("wrnprobe{tag}{}", std::process::id() % 100000);
    let ok = run("ip", &["netns", "add", &probe]).is_ok();
    let _ = run("ip", &["netns", "del", &probe]);
    if !ok {
        let why = "cannot create network namespaces (needs root and iproute2)";
        warren_test_support::skip("WARREN_REQUIRE_NETNS", why);
    }
    ok
}

impl Cluster {
    /// `subnet`: a test-unique number, so tests running at once do not collide.
    fn start(subnet: u8, names: &[&str]) -> Cluster {
        Cluster::start_with(subnet, names, false)
    }

    /// Like `start`, but the engine's process keeps the first node's replica: no
    /// `warren replica` runs for it, and it is reached on loopback.
    fn start_hosted(subnet: u8, names: &[&str]) -> Cluster {
        Cluster::start_with(subnet, names, true)
    }

    fn start_with(subnet: u8, names: &[&str], hosted: bool) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("warren-repl-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "fault-test-token-0123456789\n").unwrap();
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let tag = format!("{}{subnet}{name}", std::process::id() % 10000);
            let ns = format!("wrn{tag}");
            let host_if = format!("wrh{tag}");
            let host_ip = format!("10.{subnet}.{i}.1");
            let node_ip = format!("10.{subnet}.{i}.2");
            let _ = run("ip", &["netns", "del", &ns]);
            let _ = run("ip", &["link", "del", &host_if]);
            run("ip", &["netns", "add", &ns]).unwrap();
            run(
                "ip",
                &[
                    "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )
            .unwrap();
            run(
                "ip",
                &["addr", "add", &format!("{host_ip}/24"), "dev", &host_if],
            )
            .unwrap();
            run("ip", &["link", "set", &host_if, "up"]).unwrap();
            let in_ns = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &ns, "ip"];
                all.extend_from_slice(args);
                run("ip", &all).unwrap();
            };
            in_ns(&["addr", "add", &format!("{node_ip}/24"), "dev", "eth0"]);
            in_ns(&["link", "set", "eth0", "up"]);
            in_ns(&["link", "set", "lo", "up"]);
            let root = dir.path().join(name);
            let log = dir.path().join(format!("{name}.log"));
            nodes.push(Node {
                name: name.to_string(),
                ns,
                host_if,
                address: format!("{node_ip}:7460"),
                root,
                log,
                child: None,
            });
        }
        let mut cluster = Cluster {
            dir,
            token,
            nodes,
            engine: None,
            volume_args: Vec::new(),
            hosted,
        };
        if hosted {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            cluster.nodes[0].address = format!("127.0.0.1:{port}");
        }
        for i in usize::from(hosted)..cluster.nodes.len() {
            cluster.start_replica(i);
        }
        cluster
    }

    fn start_replica(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &node.ns,
                env!("CARGO_BIN_EXE_warren"),
                "replica",
            ])
            .args(["--node-id", &node.name, "--listen", &node.address])
            .arg("--root")
            .arg(&node.root)
            .arg("--token-file")
            .arg(&self.token)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        node.child = Some(child);
    }

    fn kill_replica(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            // `ip netns exec` execs warren itself, so this is SIGKILL to the replica.
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn cut(&self, i: usize) {
        run("ip", &["link", "set", &self.nodes[i].host_if, "down"]).unwrap();
    }

    fn mend(&self, i: usize) {
        run("ip", &["link", "set", &self.nodes[i].host_if, "up"]).unwrap();
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("nbd.sock")
    }

    fn status_file(&self) -> PathBuf {
        self.dir.path().join("status.json")
    }

    fn start_engine(&mut self, size: u64, create: bool) {
        let mut args = vec![
            "volume".to_string(),
            "--volume".into(),
            "vol".into(),
            "--size".into(),
            size.to_string(),
            "--local".into(),
            self.nodes[0].name.clone(),
            "--io-timeout-ms".into(),
            "1000".into(),
            "--token-file".into(),
            self.token.display().to_string(),
            "--nbd-socket".into(),
            self.socket().display().to_string(),
            "--status-file".into(),
            self.status_file().display().to_string(),
        ];
        for node in &self.nodes {
            args.push("--replica".into());
            args.push(format!("{}={}", node.name, node.address));
        }
        if create {
            args.push("--create".into());
        }
        if self.hosted {
            args.push("--local-root".into());
            args.push(self.nodes[0].root.display().to_string());
        }
        self.volume_args = args.clone();
        let _ = std::fs::remove_file(self.socket());
        let _ = std::fs::remove_file(self.status_file());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("engine.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(&args)
            .env("WARREN_LOG", "info,warren_replica=debug")
            .stderr(log)
            .spawn()
            .unwrap();
        self.engine = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "engine did not start:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill_engine(&mut self) {
        if let Some(mut child) = self.engine.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM: the engine flushes, checkpoints and marks the replicas clean.
    fn stop_engine(&mut self) {
        if let Some(mut child) = self.engine.take() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
            let status = child.wait().unwrap();
            assert!(status.success(), "engine exit {status}:\n{}", self.logs());
        }
    }

    fn status(&self) -> serde_json::Value {
        std::fs::read(self.status_file())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    fn members(&self) -> Vec<String> {
        self.status()["members"]
            .as_array()
            .map(|a| a.iter().map(|m| m.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    }

    fn wait_members(&self, want: &[&str], secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let mut members = self.members();
            members.sort();
            if members == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "members {members:?}, want {want:?}; status {}\n{}",
                self.status(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn data(&self, i: usize) -> Vec<u8> {
        std::fs::read(self.nodes[i].root.join("vol/data")).unwrap()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["engine.log", "a.log", "b.log", "c.log"] {
            if let Ok(text) = std::fs::read_to_string(self.dir.path().join(name)) {
                let tail: Vec<&str> = text.lines().rev().take(25).collect();
                out += &format!("--- {name} (last lines)\n");
                for line in tail.into_iter().rev() {
                    out += line;
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_engine();
        for i in 0..self.nodes.len() {
            self.kill_replica(i);
            let _ = run("ip", &["link", "del", &self.nodes[i].host_if]);
            let _ = run("ip", &["netns", "del", &self.nodes[i].ns]);
        }
    }
}

/// A 4 KiB block that names itself: its index and the write's sequence number, repeated,
/// with a checksum of both in every 16 bytes.
fn block(index: u64, seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK as usize);
    while out.len() < BLOCK as usize {
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&(seq ^ index.rotate_left(17) ^ 0x5eed).to_le_bytes());
    }
    out
}

/// What the writer knows: the last acknowledged sequence per block, and writes whose
/// answer never came (each may or may not have happened).
#[derive(Default)]
struct Ledger {
    acked: HashMap<u64, u64>,
    unknown: HashMap<u64, Vec<u64>>,
    seq: u64,
    rng: u64,
}

impl Ledger {
    fn next_block(&mut self, blocks: u64) -> u64 {
        // xorshift: reproducible, spread over the volume.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % blocks
    }

    /// Writes `count` blocks; stops at the first failure, recording it as unknown.
    async fn write(&mut self, client: &mut NbdClient, count: usize) -> Result<(), String> {
        let blocks = client.size / BLOCK;
        for _ in 0..count {
            let index = self.next_block(blocks);
            self.seq += 1;
            let seq = self.seq;
            match client.write(index * BLOCK, &block(index, seq), false).await {
                Ok(()) => {
                    self.acked.insert(index, seq);
                    self.unknown.remove(&index);
                }
                Err(e) => {
                    self.unknown.entry(index).or_default().push(seq);
                    return Err(e.to_string());
                }
            }
        }
        Ok(())
    }

    /// Every acknowledged block holds its last acknowledged content, or the content of a
    /// later write whose answer was lost.
    fn check(&self, mut read: impl FnMut(u64) -> Vec<u8>) {
        let mut checked = 0;
        for (&index, &seq) in &self.acked {
            let got = read(index);
            let mut allowed = vec![seq];
            allowed.extend(self.unknown.get(&index).into_iter().flatten());
            assert!(
                allowed.iter().any(|&s| got == block(index, s)),
                "block {index}: acknowledged seq {seq} lost"
            );
            checked += 1;
        }
        assert!(checked > 0);
        eprintln!(
            "checked {checked} acknowledged blocks ({} writes, {} unanswered)",
            self.seq,
            self.unknown.values().map(Vec::len).sum::<usize>()
        );
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn read_file_block(data: &[u8], index: u64) -> Vec<u8> {
    data[(index * BLOCK) as usize..((index + 1) * BLOCK) as usize].to_vec()
}

fn assert_identical(cluster: &Cluster, count: usize) {
    let first = cluster.data(0);
    for i in 1..count {
        assert!(
            cluster.data(i) == first,
            "replica {} differs from {}",
            cluster.nodes[i].name,
            cluster.nodes[0].name
        );
    }
}

#[test]
fn killed_and_cut_off_replicas_lose_no_acknowledged_write() {
    if !netns_available("k") {
        return;
    }
    let mut cluster = Cluster::start(71, &["a", "b", "c"]);
    let rt = rt();
    let mut ledger = Ledger {
        rng: 0x9e37_79b9_7f4a_7c15,
        ..Ledger::default()
    };
    cluster.start_engine(32 * MIB, true);
    let mut client = rt.block_on(NbdClient::connect(&cluster.socket())).unwrap();
    rt.block_on(ledger.write(&mut client, 300)).unwrap();
    cluster.wait_members(&["a", "b", "c"], 10);

    // SIGKILL a, the engine's local replica that reads come from: writes go on (the first
    // waits for a to be cut out), reads move to the others.
    cluster.kill_replica(0);
    rt.block_on(ledger.write(&mut client, 300)).unwrap();
    cluster.wait_members(&["b", "c"], 10);

    // Cut c's network: its TCP connection hangs rather than fails; the I/O timeout cuts it.
    cluster.cut(2);
    rt.block_on(ledger.write(&mut client, 300)).unwrap();
    cluster.wait_members(&["b"], 10);
    rt.block_on(client.flush()).unwrap();
    ledger.check(|i| {
        rt.block_on(client.read(i * BLOCK, BLOCK as u32))
            .expect("read")
    });

    // Both come back and are rebuilt while writes continue.
    cluster.start_replica(0);
    cluster.mend(2);
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.members().len() < 3 {
        assert!(Instant::now() < deadline, "no rebuild:\n{}", cluster.logs());
        rt.block_on(ledger.write(&mut client, 20)).unwrap();
    }
    rt.block_on(ledger.write(&mut client, 200)).unwrap();
    rt.block_on(client.flush()).unwrap();
    let rebuild = cluster.status()["last_rebuild"].clone();
    assert_eq!(rebuild["incremental"], true, "{rebuild}");

    // Every acknowledged write reads back through the engine...
    ledger.check(|i| {
        rt.block_on(client.read(i * BLOCK, BLOCK as u32))
            .expect("read")
    });
    drop(client);
    cluster.stop_engine();
    // ...and from every replica's own file, all identical.
    assert_identical(&cluster, 3);
    let data = cluster.data(0);
    ledger.check(|i| read_file_block(&data, i));
}

#[test]
fn an_engine_killed_mid_write_resyncs_and_loses_no_acknowledged_write() {
    if !netns_available("e") {
        return;
    }
    engine_killed_mid_write(Cluster::start(72, &["a", "b"]));
}

/// The engine's process keeps its node's replica (`--local-root`): a kill -9 of it takes
/// the local replica down at the same instant as the engine, mid-write.
#[test]
fn a_node_process_with_its_replica_in_process_killed_mid_write_loses_no_acknowledged_write() {
    if !netns_available("h") {
        return;
    }
    engine_killed_mid_write(Cluster::start_hosted(73, &["a", "b"]));
}

fn engine_killed_mid_write(mut cluster: Cluster) {
    let rt = rt();
    let mut ledger = Ledger {
        rng: 0x2545_f491_4f6c_dd1d,
        ..Ledger::default()
    };
    cluster.start_engine(16 * MIB, true);
    for round in 0..3 {
        let mut client = rt.block_on(NbdClient::connect(&cluster.socket())).unwrap();
        // Write in the background and kill the engine while writes are in flight.
        let writer = {
            let socket = cluster.socket();
            let mut ledger = std::mem::take(&mut ledger);
            std::thread::spawn(move || {
                let rt = self::rt();
                let mut client = rt.block_on(NbdClient::connect(&socket)).unwrap();
                let _ = rt.block_on(ledger.write(&mut client, 100_000));
                ledger
            })
        };
        std::thread::sleep(Duration::from_millis(400 + round * 150));
        cluster.kill_engine();
        ledger = writer.join().unwrap();
        assert!(
            !ledger.unknown.is_empty() || ledger.acked.len() > 10,
            "the writer made no progress"
        );
        drop(client.flush());
        cluster.start_engine(16 * MIB, false);
        client = rt.block_on(NbdClient::connect(&cluster.socket())).unwrap();
        ledger.check(|i| {
            rt.block_on(client.read(i * BLOCK, BLOCK as u32))
                .expect("read")
        });
    }
    cluster.stop_engine();
    assert_identical(&cluster, 2);
    let data = cluster.data(0);
    ledger.check(|i| read_file_block(&data, i));
}
