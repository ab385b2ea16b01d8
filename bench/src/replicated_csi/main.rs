//! Replicated volumes through CSI, next to a local image volume on the same machine:
//! provisioning latency (CreateVolume alone, and until a pod could use the volume), direct
//! I/O on a file inside the mounted volume, and the node processes' memory with volumes
//! staged. Run by bench/replicated.sh, which starts `warren controller` and the
//! `warren node` processes (one of them is the pod's node, NODE_SOCKET) and cleans up.
//!
//!   replicated-csi-bench CONTROLLER_SOCKET NODE_SOCKET KUBELET_DIR NODE=PID,... \
//!       [COUNT] [IO_SECONDS] [REPS]
//!
//! BENCH_PHASES=latency,rss,io (default all three) picks the parts to run.
//! BENCH_IO_VOLUME_MIB (default 1024) sizes the I/O runs' volume; their file is half of
//! it. Smaller values are for slow machines (the kernel lab's emulated guests).
//! BENCH_SMAPS=1 also prints each node's largest mappings by RSS with 10 volumes staged.

mod csi;
mod dio;

use std::path::PathBuf;
use std::time::Duration;

use csi::{BoxError, Class, Csi, Mounted};

/// The I/O runs' volume, unless BENCH_IO_VOLUME_MIB says otherwise.
const IO_VOLUME_MIB: i64 = 1024;
const LATENCY_VOLUME_MIB: i64 = 64;
const IDLE_VOLUMES: usize = 10;
const IDLE_VOLUME_MIB: i64 = 256;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn dist(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{:.1} / {:.1} / {:.1} ms (max {:.1})",
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.90)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap()),
    )
}

/// (CPU ticks, RSS KiB, peak RSS KiB) of a process.
fn proc_stat(pid: u32) -> (u64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ticks = stat
        .rfind(')')
        .map(|i| stat[i + 2..].split(' ').collect::<Vec<_>>())
        .and_then(|f| Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?))
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (ticks, field("VmRSS:"), field("VmHWM:"))
}

/// RSS and CPU of every node process over `idle` with nothing asked of them.
async fn idle_report(what: &str, nodes: &[(String, u32)], idle: Duration) {
    let before: Vec<_> = nodes.iter().map(|(_, p)| proc_stat(*p)).collect();
    tokio::time::sleep(idle).await;
    for ((name, pid), (t0, _, _)) in nodes.iter().zip(before) {
        let (t1, rss, hwm) = proc_stat(*pid);
        println!(
            "| {what} | {name} | {:.1} MiB | {:.1} MiB | {:.2} % over {} s |",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0,
            t1.saturating_sub(t0) as f64 / idle.as_secs_f64(),
            idle.as_secs()
        );
    }
}

/// The `n` mappings of a process with the most resident memory, from /proc/PID/smaps:
/// where the RSS is (BENCH_SMAPS=1 prints them with the RSS tables).
fn largest_mappings(pid: u32, n: usize) -> Vec<String> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut maps: Vec<(u64, String)> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first == "Rss:" {
            if let (Some(last), Some(kib)) = (maps.last_mut(), words.next()) {
                last.0 = kib.parse().unwrap_or(0);
            }
        } else if let Some((from, to)) = first.split_once('-') {
            // A mapping's header: "from-to perms offset dev inode [path]".
            let (Ok(from), Ok(to)) = (u64::from_str_radix(from, 16), u64::from_str_radix(to, 16))
            else {
                continue;
            };
            let path = line.split_whitespace().nth(5).unwrap_or("[anon]");
            maps.push((0, format!("{} KiB {path}", (to - from) >> 10)));
        }
    }
    maps.sort_by_key(|m| std::cmp::Reverse(m.0));
    maps.into_iter()
        .take(n)
        .map(|(rss, what)| format!("{rss} KiB resident of {what}"))
        .collect()
}

fn print_largest_mappings(nodes: &[(String, u32)]) {
    if std::env::var("BENCH_SMAPS").map_or(true, |v| v.is_empty()) {
        return;
    }
    for (name, pid) in nodes {
        println!("\n{name}'s largest mappings by RSS:");
        for m in largest_mappings(*pid, 12) {
            println!("- {m}");
        }
    }
}

async fn latency(csi: &mut Csi, classes: &[Class], count: usize) -> Result<(), BoxError> {
    println!("\n## provisioning, {count} volumes of {LATENCY_VOLUME_MIB} MiB ext4 per class, one after another");
    println!("| class (p50 / p90 / p99) | CreateVolume | CreateVolume + NodeStage + NodePublish | unpublish + unstage + DeleteVolume |");
    println!("|---|---|---|---|");
    for class in classes {
        let (mut create, mut total, mut remove) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..count {
            let (mounted, t) = csi.provision(class, LATENCY_VOLUME_MIB).await?;
            create.push(t.create);
            total.push(t.create + t.stage_publish);
            let start = std::time::Instant::now();
            csi.remove(&mounted).await?;
            remove.push(start.elapsed());
        }
        println!(
            "| {} | {} | {} | {} |",
            class.label(),
            dist(create),
            dist(total),
            dist(remove)
        );
    }
    Ok(())
}

async fn io(
    csi: &mut Csi,
    classes: &[Class],
    volume_mib: i64,
    secs: u64,
    reps: usize,
) -> Result<(), BoxError> {
    let time = Duration::from_secs(secs);
    // Half the volume: room left for the file system.
    let file_bytes = (volume_mib as u64 / 2) << 20;
    println!(
        "\n## direct I/O on a {} MiB file in a {volume_mib} MiB ext4 volume, {secs} s per run, median of {reps}",
        file_bytes >> 20
    );
    println!("| class | workload | MB/s | IOPS | p50 µs | p99 µs | of local |");
    println!("|---|---|---|---|---|---|---|");
    let mut local: Vec<dio::Result> = Vec::new();
    for class in classes {
        let (mounted, _) = csi.provision(class, volume_mib).await?;
        let file = mounted.target.join("fio-like.dat");
        let results = tokio::task::block_in_place(|| -> std::io::Result<Vec<dio::Result>> {
            dio::lay_out(&file, file_bytes)?;
            dio::WORKLOADS
                .iter()
                .map(|w| dio::median(&file, file_bytes, *w, time, reps))
                .collect()
        });
        csi.remove(&mounted).await?;
        let results = results?;
        if local.is_empty() {
            local = results.clone();
        }
        for ((w, r), l) in dio::WORKLOADS.iter().zip(&results).zip(&local) {
            println!(
                "| {} | {} | {:.0} | {:.0} | {} | {} | {:.0} % |",
                class.label(),
                w.label,
                r.mb_s,
                r.iops,
                r.p50_us,
                r.p99_us,
                100.0 * r.iops / l.iops
            );
        }
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!(
            "usage: {} CONTROLLER_SOCKET NODE_SOCKET KUBELET_DIR NODE=PID,... [COUNT] [IO_SECONDS] [REPS]",
            args[0]
        );
        std::process::exit(2);
    }
    let controller = PathBuf::from(&args[1]);
    let node = PathBuf::from(&args[2]);
    let kubelet = PathBuf::from(&args[3]);
    let nodes: Vec<(String, u32)> = args[4]
        .split(',')
        .map(|p| {
            let (n, pid) = p.split_once('=').ok_or("NODE=PID expected")?;
            Ok::<_, BoxError>((n.to_string(), pid.parse()?))
        })
        .collect::<Result<_, _>>()?;
    let count: usize = args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(30);
    let io_secs: u64 = args.get(6).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let reps: usize = args.get(7).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let phases = std::env::var("BENCH_PHASES").unwrap_or_else(|_| "latency,rss,io".into());
    let io_volume_mib: i64 = match std::env::var("BENCH_IO_VOLUME_MIB") {
        Ok(v) => v.parse()?,
        Err(_) => IO_VOLUME_MIB,
    };
    if io_volume_mib < 16 {
        return Err("BENCH_IO_VOLUME_MIB must be at least 16".into());
    }

    let mut csi = Csi::connect(&controller, &node, &kubelet).await?;
    println!("pod's node: {}", csi.node_id());
    let classes = [
        Class::LocalImage,
        Class::Replicated(2),
        Class::Replicated(3),
    ];

    println!("\n## node processes");
    println!("| when | node | RSS | peak RSS | CPU |");
    println!("|---|---|---|---|---|");
    idle_report("started, nothing staged", &nodes, Duration::from_secs(5)).await;

    if phases.contains("latency") {
        latency(&mut csi, &classes, count).await?;
    }
    let mut idle_set: Vec<Mounted> = Vec::new();
    if phases.contains("rss") {
        for _ in 0..IDLE_VOLUMES {
            let (m, _) = csi
                .provision(&Class::Replicated(2), IDLE_VOLUME_MIB)
                .await?;
            idle_set.push(m);
        }
        println!("\n| when | node | RSS | peak RSS | CPU |");
        println!("|---|---|---|---|---|");
        tokio::time::sleep(Duration::from_secs(2)).await;
        idle_report(
            &format!("{IDLE_VOLUMES} x 2-replica volumes staged and mounted, idle"),
            &nodes,
            Duration::from_secs(10),
        )
        .await;
        print_largest_mappings(&nodes);
    }
    let io_result = if phases.contains("io") {
        io(&mut csi, &classes, io_volume_mib, io_secs, reps).await
    } else {
        Ok(())
    };
    if !idle_set.is_empty() {
        println!("\n| when | node | RSS | peak RSS | CPU |");
        println!("|---|---|---|---|---|");
        tokio::time::sleep(Duration::from_secs(2)).await;
        idle_report(
            &format!("the same {IDLE_VOLUMES} still mounted, after the I/O runs, idle"),
            &nodes,
            Duration::from_secs(10),
        )
        .await;
    }
    for m in &idle_set {
        csi.remove(m).await?;
    }
    io_result?;
    if !idle_set.is_empty() {
        println!("\n| when | node | RSS | peak RSS | CPU |");
        println!("|---|---|---|---|---|");
        idle_report("all volumes removed", &nodes, Duration::from_secs(3)).await;
    }
    Ok(())
}
