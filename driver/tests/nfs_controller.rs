//! `backend: nfs` through the real binary's Controller service, against a real NFS server:
//! NFS-Ganesha (Debian's) in its own network namespace, with `warren all` started inside
//! that namespace, finding the server's ports through its portmapper (rpcbind) as it
//! would in a cluster. The controller speaks NFSv3 from user space; what it did is checked
//! on the export's directory itself.
//!
//! The node side (kernel mounts) needs an NFS client, which this host kernel lacks: it is
//! tested in the kernel lab (nfs_lab_sanity.rs and nfs/tests/kernel_mount.rs).
//!
//! Skipped with the reason when Ganesha is missing, unless WARREN_REQUIRE_GANESHA=1.

mod common;
#[path = "../../nfs/tests/common/mod.rs"]
mod ganesha;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{create_request, Warren, MIB};
use csi_proto::v1::volume_capability::{access_mode::Mode, AccessMode, AccessType, BlockVolume};
use csi_proto::v1::*;
use ganesha::Server;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tonic::Code;

fn nfs_request(name: &str, share: &str, extra: &[(&str, &str)], mode: Mode) -> CreateVolumeRequest {
    let mut req = create_request(name, 100 * MIB);
    req.parameters = HashMap::from([
        ("backend".to_string(), "nfs".to_string()),
        ("server".to_string(), "127.0.0.1".to_string()),
        ("share".to_string(), share.to_string()),
    ]);
    for (k, v) in extra {
        req.parameters.insert(k.to_string(), v.to_string());
    }
    req.volume_capabilities[0].access_mode = Some(AccessMode { mode: mode as i32 });
    req
}

fn start() -> Option<(Server, Warren)> {
    if !ganesha::can_run() {
        return None;
    }
    let server = Server::start();
    server.wait_ready();
    let launcher = ["ip", "netns", "exec", &server.netns]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let warren = Warren::start_with(
        Warren::dirs(),
        launcher,
        vec!["--nfs-timeout=3".into(), "--nfs-copy-timeout=20".into()],
    );
    Some((server, warren))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_snapshots_restores_and_clones_are_directories_on_the_server() {
    let Some((server, warren)) = start() else {
        return;
    };
    let share = server.export.path().display().to_string();
    let mut ctl = warren.controller().await;

    // A ReadWriteMany volume with a mode: a directory on the export.
    let req = nfs_request(
        "pvc-a",
        &share,
        &[("mountPermissions", "0775")],
        Mode::MultiNodeMultiWriter,
    );
    let volume = ctl
        .create_volume(req.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", warren.log()))
        .into_inner()
        .volume
        .unwrap();
    assert!(volume.volume_id.starts_with("nfs#127.0.0.1#"));
    assert!(
        volume.accessible_topology.is_empty(),
        "reachable everywhere"
    );
    assert_eq!(volume.volume_context.get("nfsVersion").unwrap(), "4.1");
    let dir = server.path("pvc-a");
    assert!(dir.is_dir());
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777,
        0o775
    );

    // Idempotent by name; another size under the same name, or another name on the same
    // sub-directory, is refused.
    let again = ctl.create_volume(req.clone()).await.unwrap().into_inner();
    assert_eq!(again.volume.unwrap().volume_id, volume.volume_id);
    let mut bigger = req.clone();
    bigger.capacity_range.as_mut().unwrap().required_bytes = 200 * MIB;
    let err = ctl.create_volume(bigger).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    let same_dir = nfs_request(
        "pvc-other",
        &share,
        &[("subDir", "pvc-a")],
        Mode::SingleNodeWriter,
    );
    let err = ctl.create_volume(same_dir).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    assert!(err.message().contains("pvc-a"), "{err}");

    // Raw block cannot be NFS.
    let mut block = nfs_request("pvc-block", &share, &[], Mode::SingleNodeWriter);
    block.volume_capabilities[0].access_type = Some(AccessType::Block(BlockVolume {}));
    let err = ctl.create_volume(block).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(!server.path("pvc-block").exists());

    // Data written "by a pod" (on the export), then a snapshot: a copy in
    // .warren-snapshots/<key>, independent of the volume.
    std::fs::write(dir.join("data.txt"), "first").unwrap();
    let snapshot = ctl
        .create_snapshot(CreateSnapshotRequest {
            source_volume_id: volume.volume_id.clone(),
            name: "snap-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", warren.log()))
        .into_inner()
        .snapshot
        .unwrap();
    assert!(snapshot.ready_to_use);
    assert!(snapshot.snapshot_id.starts_with("nfssnap#"));
    let key = snapshot.snapshot_id.rsplit('#').next().unwrap();
    let snap_dir = server.path(&format!(".warren-snapshots/{key}"));
    assert_eq!(
        std::fs::read_to_string(snap_dir.join("data.txt")).unwrap(),
        "first"
    );
    std::fs::write(dir.join("data.txt"), "changed after the snapshot").unwrap();
    let listed = ctl
        .list_snapshots(ListSnapshotsRequest {
            source_volume_id: volume.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1);

    // Restore: a new volume with the snapshot's data; clone: with the volume's data now.
    let mut restore = nfs_request("pvc-restored", &share, &[], Mode::SingleNodeWriter);
    restore.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: snapshot.snapshot_id.clone(),
            },
        )),
    });
    ctl.create_volume(restore)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", warren.log()));
    assert_eq!(
        std::fs::read_to_string(server.path("pvc-restored/data.txt")).unwrap(),
        "first"
    );
    let mut clone = nfs_request("pvc-clone", &share, &[], Mode::SingleNodeWriter);
    clone.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(
            volume_content_source::VolumeSource {
                volume_id: volume.volume_id.clone(),
            },
        )),
    });
    let cloned = ctl
        .create_volume(clone)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(server.path("pvc-clone/data.txt")).unwrap(),
        "changed after the snapshot"
    );

    // Expansion is recorded (plain NFS enforces no size) and needs no node step.
    let expanded = ctl
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: volume.volume_id.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: 300 * MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(expanded.capacity_bytes, 300 * MIB);
    assert!(!expanded.node_expansion_required);

    // Listed with the local volumes; GetCapacity asks the server.
    let ids: Vec<String> = ctl
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .filter_map(|e| e.volume.map(|v| v.volume_id))
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(ids.contains(&volume.volume_id) && ids.contains(&cloned.volume_id));
    let capacity = ctl
        .get_capacity(GetCapacityRequest {
            parameters: req.parameters.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(capacity.available_capacity > 0);

    // Delete: the snapshot's copy goes; the volume's directory goes; a second delete is fine.
    ctl.delete_snapshot(DeleteSnapshotRequest {
        snapshot_id: snapshot.snapshot_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!snap_dir.exists());
    for _ in 0..2 {
        ctl.delete_volume(DeleteVolumeRequest {
            volume_id: volume.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert!(!dir.exists());
    assert!(
        server.path("pvc-clone").is_dir(),
        "the clone is its own copy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_delete_archive_and_retain_keep_the_data() {
    let Some((server, warren)) = start() else {
        return;
    };
    let share = server.export.path().display().to_string();
    let mut ctl = warren.controller().await;
    for (name, on_delete) in [("pvc-archive", "archive"), ("pvc-retain", "retain")] {
        let v = ctl
            .create_volume(nfs_request(
                name,
                &share,
                &[
                    ("onDelete", on_delete),
                    ("subDir", "team/${pvc.metadata.name}"),
                    ("csi.storage.k8s.io/pvc/name", name),
                ],
                Mode::MultiNodeReaderOnly,
            ))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", warren.log()))
            .into_inner()
            .volume
            .unwrap();
        std::fs::write(server.path(&format!("team/{name}/keep")), on_delete).unwrap();
        ctl.delete_volume(DeleteVolumeRequest {
            volume_id: v.volume_id,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(server.path("team/archived-pvc-archive/keep")).unwrap(),
        "archive"
    );
    assert!(!server.path("team/pvc-archive").exists());
    assert_eq!(
        std::fs::read_to_string(server.path("team/pvc-retain/keep")).unwrap(),
        "retain"
    );
    // Forged or malformed IDs name nothing: NOT_FOUND, or success for a delete, and
    // nothing on the server changes.
    let err = ctl
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: "nfs#127.0.0.1#/srv#../etc#delete".into(),
            capacity_range: Some(CapacityRange {
                required_bytes: MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: format!("nfs#127.0.0.1#{share}#team/../..#delete"),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(server.path("team/pvc-retain/keep").exists());
}

/// A server that stops answering (SIGSTOP: connections accepted by the kernel, never
/// answered) fails CreateVolume with UNAVAILABLE at the --nfs-timeout deadline, leaves no
/// volume listed, and the CO's retry finishes the volume once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_fails_create_at_the_deadline_and_the_retry_finishes_it() {
    let Some((server, warren)) = start() else {
        return;
    };
    let share = server.export.path().display().to_string();
    let mut ctl = warren.controller().await;
    let ganesha = Pid::from_raw(server.ganesha_pid() as i32);
    kill(ganesha, Signal::SIGSTOP).unwrap();
    let req = nfs_request("pvc-late", &share, &[], Mode::MultiNodeMultiWriter);
    let started = Instant::now();
    let result = ctl.create_volume(req.clone()).await;
    let took = started.elapsed();
    kill(ganesha, Signal::SIGCONT).unwrap();
    let err = result.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(10),
        "gave up after {took:?}, deadline 3 s: {err}"
    );
    let listed = ctl
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.entries.is_empty(), "{:?}", listed.entries);
    let volume = ctl
        .create_volume(req)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", warren.log()))
        .into_inner()
        .volume
        .unwrap();
    assert!(server.path("pvc-late").is_dir());
    eprintln!(
        "silent server: UNAVAILABLE after {took:?}; retry made {}",
        volume.volume_id
    );
}
