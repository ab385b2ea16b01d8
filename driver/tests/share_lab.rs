//! `backend: share` across two nodes, through the real binaries: node A is `warren all`
//! on this host, serving its shared volume from its built-in NFS server; node B is
//! `warren all` inside a kernel-lab guest (this host's kernel has no NFS client), which
//! stages and publishes the volume as the kubelet would (the `csi_node` example) and so
//! mounts it over NFS from node A. Checked:
//! - node B reads what a pod on node A wrote, and node A reads what node B wrote;
//! - node B cannot write past the volume's size: ENOSPC at the volume's capacity, not the
//!   host's;
//! - node B's unpublish and unstage leave no mount;
//! - after `kill -9` and a restart, node A serves the volume again (its MOUNT answers);
//! - deleting the volume stops serving it.
//!
//! Skipped with the reason when the lab is missing, unless WARREN_REQUIRE_KERNEL_LAB=1.

mod common;
#[path = "../../nfs/tests/common/lab.rs"]
mod lab;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use common::{create_request, Warren, MIB};
use csi_proto::v1::volume_capability::{access_mode::Mode, AccessMode};
use csi_proto::v1::*;
use warren_nfs::dirops::{Export, ExportOptions};

const GUEST_GATEWAY: &str = "10.0.2.2";

/// node A's share answers MOUNT of the volume's key (and finds `name` in it).
fn share_has(port: u16, key: &str, name: &str) -> Result<bool, String> {
    let export = Export::new(
        "127.0.0.1",
        &format!("/{key}"),
        ExportOptions {
            deadline: Duration::from_secs(10),
            privileged_port: false,
            mount_port: Some(port),
            nfs_port: Some(port),
            ..Default::default()
        },
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(export.exists(name))
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_volume_is_used_from_another_node_with_its_size_enforced() {
    if !lab::available() {
        return;
    }
    let client = lab::example("warren", "csi_node");
    // The guest reaches this host's loopback as 10.0.2.2: that is what node A advertises.
    // A fixed port, as in a cluster: clients keep it across a restart.
    let share_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut warren = Warren::start_with(
        Warren::dirs(),
        vec![],
        vec![
            format!("--share-listen=127.0.0.1:{share_port}"),
            format!("--share-address={GUEST_GATEWAY}"),
        ],
    );
    let mut ctl = warren.controller().await;
    let mut req = create_request("pvc-shared", 64 * MIB);
    req.parameters = HashMap::from([("backend".to_string(), "share".to_string())]);
    req.volume_capabilities[0].access_mode = Some(AccessMode {
        mode: Mode::MultiNodeMultiWriter as i32,
    });
    let volume = ctl
        .create_volume(req)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", warren.log()))
        .into_inner()
        .volume
        .unwrap();
    assert!(volume.accessible_topology.is_empty());
    let endpoint = volume
        .volume_context
        .get("warren.csi.dev/share")
        .expect("the share endpoint in the volume context")
        .clone();
    let port: u16 = endpoint.rsplit_once(':').unwrap().1.parse().unwrap();
    assert_eq!(port, share_port);
    assert!(endpoint.starts_with(GUEST_GATEWAY), "{endpoint}");
    let key = volume.volume_id.rsplit('#').next().unwrap().to_string();

    // A pod on node A (this host) writes first.
    let kubelet = warren.kubelet();
    let (staging, target) = (
        kubelet.join("plugins/a/staging"),
        kubelet.join("pods/a/target"),
    );
    let mut node = warren.node().await;
    let mut cap = req_cap();
    cap.access_mode = Some(AccessMode {
        mode: Mode::MultiNodeMultiWriter as i32,
    });
    node.node_stage_volume(NodeStageVolumeRequest {
        volume_id: volume.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(cap.clone()),
        volume_context: volume.volume_context.clone(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", warren.log()));
    node.node_publish_volume(NodePublishVolumeRequest {
        volume_id: volume.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(cap),
        volume_context: volume.volume_context.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    std::fs::write(target.join("from-a"), "written on node a").unwrap();

    // Node B, in the guest.
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let warren_b = work.path().join("warren");
    assert!(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(env!("CARGO_BIN_EXE_warren"))
        .arg(&warren_b)
        .status()
        .unwrap()
        .success());
    let context = format!("warren.csi.dev/share={endpoint}");
    let script = work.path().join("script.sh");
    std::fs::write(
        &script,
        format!(
            "K=/var/lib/kubelet; S=$K/plugins/b/staging; T=$K/pods/b/target; V='{id}'\n\
             mkdir -p $K /var/lib/warren\n\
             /opt/w/warren all --endpoint unix:///run/csi.sock --node-id node-b \
               --state-dir /var/lib/warren/state --storage-root /var/lib/warren/storage \
               --kubelet-dir $K >/tmp/warren.log 2>&1 &\n\
             i=0; while [ ! -S /run/csi.sock ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n\
             /opt/w/csi_node /run/csi.sock publish \"$V\" $S $T '{context}' || {{ tail -30 /tmp/warren.log; exit 1; }}\n\
             grep \" $T \" /proc/mounts | sed 's/^/MOUNT: /'\n\
             echo \"READ: $(cat $T/from-a)\"\n\
             echo 'written on node b' > $T/from-b && sync && echo WROTE-B\n\
             if dd if=/dev/zero of=$T/fill bs=1M count=100 conv=fsync 2>/tmp/dd.err; then echo FILL-SUCCEEDED; \
             else echo \"FILL-REFUSED: $(tail -1 /tmp/dd.err)\"; fi\n\
             echo \"FILLED-MIB: $(( $(du -k $T/fill | cut -f1) / 1024 ))\"\n\
             rm -f $T/fill\n\
             /opt/w/csi_node /run/csi.sock unpublish \"$V\" $S $T || exit 1\n\
             if grep ' nfs' /proc/mounts; then echo LEFT-MOUNTS; exit 1; fi\n\
             echo SHARE-GUEST-DONE\n",
            id = volume.volume_id,
        ),
    )
    .unwrap();
    let log = work.path().join("console.log");
    let status = Command::new(lab::run_guest())
        .args(["--kernel", "6.1", "--net", "user", "--mem", "768"])
        .args(["--modules", "nfs nfsv3"])
        .arg("--copy")
        .arg(format!("{}:/opt/w/warren", warren_b.display()))
        .arg("--copy")
        .arg(format!("{}:/opt/w/csi_node", client.display()))
        .arg("--script")
        .arg(&script)
        .args(["--timeout", "600", "--log"])
        .arg(&log)
        .status()
        .expect("run-guest.sh");
    let console = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .replace('\r', "");
    let lines: Vec<&str> = console
        .lines()
        .filter(|l| {
            [
                "MOUNT:", "READ:", "WROTE", "FILL", "LEFT", "SHARE-", "ERROR",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .collect();
    eprintln!("share, node b in the lab:\n  {}", lines.join("\n  "));
    assert!(
        status.success() && console.contains("SHARE-GUEST-DONE"),
        "guest failed ({status}):\n{console}\nnode a:\n{}",
        warren.log()
    );
    assert!(console.contains(&format!("MOUNT: {GUEST_GATEWAY}:/{key} ")));
    assert!(console.contains("READ: written on node a"));
    assert!(console.contains("FILL-REFUSED"), "wrote past the size");
    let filled: u64 = console
        .lines()
        .find_map(|l| l.strip_prefix("FILLED-MIB: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("FILLED-MIB");
    // What the server stored for the file (du: the blocks it reports, not the size the
    // client's write-behind may have extended before the error came back) stays within
    // the volume's size; without enforcement it would be 100.
    assert!(filled <= 64, "{filled} MiB stored in a 64 MiB volume");
    assert_eq!(
        std::fs::read_to_string(target.join("from-b")).unwrap(),
        "written on node b\n"
    );

    // kill -9 and restart: the volume is served again.
    warren.kill9();
    warren.spawn();
    let restarted = tokio::task::spawn_blocking({
        let key = key.clone();
        move || {
            let started = std::time::Instant::now();
            loop {
                match share_has(port, &key, "from-b") {
                    Ok(found) => return Ok(found),
                    Err(e) if started.elapsed() > Duration::from_secs(20) => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(restarted, Ok(true), "{}", warren.log());

    // Delete (after this node's pod is gone): no longer served.
    let mut node = warren.node().await;
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: volume.volume_id.clone(),
        target_path: target.display().to_string(),
    })
    .await
    .unwrap();
    node.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: volume.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
    })
    .await
    .unwrap();
    let mut ctl = warren.controller().await;
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: volume.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", warren.log()));
    let gone = tokio::task::spawn_blocking(move || share_has(port, &key, "from-b"))
        .await
        .unwrap();
    assert!(gone.is_err(), "still served after delete: {gone:?}");
}

fn req_cap() -> VolumeCapability {
    common::mount_cap()
}
