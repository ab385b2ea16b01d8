//! Replication benchmark (not a test): throughput and latency through the volume engine
//! with 1, 2 and 3 replicas against the raw backing file on the same disk, rebuild speed,
//! and the replica service's idle CPU and memory with 10 volumes.
//!
//!   replication-bench WARREN_BINARY WORKDIR [SCALE_MIB]
//!
//! Replicas are real `warren replica` processes on loopback; the engine runs in this
//! process and is driven through its `BlockTarget` interface (the frontends add their own
//! cost on top, measured separately). Run by bench/replication.sh.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use warren_replica::auth::Token;
use warren_replica::engine::{Engine, EngineConfig, ReplicaAddress};
use warren_replica::server::ReplicaService;
use warren_replica::{BlockTarget, FileTarget};

const MIB: u64 = 1 << 20;
const TOKEN: &str = "benchmark-token-0123456789";

struct Replica {
    id: String,
    address: String,
    root: PathBuf,
    child: Child,
    args: Vec<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_replica(binary: &Path, args: &[String]) -> Child {
    Command::new(binary)
        .args(args)
        .env("WARREN_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start warren replica")
}

fn start_replica(binary: &Path, work: &Path, id: &str) -> Replica {
    let address = format!("127.0.0.1:{}", free_port());
    let root = work.join(id);
    let args: Vec<String> = vec![
        "replica".into(),
        "--node-id".into(),
        id.into(),
        "--listen".into(),
        address.clone(),
        "--root".into(),
        root.display().to_string(),
        "--token-file".into(),
        work.join("token").display().to_string(),
    ];
    let child = spawn_replica(binary, &args);
    for _ in 0..100 {
        if std::net::TcpStream::connect(&address).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Replica {
        id: id.into(),
        address,
        root,
        child,
        args,
    }
}

fn config(volume: &str, size: u64, replicas: &[Replica], create: bool) -> EngineConfig {
    let addresses = replicas
        .iter()
        .map(|r| ReplicaAddress {
            replica: r.id.clone(),
            address: r.address.clone(),
        })
        .collect();
    let mut config = EngineConfig::new(
        volume,
        size,
        addresses,
        Token::new(TOKEN.as_bytes().to_vec()).unwrap(),
    );
    config.local = replicas.first().map(|r| r.id.clone());
    config.create = create;
    config
}

/// Incompressible-looking bytes (zeros would be cheap to move and to store).
fn pattern(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    Bytes::from(out)
}

#[derive(Clone)]
struct Run {
    label: String,
    mb_s: f64,
    iops: f64,
    p50_us: u128,
    p99_us: u128,
}

/// One I/O pattern: `count` I/Os of `io` bytes, `qd` at a time.
#[derive(Clone, Copy)]
struct Workload {
    label: &'static str,
    write: bool,
    io: u64,
    count: u64,
    qd: usize,
    random: bool,
}

async fn workload(target: &Arc<dyn BlockTarget>, w: Workload) -> Run {
    let Workload {
        label,
        write,
        io,
        count,
        qd,
        random,
    } = w;
    let size = target.size();
    let data = pattern((4 * MIB) as usize, 7);
    let slots = size / io;
    let started = Instant::now();
    let mut lat: Vec<Duration> = stream::iter(0..count)
        .map(|i| {
            let target = target.clone();
            let data = data.slice(0..io as usize);
            async move {
                let slot = if random {
                    (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) % slots
                } else {
                    i % slots
                };
                let t = Instant::now();
                if write {
                    target.write(slot * io, data, false).await.unwrap();
                } else {
                    target.read(slot * io, io as usize).await.unwrap();
                }
                t.elapsed()
            }
        })
        .buffer_unordered(qd)
        .collect()
        .await;
    if write {
        let before = started.elapsed();
        target.flush().await.unwrap();
        if std::env::var_os("BENCH_PHASES").is_some() {
            eprintln!(
                "{label}: writes {before:?}, flush {:?}",
                started.elapsed() - before
            );
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort();
    Run {
        label: label.to_string(),
        mb_s: (io * count) as f64 / elapsed / MIB as f64,
        iops: count as f64 / elapsed,
        p50_us: lat[lat.len() / 2].as_micros(),
        p99_us: lat[lat.len() * 99 / 100].as_micros(),
    }
}

/// Each workload three times; the median run (by throughput) is reported, since a shared
/// 2-vCPU VM varies a lot from run to run. For writes the first run is reported too: it
/// is the only one that writes into the fresh, sparse volume, and with replicas it is much
/// slower than the median (likely fresh page-cache pages; see docs/benchmarks.md,
/// "Replication benchmarks").
async fn median(target: &Arc<dyn BlockTarget>, w: Workload) -> Vec<Run> {
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(workload(target, w).await);
    }
    let first = if w.write {
        let mut first = runs[0].clone();
        first.label = format!("{} (1st)", first.label);
        Some(first)
    } else {
        None
    };
    runs.sort_by(|a, b| a.mb_s.total_cmp(&b.mb_s));
    let mut out = vec![runs.swap_remove(1)];
    out.extend(first);
    out
}

async fn suite(target: Arc<dyn BlockTarget>, scale: u64) -> Vec<Run> {
    let seq = scale; // 1 MiB I/Os
    let rand = scale * 64; // 4 KiB I/Os
    let workloads = [
        ("seq write 1M qd4", true, MIB, seq, 4, false),
        ("seq read 1M qd4", false, MIB, seq, 4, false),
        ("rand write 4K qd16", true, 4096, rand, 16, true),
        ("rand read 4K qd16", false, 4096, rand, 16, true),
    ];
    // BENCH_WORKLOAD=seq|rand|write|read...: only workloads whose label contains it (profiling).
    let only = std::env::var("BENCH_WORKLOAD").unwrap_or_default();
    let mut runs = Vec::new();
    for (label, write, io, count, qd, random) in workloads {
        if !label.contains(only.as_str()) {
            continue;
        }
        let w = Workload {
            label,
            write,
            io,
            count,
            qd,
            random,
        };
        runs.extend(median(&target, w).await);
    }
    runs
}

fn proc_stat(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks, rss)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: replication-bench WARREN_BINARY WORKDIR [SCALE_MIB]");
        std::process::exit(2);
    }
    let binary = PathBuf::from(&args[1]);
    let work = PathBuf::from(&args[2]);
    let scale: u64 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(512);
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("token"), TOKEN).unwrap();
    let size = 2 * scale * MIB;
    let mut replicas: Vec<Replica> = ["a", "b", "c"]
        .iter()
        .map(|id| start_replica(&binary, &work, id))
        .collect();

    println!(
        "volume {} MiB; sequential {} MiB, random {} x 4 KiB per run",
        size / MIB,
        scale,
        scale * 64
    );
    let raw: Arc<dyn BlockTarget> =
        Arc::new(FileTarget::open(&work.join("raw.img"), size).unwrap());
    let base = suite(raw, scale).await;
    for r in &base {
        println!(
            "raw file                      {:<24} {:>8.0} MB/s {:>8.0} IOPS  p50 {:>6} us  p99 {:>6} us",
            r.label, r.mb_s, r.iops, r.p50_us, r.p99_us
        );
    }
    // The second baseline: the same file with the early writeback every replica does, so
    // what the engine gains from it is told apart from what replicating costs.
    let raw_early: Arc<dyn BlockTarget> = Arc::new(
        FileTarget::open(&work.join("raw-early.img"), size)
            .unwrap()
            .with_early_writeback(),
    );
    let base_early = suite(raw_early, scale).await;
    for (r, b) in base_early.iter().zip(&base) {
        println!(
            "raw file + early writeback    {:<24} {:>8.0} MB/s {:>8.0} IOPS  p50 {:>6} us  p99 {:>6} us  = {:>3.0}% of raw",
            r.label, r.mb_s, r.iops, r.p50_us, r.p99_us,
            100.0 * r.iops / b.iops
        );
    }
    // BENCH_ONLY=N: only the N-replica runs (for profiling).
    let only: Option<usize> = std::env::var("BENCH_ONLY")
        .ok()
        .and_then(|v| v.parse().ok());
    // The node's own replica reached in process, as when the node process hosts both the
    // replica service and the engine: a service in this process (its own root; the `a`
    // process holds a's), the others still over TCP.
    let here = ReplicaService::new(
        work.join("here"),
        "here".into(),
        Token::new(TOKEN.as_bytes().to_vec()).unwrap(),
    )
    .unwrap();
    // BENCH_MODE=tcp|local: only the all-over-TCP or the in-process runs (profiling).
    let mode = std::env::var("BENCH_MODE");
    let runs = (1..=3)
        .filter(|n| only.is_none_or(|o| o == *n))
        .flat_map(|n| [(n, false), (n, true)])
        .filter(|(_, local)| match mode.as_deref() {
            Ok("tcp") => !local,
            Ok("local") => *local,
            _ => true,
        });
    for (n, in_process) in runs {
        let volume = format!("bench{n}{}", if in_process { "p" } else { "" });
        let mut cfg = if in_process {
            let mut cfg = config(&volume, size, &replicas[..n - 1], true);
            cfg.replicas.insert(
                0,
                ReplicaAddress {
                    replica: "here".into(),
                    address: String::new(),
                },
            );
            cfg.in_process = Some(here.clone());
            cfg
        } else {
            config(&volume, size, &replicas[..n], true)
        };
        cfg.local = Some(cfg.replicas[0].replica.clone());
        let engine = Engine::start(cfg).await.unwrap();
        // BENCH_SETTLE=SECONDS: wait after the engine starts (to tell start-up work apart
        // from the first run's own cost).
        if let Some(s) = std::env::var("BENCH_SETTLE")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            tokio::time::sleep(Duration::from_secs(s)).await;
        }
        let target: Arc<dyn BlockTarget> = engine.clone();
        let runs = suite(target, scale).await;
        for ((r, b), e) in runs.iter().zip(&base).zip(&base_early) {
            println!(
                "{n} replica{} {} {:<24} {:>8.0} MB/s {:>8.0} IOPS  p50 {:>6} us  p99 {:>6} us  = {:>3.0}% of raw, {:>3.0}% of raw + early writeback",
                if n == 1 { " " } else { "s" },
                if in_process { "(local in process)" } else { "(all over TCP)    " },
                r.label,
                r.mb_s,
                r.iops,
                r.p50_us,
                r.p99_us,
                100.0 * r.iops / b.iops,
                100.0 * r.iops / e.iops
            );
        }
        engine.close().await.unwrap();
    }

    if only.is_some() {
        for r in &mut replicas {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
        return;
    }
    // Rebuild: fill a 2-replica volume, replace b's disk, time the full rebuild.
    let volume = "rebuild";
    let engine = Engine::start(config(volume, size, &replicas[..2], true))
        .await
        .unwrap();
    let chunk = pattern((4 * MIB) as usize, 11);
    for i in 0..size / (4 * MIB) {
        engine
            .write(i * 4 * MIB, chunk.clone(), false)
            .await
            .unwrap();
    }
    engine.close().await.unwrap();
    let b = &mut replicas[1];
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    std::fs::remove_dir_all(b.root.join(volume)).unwrap();
    b.child = spawn_replica(&binary, &b.args);
    std::thread::sleep(Duration::from_millis(300));
    let mut cfg = config(volume, size, &replicas[..2], false);
    cfg.heal_interval = Duration::from_millis(100);
    let engine = Engine::start(cfg).await.unwrap();
    let stats = loop {
        if let Some(stats) = engine.status().await.last_rebuild {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "rebuild (full, {} MiB of data, unlimited rate): {:.2} s = {:.0} MB/s",
        stats.bytes / MIB,
        stats.elapsed.as_secs_f64(),
        stats.bytes as f64 / stats.elapsed.as_secs_f64() / 1e6
    );
    engine.close().await.unwrap();

    // Idle: 10 volumes open on a fresh replica service (and on `a`, after all the runs
    // above), nothing happening.
    replicas.push(start_replica(&binary, &work, "d"));
    let idle_set = [replicas.remove(3), replicas.remove(0)];
    let mut engines = Vec::new();
    for v in 0..10 {
        let engine = Engine::start(config(&format!("idle{v}"), 64 * MIB, &idle_set, true))
            .await
            .unwrap();
        engine
            .write(0, pattern(MIB as usize, v), true)
            .await
            .unwrap();
        engines.push(engine);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pids = [idle_set[0].child.id(), idle_set[1].child.id()];
    let before: Vec<(u64, u64)> = pids.iter().map(|&p| proc_stat(p)).collect();
    let idle = Duration::from_secs(10);
    tokio::time::sleep(idle).await;
    for (i, (&pid, (t0, _))) in pids.iter().zip(&before).enumerate() {
        let (t1, rss) = proc_stat(pid);
        println!(
            "replica service idle, 10 open volumes ({}): {:.2}% CPU over {} s, RSS {:.1} MiB",
            if i == 0 {
                "fresh process"
            } else {
                "after the runs above"
            },
            (t1 - t0) as f64 / 100.0 / idle.as_secs_f64() * 100.0,
            idle.as_secs(),
            rss as f64 / 1024.0
        );
    }
    for engine in engines {
        engine.close().await.unwrap();
    }
    replicas.extend(idle_set);
    for r in &mut replicas {
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
}
