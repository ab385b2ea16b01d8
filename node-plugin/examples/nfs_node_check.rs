//! Runs inside a kernel-lab guest (node-plugin/tests/nfs_lab.rs): the node's NFS work
//! through `NfsStager`, against a real server, in the failures the node must survive.
//! Prints `PASS <step> (<time>)` or `FAIL <step>: <why>` per step and exits non-zero on
//! the first failure.
//!
//!   nfs_node_check SERVER SHARE VERSION
//!
//! Steps:
//! 1. the controller's user-space client makes the volume's directory; stage, publish,
//!    write through the target, stats healthy;
//! 2. stale handle: the directory is removed and made again behind the mount's back (as
//!    a server whose export is replaced); stats says abnormal (stale), and a retried
//!    publish (what the kubelet does when the pod restarts) mounts afresh: the target
//!    works again;
//! 3. server gone while mounted (the guest's link taken down): stats answers abnormal
//!    within its deadline; unpublish and unstage return within bounded time and leave no
//!    mount;
//! 4. server gone at stage: the mount gives up at its deadline, UNAVAILABLE or
//!    DEADLINE_EXCEEDED, and leaves no mount.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use csi_proto::v1::volume_capability::access_mode::Mode;
use warren_core::capability::{Access, Requested};
use warren_nfs::dirops::{Export, ExportOptions};
use warren_nfs::params::OnDelete;
use warren_nfs::volume_id::NfsVolumeId;
use warren_node::mounter::SystemMounter;
use warren_node::nfs::{Deadlines, NfsStager};
use warren_node::stage::Stats;

const PROBE: Duration = Duration::from_secs(3);
const MOUNT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: nfs_node_check SERVER SHARE VERSION");
        return ExitCode::from(2);
    }
    match run(&args[1], &args[2], &args[3]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            println!("FAIL {why}");
            ExitCode::FAILURE
        }
    }
}

fn step<T>(name: &str, work: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let started = Instant::now();
    let out = work().map_err(|e| format!("{name}: {e}"))?;
    println!("PASS {name} ({:.2?})", started.elapsed());
    Ok(out)
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn mounted(path: &Path) -> bool {
    warren_nfs::mount::is_mount_point(path)
}

fn run(server: &str, share: &str, version: &str) -> Result<(), String> {
    let sub_dir = format!("node-check-{}", version.replace('.', "-"));
    let id = NfsVolumeId {
        server: server.into(),
        share: share.into(),
        sub_dir: sub_dir.clone(),
        on_delete: OnDelete::Delete,
    };
    let export = Export::new(
        server,
        share,
        ExportOptions {
            deadline: Duration::from_secs(20),
            ..Default::default()
        },
    );
    let stager = NfsStager::new(
        Arc::new(SystemMounter),
        Deadlines {
            mount: MOUNT,
            probe: PROBE,
        },
    );
    let cap = Requested {
        access: Access::Mount {
            fs_type: String::new(),
            mount_flags: vec!["soft".into(), "timeo=10".into(), "retrans=1".into()],
        },
        mode: Mode::MultiNodeMultiWriter,
    };
    let context = HashMap::from([("nfsVersion".to_string(), version.to_string())]);
    let request = NfsStager::nfs_request(&id, &context, &cap).map_err(|e| e.to_string())?;
    let staging = Path::new("/var/lib/kubelet/plugins/check/staging");
    let target = Path::new("/var/lib/kubelet/pods/check/target");

    step("stage, publish, write, stats", || {
        block_on(export.make_dir(&sub_dir, Some(0o777))).map_err(|e| e.to_string())?;
        stager
            .stage(&request, staging)
            .map_err(|e| format!("stage: {e}"))?;
        stager
            .publish(&request, staging, target, &cap, false)
            .map_err(|e| format!("publish: {e}"))?;
        // Idempotent: the same calls again change nothing.
        stager
            .stage(&request, staging)
            .map_err(|e| format!("stage again: {e}"))?;
        stager
            .publish(&request, staging, target, &cap, false)
            .map_err(|e| format!("publish again: {e}"))?;
        std::fs::write(target.join("hello"), "from the pod").map_err(|e| e.to_string())?;
        match stager.stats(target).map_err(|e| e.to_string())? {
            (Some(Stats::Fs { bytes_total, .. }), c) if !c.abnormal && bytes_total > 0 => Ok(()),
            (_, c) => Err(format!("stats: {}", c.message)),
        }
    })?;

    step(
        "stale handle: reported, then a retried publish mounts afresh",
        || {
            // The export's directory replaced behind the mount's back.
            block_on(export.remove_dir(&sub_dir)).map_err(|e| e.to_string())?;
            block_on(export.make_dir(&sub_dir, Some(0o777))).map_err(|e| e.to_string())?;
            let (_, condition) = stager.stats(target).map_err(|e| e.to_string())?;
            if !condition.abnormal || !condition.message.contains("stale") {
                return Err(format!("stats after the replacement: {condition:?}"));
            }
            stager
                .publish(&request, staging, target, &cap, false)
                .map_err(|e| format!("publish after stale: {e}"))?;
            std::fs::write(target.join("again"), "after recovery").map_err(|e| e.to_string())?;
            let listed: Vec<String> = std::fs::read_dir(target)
                .map_err(|e| e.to_string())?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if listed != ["again"] {
                return Err(format!("the new directory shows {listed:?}"));
            }
            match stager.stats(target).map_err(|e| e.to_string())?.1 {
                c if c.abnormal => Err(format!("still abnormal: {}", c.message)),
                _ => Ok(()),
            }
        },
    )?;

    step(
        "server gone while mounted: stats abnormal in time, unmounts never hang",
        || {
            link(false)?;
            let started = Instant::now();
            let (_, condition) = stager.stats(target).map_err(|e| e.to_string())?;
            let took = started.elapsed();
            if !condition.abnormal {
                return Err("stats said healthy with the server gone".into());
            }
            if took > PROBE + Duration::from_secs(2) {
                return Err(format!("stats took {took:?} (deadline {PROBE:?})"));
            }
            let started = Instant::now();
            stager
                .unpublish(target)
                .map_err(|e| format!("unpublish: {e}"))?;
            stager
                .unstage(staging)
                .map_err(|e| format!("unstage: {e}"))?;
            let took = started.elapsed();
            if took > 4 * PROBE {
                return Err(format!("unpublish + unstage took {took:?}"));
            }
            if mounted(target) || mounted(staging) || target.exists() {
                return Err("a mount or the target was left".into());
            }
            println!(
                "  stats abnormal: {}; unmounts took {took:.2?}",
                condition.message
            );
            Ok(())
        },
    )?;

    step(
        "server gone at stage: gives up at the deadline, nothing left",
        || {
            let started = Instant::now();
            let err = match stager.stage(&request, staging) {
                Ok(()) => return Err("staged with the server gone".into()),
                Err(e) => e,
            };
            let took = started.elapsed();
            if took > MOUNT + Duration::from_secs(3) {
                return Err(format!("gave up after {took:?}"));
            }
            let code = tonic::Status::from(err).code();
            if !matches!(
                code,
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            ) {
                return Err(format!("code {code:?}"));
            }
            if mounted(staging) {
                return Err("a mount was left".into());
            }
            link(true)?;
            Ok(())
        },
    )?;
    println!("NODE-CHECK-DONE");
    Ok(())
}

/// Takes the guest's only link to the server down or up.
fn link(up: bool) -> Result<(), String> {
    let state = if up { "up" } else { "down" };
    let ok = Command::new("ip")
        .args(["link", "set", "eth0", state])
        .status()
        .is_ok_and(|s| s.success());
    if up {
        let _ = Command::new("ip")
            .args(["route", "add", "default", "via", "10.0.2.2"])
            .status();
    }
    ok.then_some(())
        .ok_or_else(|| format!("ip link set eth0 {state} failed"))
}
