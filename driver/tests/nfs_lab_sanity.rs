//! The official csi-sanity against `backend: nfs`, node side included: this host's kernel
//! has no NFS client, so `warren all` and csi-sanity run inside a kernel-lab guest
//! (lab/run-guest.sh: QEMU/TCG, Debian's 6.1 kernel with its nfs modules), against
//! NFS-Ganesha running on the host in its own network namespace, where the whole guest
//! runs (the guest's gateway 10.0.2.2 is that namespace's loopback).
//!
//! One boot runs the suite twice, with `nfsVersion: "4.1"` and `nfsVersion: "3"`: the
//! controller makes, copies and removes directories over NFSv3 from user space through the
//! server's portmapper; the node mounts with the guest kernel's client using exactly the
//! options Warren builds. After both runs no NFS mount may be left in the guest.
//!
//! Skipped with the reason when Ganesha, csi-sanity or the lab is missing, unless
//! WARREN_REQUIRE_GANESHA=1 / WARREN_REQUIRE_SANITY=1 / WARREN_REQUIRE_KERNEL_LAB=1.

#[path = "../../nfs/tests/common/mod.rs"]
mod ganesha;
#[path = "../../nfs/tests/common/lab.rs"]
mod lab;

use std::process::Command;
use std::time::Instant;

use ganesha::{Pseudo, Server};
use warren_test_support::skip;

const VERSIONS: [&str; 2] = ["4.1", "3"];

/// The guest's script: for each version, start `warren all`, run csi-sanity against it,
/// print the summary and the exit code, stop Warren.
fn guest_script() -> String {
    let mut script = String::from(
        "mkdir -p /var/lib/kubelet/pods /var/lib/kubelet/plugins /var/lib/warren\n\
         rc=0\n",
    );
    for v in VERSIONS {
        script.push_str(&format!(
            "/opt/w/warren all --endpoint unix:///run/csi-{v}.sock --node-id lab-node \
               --state-dir /var/lib/warren/state-{v} --storage-root /var/lib/warren/storage-{v} \
               --kubelet-dir /var/lib/kubelet --nfs-timeout 30 --nfs-mount-timeout 60 \
               >/tmp/warren-{v}.log 2>&1 &\n\
             pid=$!\n\
             i=0; while [ ! -S /run/csi-{v}.sock ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n\
             /opt/w/csi-sanity --csi.endpoint=/run/csi-{v}.sock \
               --csi.mountdir=/var/lib/kubelet/pods/target-{v} \
               --csi.stagingdir=/var/lib/kubelet/plugins/staging-{v} \
               --csi.testvolumeparameters=/opt/w/params-{v}.yaml \
               --csi.testvolumesize=67108864 --csi.testvolumeexpandsize=134217728 \
               --ginkgo.no-color --ginkgo.timeout=20m >/tmp/sanity-{v}.out 2>&1\n\
             r=$?\n\
             grep -E '^Ran |Passed \\||\\[FAIL\\]' /tmp/sanity-{v}.out | sed 's/^/SANITY-{v}: /'\n\
             echo \"SANITY-RC-{v}=$r\"\n\
             if [ $r != 0 ]; then rc=1; tail -80 /tmp/sanity-{v}.out; tail -40 /tmp/warren-{v}.log; fi\n\
             kill $pid; wait $pid\n"
        ));
    }
    script.push_str(
        "if grep ' nfs' /proc/mounts; then echo LEFT-MOUNTS; rc=1; fi\n\
         echo NFS-SANITY-DONE rc=$rc\n\
         exit $rc\n",
    );
    script
}

#[test]
fn csi_sanity_with_nfs_volumes_in_a_kernel_lab_guest() {
    if !ganesha::can_run() {
        return;
    }
    let Some(sanity) = warren_sanity_tests::csi_sanity() else {
        return skip(
            "WARREN_REQUIRE_SANITY",
            "csi-sanity is not installed (see .ci/run)",
        );
    };
    if !lab::available() {
        return;
    }
    // NFSv4 clients need the export where v3's MOUNT finds it (one `share` for both), and
    // at port 2049 (csi-sanity passes no mount options, so no `port=`).
    let server = Server::start_with(Pseudo::SameAsPath, 2049);
    server.wait_ready();
    let share = server.export.path().display().to_string();

    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    // The debug binary without its debug sections: a tenth of the size in the guest's RAM.
    let warren = work.path().join("warren");
    let stripped = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(env!("CARGO_BIN_EXE_warren"))
        .arg(&warren)
        .status()
        .expect("objcopy (binutils)");
    assert!(stripped.success(), "objcopy --strip-debug failed");
    let mut copies = vec![
        format!("{}:/opt/w/warren", warren.display()),
        format!("{}:/opt/w/csi-sanity", sanity.display()),
    ];
    for v in VERSIONS {
        let params = work.path().join(format!("params-{v}.yaml"));
        std::fs::write(
            &params,
            format!("backend: nfs\nserver: 10.0.2.2\nshare: {share}\nnfsVersion: \"{v}\"\n"),
        )
        .unwrap();
        copies.push(format!("{}:/opt/w/params-{v}.yaml", params.display()));
    }
    let script = work.path().join("script.sh");
    std::fs::write(&script, guest_script()).unwrap();
    let log = work.path().join("console.log");

    let started = Instant::now();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &server.netns])
        .arg(lab::run_guest())
        .args(["--kernel", "6.1", "--net", "user", "--mem", "1024"])
        .args(["--modules", "nfs nfsv3 nfsv4"])
        .arg("--script")
        .arg(&script)
        .args(["--timeout", "1500"])
        .arg("--log")
        .arg(&log);
    for c in &copies {
        cmd.arg("--copy").arg(c);
    }
    let status = cmd.status().expect("run-guest.sh");
    let console = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .replace('\r', "");
    let summary: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("SANITY-"))
        .collect();
    eprintln!(
        "nfs csi-sanity in the lab ({:.0?}):\n  {}",
        started.elapsed(),
        summary.join("\n  ")
    );
    assert!(
        status.success() && console.contains("NFS-SANITY-DONE rc=0"),
        "csi-sanity with NFS volumes failed in the guest ({status}); console:\n{console}\nGanesha:\n{}",
        server.log()
    );
    for v in VERSIONS {
        assert!(console.contains(&format!("SANITY-RC-{v}=0")), "{v}");
        // It really ran the suite: at least the specs the local cells run without snapshots.
        let ran = console
            .lines()
            .find_map(|l| l.strip_prefix(&format!("SANITY-{v}: Ran ")))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0);
        assert!(ran >= 60, "nfsVersion {v}: csi-sanity ran {ran} specs");
    }
}
