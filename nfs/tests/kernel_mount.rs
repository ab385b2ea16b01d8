//! The node's NFS mounts with a real kernel client: this host's kernel has no NFS client,
//! so a QEMU/TCG guest of the kernel lab (lab/run-guest.sh, Debian's 6.1 kernel with the
//! nfs modules) mounts NFS-Ganesha (see `common`) with exactly the source and options
//! `mount_options::mount_request` builds, over NFSv3 and NFSv4.1, writes through each
//! mount, and unmounts; the host then reads what the guest wrote on the export itself.
//! The whole guest runs inside Ganesha's network namespace, so the guest's gateway
//! 10.0.2.2 is that namespace's loopback.
//!
//! Skipped with the reason when Ganesha or the lab is missing, unless
//! WARREN_REQUIRE_GANESHA=1 / WARREN_REQUIRE_KERNEL_LAB=1.

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{block_on, options, Server, MOUNT_PORT, NFS_PORT};
use warren_nfs::dirops::Export;
use warren_nfs::mount_options::mount_request;
use warren_nfs::params::{NfsParams, NfsVersion, OnDelete};

/// The host as the guest sees it (QEMU user networking).
const GUEST_GATEWAY: &str = "10.0.2.2";

fn lab_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../lab")
}

fn lab_missing() -> Option<String> {
    if !lab_dir().join("run-guest.sh").is_file() {
        return Some("lab/run-guest.sh is missing".into());
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("qemu-system-x86_64 is not installed (run lab/install.sh)".into());
    }
    let has_61 = std::fs::read_dir("/boot").is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("vmlinuz-6.1.") && name.ends_with("-cloud-amd64")
        })
    });
    (!has_61).then(|| "no 6.1 cloud kernel in /boot (run lab/install.sh)".into())
}

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
    if let Some(why) = lab_missing() {
        if std::env::var("WARREN_REQUIRE_KERNEL_LAB").as_deref() == Ok("1") {
            panic!("kernel lab required (WARREN_REQUIRE_KERNEL_LAB=1) but unavailable: {why}");
        }
        eprintln!("SKIPPED: {why}");
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

    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        script.path(),
        format!(
            "set -e\n\
             mkdir -p /m3 /m41\n\
             mount -t {fs} -o '{d3}' '{s3}' /m3\n\
             echo written-over-v3 > /m3/file\n\
             grep -q ' /m3 nfs ' /proc/mounts\n\
             umount /m3\n\
             mount -t {fs} -o '{d41}' '{s41}' /m41\n\
             echo written-over-v4.1 > /m41/file\n\
             grep ' /m41 nfs4 ' /proc/mounts\n\
             umount /m41\n\
             echo NFS-MOUNTS-DONE\n",
            fs = v3.fs_type,
            d3 = v3.data,
            s3 = v3.source,
            d41 = v41.data,
            s41 = v41.source,
        ),
    )
    .unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();
    let status = Command::new("ip")
        .args(["netns", "exec", &server.netns])
        .arg(lab_dir().join("run-guest.sh"))
        .args([
            "--kernel",
            "6.1",
            "--net",
            "user",
            "--modules",
            "nfs nfsv3 nfsv4",
        ])
        .arg("--script")
        .arg(script.path())
        .args(["--timeout", "300"])
        .arg("--log")
        .arg(log.path())
        .status()
        .expect("run-guest.sh");
    let console = std::fs::read_to_string(log.path()).unwrap_or_default();
    eprintln!("kernel_mount: guest ran {:.0?}", started.elapsed());
    assert!(
        status.success() && console.contains("NFS-MOUNTS-DONE"),
        "guest failed ({status}); v3 {v3:?}; v4.1 {v41:?}; console:\n{console}\nGanesha:\n{}",
        server.log()
    );
    assert_eq!(
        std::fs::read_to_string(server.path("pvc-v3/file")).unwrap(),
        "written-over-v3\n"
    );
    assert_eq!(
        std::fs::read_to_string(server.path("pvc-v41/file")).unwrap(),
        "written-over-v4.1\n"
    );
}
