//! The node's NFS work in the failures it must survive, with a real kernel client: this
//! host's kernel has none, so a kernel-lab guest (lab/run-guest.sh, Debian's 6.1 kernel)
//! runs the `nfs_node_check` example against NFS-Ganesha on the host (in its own network
//! namespace, where the whole guest runs: the guest's 10.0.2.2 is that namespace's
//! loopback), once over NFSv4.1 and once over NFSv3:
//! stage/publish/stats; a stale file handle reported and recovered by a retried publish;
//! the server gone while mounted (stats abnormal within its deadline, unmounts that do not
//! hang, nothing left); the server gone at stage (given up at the deadline, nothing left).
//!
//! Skipped with the reason when Ganesha or the lab is missing, unless
//! WARREN_REQUIRE_GANESHA=1 / WARREN_REQUIRE_KERNEL_LAB=1.

#[path = "../../nfs/tests/common/mod.rs"]
mod ganesha;
#[path = "../../nfs/tests/common/lab.rs"]
mod lab;

use std::process::Command;
use std::time::Instant;

use ganesha::{Pseudo, Server};

#[test]
fn stale_handles_and_lost_servers_in_a_kernel_lab_guest() {
    if !ganesha::can_run() {
        return;
    }
    if !lab::available() {
        return;
    }
    let binary = lab::example("warren-node", "nfs_node_check");
    let server = Server::start_with(Pseudo::SameAsPath, 2049);
    server.wait_ready();
    let share = server.export.path().display().to_string();
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let script = work.path().join("script.sh");
    // Each version in its own boot would cost twice the boot; one boot, the link brought
    // back up by the check itself between the versions.
    std::fs::write(
        &script,
        format!(
            "rc=0\n\
             for v in 4.1 3; do echo \"== nfsVersion $v\"; ip link set eth0 up; ip route add default via 10.0.2.2 2>/dev/null; /opt/w/nfs_node_check 10.0.2.2 {share} $v || rc=1; done\n\
             if grep ' nfs' /proc/mounts; then echo LEFT-MOUNTS; rc=1; fi\n\
             echo NODE-LAB-DONE rc=$rc\nexit $rc\n"
        ),
    )
    .unwrap();
    let log = work.path().join("console.log");
    let started = Instant::now();
    let status = Command::new("ip")
        .args(["netns", "exec", &server.netns])
        .arg(lab::run_guest())
        .args([
            "--kernel",
            "6.1",
            "--net",
            "user",
            "--modules",
            "nfs nfsv3 nfsv4",
        ])
        .arg("--copy")
        .arg(format!("{}:/opt/w/nfs_node_check", binary.display()))
        .arg("--script")
        .arg(&script)
        .args(["--timeout", "600"])
        .arg("--log")
        .arg(&log)
        .status()
        .expect("run-guest.sh");
    let console = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .replace('\r', "");
    let results: Vec<&str> = console
        .lines()
        .filter(|l| {
            l.starts_with("PASS ")
                || l.starts_with("FAIL ")
                || l.starts_with("  ")
                || l.starts_with("==")
        })
        .collect();
    eprintln!(
        "nfs node checks in the lab ({:.0?}):\n{}",
        started.elapsed(),
        results.join("\n")
    );
    assert!(
        status.success() && console.contains("NODE-LAB-DONE rc=0"),
        "guest failed ({status}); console:\n{console}\nGanesha:\n{}",
        server.log()
    );
    assert_eq!(
        results.iter().filter(|l| l.starts_with("PASS ")).count(),
        8,
        "four steps for each of two versions"
    );
}
