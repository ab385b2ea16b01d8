//! The node's NFS mounts with a real kernel client: this host's kernel has no NFS client,
//! so a QEMU/TCG guest of the kernel lab (lab/run-guest.sh, Debian's 6.1 kernel with the
//! nfs modules) runs the `mount_check` example, which mounts through `warren_nfs::mount`
//! with exactly the source and options `mount_options::mount_request` builds:
//! - NFS-Ganesha (see `common`) over NFSv3 and NFSv4.1: mounted, written, unmounted
//!   cleanly; the host then reads what the guest wrote on the export itself;
//! - a server that accepts connections and never answers: the mount gives up at its
//!   deadline and leaves no mount behind;
//! - a port where nothing listens: refused at once, UNAVAILABLE, no mount left.
//!
//! The whole guest runs inside Ganesha's network namespace, so the guest's gateway
//! 10.0.2.2 is that namespace's loopback.
//!
//! Skipped with the reason when Ganesha or the lab is missing, unless
//! WARREN_REQUIRE_GANESHA=1 / WARREN_REQUIRE_KERNEL_LAB=1.

mod common;
#[path = "common/lab.rs"]
mod lab;

use std::net::IpAddr;
use std::process::Command;
use std::time::Instant;

use common::{block_on, options, Server, MOUNT_PORT, NFS_PORT};
use warren_nfs::dirops::Export;
use warren_nfs::mount_options::mount_request;
use warren_nfs::params::{NfsParams, NfsVersion, OnDelete};

/// The host as the guest sees it (QEMU user networking).
const GUEST_GATEWAY: &str = "10.0.2.2";

fn params(share: &str, sub_dir: &str, version: NfsVersion) -> NfsParams {
    NfsParams {
        server: GUEST_GATEWAY.into(),
        share: share.into(),
        sub_dir: sub_dir.into(),
        on_delete: OnDelete::Delete,
        version,
        mount_permissions: None,
    }
}

#[test]
fn a_kernel_client_mounts_what_the_node_would_ask_for() {
    if !common::can_run() {
        return;
    }
    if !lab::available() {
        return;
    }
    let server = Server::start();
    server.wait_ready();
    let share = server.export.path().display().to_string();
    // The volumes' directories, made the controller's way.
    let s = share.clone();
    server.client(move || {
        let export = Export::new("127.0.0.1", &s, options());
        block_on(export.make_dir("pvc-v3", Some(0o777))).unwrap();
        block_on(export.make_dir("pvc-v41", Some(0o777))).unwrap();
    });

    let gateway: IpAddr = GUEST_GATEWAY.parse().unwrap();
    let ports = [
        format!("port={NFS_PORT}"),
        format!("mountport={MOUNT_PORT}"),
    ];
    let v3 = mount_request(
        &params(&share, "pvc-v3", NfsVersion::V3),
        gateway,
        &ports,
        false,
    )
    .unwrap();
    // NFSv4 sees Ganesha's pseudo file system, where the export is /export.
    let v41 = mount_request(
        &params("/export", "pvc-v41", NfsVersion::V4_1),
        gateway,
        &[format!("port={NFS_PORT}"), "hard".into()],
        false,
    )
    .unwrap();

    // A server that accepts and never answers, and a port where nothing listens.
    let silent_port = 20999u16;
    let netns = format!("/run/netns/{}", server.netns);
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&netns).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let listener = std::net::TcpListener::bind(("0.0.0.0", silent_port)).unwrap();
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept() {
            held.push(conn);
        }
    });
    let silent = mount_request(
        &params("/export", "x", NfsVersion::V4_1),
        gateway,
        &[format!("port={silent_port}"), "hard".into()],
        false,
    )
    .unwrap();
    let refused = mount_request(
        &params("/export", "x", NfsVersion::V4_1),
        gateway,
        &["port=20998".into(), "soft".into(), "retrans=1".into()],
        false,
    )
    .unwrap();

    let binary = lab::example("warren-nfs", "mount_check");
    let script = tempfile::NamedTempFile::new().unwrap();
    let run = |name: &str, expect: &str, r: &warren_nfs::mount_options::MountRequest, ms: u32| {
        format!(
            "/opt/mc/mount_check {name} {expect} '{}' '{}' {ms} || rc=1\n",
            r.source, r.data
        )
    };
    let text = format!(
        "rc=0\n{}{}{}{}\
         grep ' nfs' /proc/mounts && rc=1\n\
         echo NFS-MOUNTS-DONE rc=$rc\n\
         exit $rc\n",
        run("v3", "ok", &v3, 20_000),
        run("v41", "ok", &v41, 20_000),
        run("silent-server", "timeout", &silent, 3_000),
        run("nothing-listening", "refused", &refused, 20_000),
    );
    std::fs::write(script.path(), text).unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
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
        .arg(format!("{}:/opt/mc/mount_check", binary.display()))
        .arg("--script")
        .arg(script.path())
        .args(["--timeout", "300"])
        .arg("--log")
        .arg(log.path())
        .status()
        .expect("run-guest.sh");
    let console = std::fs::read_to_string(log.path())
        .unwrap_or_default()
        .replace('\r', "");
    let results: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("PASS ") || l.starts_with("FAIL "))
        .collect();
    eprintln!(
        "kernel_mount: guest ran {:.0?}:\n  {}",
        started.elapsed(),
        results.join("\n  ")
    );
    assert!(
        status.success() && console.contains("NFS-MOUNTS-DONE rc=0"),
        "guest failed ({status}); v3 {v3:?}; v4.1 {v41:?}; console:\n{console}\nGanesha:\n{}",
        server.log()
    );
    assert_eq!(results.iter().filter(|l| l.starts_with("PASS ")).count(), 4);
    let read =
        |sub: &str| std::fs::read_to_string(server.path(&format!("{sub}/written-by-the-guest")));
    assert_eq!(read("pvc-v3").unwrap(), "through warren_nfs::mount");
    assert_eq!(read("pvc-v41").unwrap(), "through warren_nfs::mount");
}
