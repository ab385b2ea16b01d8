//! Bad requests get the CSI spec's code and change nothing on disk.

mod common;

use common::*;
use csi_proto::v1::volume_capability::{access_mode::Mode, AccessMode, AccessType, BlockVolume};
use csi_proto::v1::*;
use tonic::Code;

#[tokio::test]
async fn bad_create_requests_are_refused_and_change_nothing() {
    let w = Warren::start();
    let mut c = w.controller().await;
    let before = (tree(&w.storage()), tree(&w.dir.path().join("state")));

    let mut cases: Vec<(&str, CreateVolumeRequest, Code)> = Vec::new();
    for name in [
        "",
        "a/b",
        "..",
        "../../etc/passwd",
        "nul\0byte",
        &"x".repeat(300),
    ] {
        cases.push((
            "name",
            create_request(name, 32 * MIB),
            Code::InvalidArgument,
        ));
    }
    let mut r = create_request("pvc-params", 32 * MIB);
    r.parameters.insert("layuot".into(), "dir".into());
    cases.push(("unknown parameter", r, Code::InvalidArgument));
    let mut r = create_request("pvc-backend", 32 * MIB);
    r.parameters.insert("backend".into(), "ceph".into());
    cases.push(("unknown backend", r, Code::InvalidArgument));
    cases.push((
        "absurd size",
        create_request("pvc-huge", i64::MAX),
        Code::OutOfRange,
    ));
    cases.push((
        "negative size",
        create_request("pvc-neg", -1),
        Code::InvalidArgument,
    ));
    let mut r = create_request("pvc-limit", 32 * MIB);
    r.capacity_range = Some(CapacityRange {
        required_bytes: 32 * MIB,
        limit_bytes: MIB,
    });
    cases.push(("required > limit", r, Code::InvalidArgument));
    let mut r = create_request("pvc-nocap", 32 * MIB);
    r.volume_capabilities.clear();
    cases.push(("no capabilities", r, Code::InvalidArgument));
    let mut r = create_request("pvc-multi", 32 * MIB);
    r.volume_capabilities[0].access_mode = Some(AccessMode {
        mode: Mode::MultiNodeMultiWriter as i32,
    });
    cases.push(("multi-node mode", r, Code::InvalidArgument));
    let mut r = create_request("pvc-dirblock", 32 * MIB);
    r.parameters.insert("layout".into(), "dir".into());
    r.volume_capabilities[0].access_type = Some(AccessType::Block(BlockVolume {}));
    cases.push(("dir + block", r, Code::InvalidArgument));
    let mut r = create_request("pvc-badsnap", 32 * MIB);
    r.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: "snap#image#it-node#../../../../../etc/shadow".into(),
            },
        )),
    });
    cases.push(("bogus snapshot source", r, Code::NotFound));

    for (what, req, code) in cases {
        let err = c.create_volume(req).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {}", err.message());
        assert!(!err.message().is_empty(), "{what}: empty message");
    }
    for id in [
        "../../etc",
        "local#image#it-node#../../../../../../etc/x",
        "local#image#../../x#0123456789abcdef0123456789abcdef",
    ] {
        c.delete_volume(DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let err = c
            .controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: id.into(),
                capacity_range: Some(CapacityRange {
                    required_bytes: MIB,
                    limit_bytes: 0,
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    let err = c
        .delete_volume(DeleteVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .list_volumes(ListVolumesRequest {
            max_entries: 1,
            starting_token: "not-a-token".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);

    let after = (tree(&w.storage()), tree(&w.dir.path().join("state")));
    assert_eq!(
        before, after,
        "a refused request changed the storage root or state dir"
    );
}

#[tokio::test]
async fn node_paths_outside_the_kubelet_dir_are_refused() {
    let w = Warren::start();
    let mut c = w.controller().await;
    let id = c
        .create_volume(create_request("pvc-paths", 32 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let mut n = w.node().await;
    let outside = w.dir.path().join("not-kubelet/stage");
    for staging in [
        outside.display().to_string(),
        "/etc/warren-test".into(),
        format!("{}/../not-kubelet", w.kubelet().display()),
        "relative/path".into(),
    ] {
        let err = n
            .node_stage_volume(NodeStageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging.clone(),
                volume_capability: Some(mount_cap()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{staging}");
    }
    assert!(!outside.exists());
    assert!(!std::path::Path::new("/etc/warren-test").exists());
}

#[tokio::test]
async fn capacity_and_idempotent_create() {
    let w = Warren::start();
    let mut c = w.controller().await;
    let cap = c
        .get_capacity(GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(cap.available_capacity > 0);
    let a = c
        .create_volume(create_request("pvc-same", 32 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let b = c
        .create_volume(create_request("pvc-same", 32 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(a.volume_id, b.volume_id);
    assert_eq!(
        a.accessible_topology[0].segments["topology.warren.csi.dev/node"],
        NODE
    );
    let err = c
        .create_volume(create_request("pvc-same", 64 * MIB))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(volumes_on_disk(&w.storage()).len(), 1);
}
