//! Replicated volumes through the node service, on real parts: two "nodes" in one process,
//! each with its own replica service on localhost TCP, its own storage root and kubelet
//! dir; engines with the node's own replica in process; the FUSE + loop frontend (this
//! host has neither ublk nor nbd); real mkfs and mounts. Needs root and /dev/fuse, else
//! each test says it was skipped. Every test cleans up its mounts and loop devices, even
//! when it fails (`Cluster`'s Drop).

mod replicated_nodes;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use csi_proto::v1::node_server::Node;
use csi_proto::v1::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
use csi_proto::v1::*;
use tonic::{Code, Request};
use warren_core::ids::{Key, Layout, ReplicatedVolumeId};
use warren_core::params::{ReplicaEndpoint, ReplicatedContext};
use warren_core::storage::{NodeStorage, ReplicaSpec};
use warren_node::local::LocalStore;
use warren_node::loopdev::LoopDevices;
use warren_node::mounter::SystemMounter;
use warren_node::replicated::ReplicatingStore;
use warren_node::service::NodeService;

use replicated_nodes::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_written_on_one_node_is_read_on_the_other() {
    if !can_run() {
        return;
    }
    let c = Cluster::new().await;
    c.create_replicas().await;
    let id = c.id.to_string();
    let (staging_a, pod_a) = (c.a.path("staging/v"), c.a.path("pods/p1/vol"));
    c.a.stage(&id, &staging_a, mount_cap(), &c.context)
        .await
        .unwrap();
    // A retried stage finds it staged.
    c.a.stage(&id, &staging_a, mount_cap(), &c.context)
        .await
        .unwrap();
    c.a.publish(&id, &staging_a, &pod_a, mount_cap()).await;
    let data = pattern(7, 4 * MIB as usize);
    let sum = checksum(&data);
    let file = pod_a.join("file");
    tokio::task::spawn_blocking(move || {
        std::fs::write(&file, &data).unwrap();
        std::fs::File::open(&file).unwrap().sync_all().unwrap();
    })
    .await
    .unwrap();
    let stats = c.a.stats(&id, &pod_a).await.unwrap();
    let condition = stats.volume_condition.unwrap();
    assert!(!condition.abnormal, "{}", condition.message);
    assert!(stats.usage[0].used >= 4 * MIB as i64, "{:?}", stats.usage);
    c.a.unpublish(&id, &pod_a).await;
    c.a.unstage(&id, &staging_a).await;
    c.a.unstage(&id, &staging_a).await; // unstaged already: OK

    let staging_b = c.b.path("staging/v");
    c.b.stage(&id, &staging_b, mount_cap(), &c.context)
        .await
        .unwrap();
    let file = staging_b.join("file");
    let read = tokio::task::spawn_blocking(move || std::fs::read(file).unwrap())
        .await
        .unwrap();
    assert_eq!(checksum(&read), sum);

    // Neither replica can be deleted while b's engine has them open (a's over TCP).
    for node in [&c.a, &c.b] {
        let err = node.store.delete_replica(c.id.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{}: {err}", node.name);
        assert!(c.replica_data(node).exists());
    }
    c.b.unstage(&id, &staging_b).await;
    for node in [&c.a, &c.b] {
        node.store.delete_replica(c.id.clone()).await.unwrap();
        assert!(
            !c.replica_data(node).parent().unwrap().exists(),
            "{}",
            node.name
        );
        let err = node.store.get_replica(c.id.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        node.store.delete_replica(c.id.clone()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_raw_block_volume_is_written_through_its_published_device() {
    if !can_run() {
        return;
    }
    let c = Cluster::new().await;
    c.create_replicas().await;
    let id = c.id.to_string();
    let (staging, target) = (c.a.path("staging/b"), c.a.path("pods/p2/dev"));
    c.a.stage(&id, &staging, block_cap(), &c.context)
        .await
        .unwrap();
    c.a.publish(&id, &staging, &target, block_cap()).await;
    let data = pattern(3, MIB as usize);
    write_durably(&target, 5 * MIB, data.clone()).await.unwrap();
    let back = {
        let target = target.clone();
        tokio::task::spawn_blocking(move || read_at(&target, 5 * MIB, MIB as usize))
            .await
            .unwrap()
    };
    assert_eq!(back, data);
    let stats = c.a.stats(&id, &target).await.unwrap();
    assert_eq!(stats.usage[0].total, SIZE as i64);
    c.a.unpublish(&id, &target).await;
    assert!(!target.exists());
    c.a.unstage(&id, &staging).await;
    // Both replicas hold it, byte for byte.
    for node in [&c.a, &c.b] {
        assert_eq!(
            read_at(&c.replica_data(node), 5 * MIB, MIB as usize),
            data,
            "{}",
            node.name
        );
    }
    assert!(c.a.stats(&id, &target).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_node_fences_the_first() {
    if !can_run() {
        return;
    }
    let c = Cluster::new().await;
    c.create_replicas().await;
    let id = c.id.to_string();
    let (staging_a, staging_b) = (c.a.path("staging/f"), c.b.path("staging/f"));
    let (dev_a, dev_b) = (c.a.path("pods/pa/dev"), c.b.path("pods/pb/dev"));
    c.a.stage(&id, &staging_a, block_cap(), &c.context)
        .await
        .unwrap();
    c.a.publish(&id, &staging_a, &dev_a, block_cap()).await;
    write_durably(&dev_a, 0, pattern(1, 64 * 1024))
        .await
        .unwrap();
    // The volume moves to b while a still has it staged (a's node presumed gone).
    c.b.stage(&id, &staging_b, block_cap(), &c.context)
        .await
        .unwrap();
    c.b.publish(&id, &staging_b, &dev_b, block_cap()).await;
    let from_b = pattern(2, 64 * 1024);
    write_durably(&dev_b, 0, from_b.clone()).await.unwrap();
    // a's next write cannot land: its engine is fenced on every replica.
    let err = write_durably(&dev_a, 0, pattern(9, 64 * 1024))
        .await
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let condition =
        c.a.stats(&id, &dev_a)
            .await
            .unwrap()
            .volume_condition
            .unwrap();
    assert!(
        condition.abnormal && condition.message.contains("fenced"),
        "{}",
        condition.message
    );
    let condition =
        c.b.stats(&id, &dev_b)
            .await
            .unwrap()
            .volume_condition
            .unwrap();
    assert!(!condition.abnormal, "{}", condition.message);
    c.a.unpublish(&id, &dev_a).await;
    c.a.unstage(&id, &staging_a).await; // a fenced engine still unstages
                                        // b's data is intact: through b's device, and on both replicas once b closed.
    let back = tokio::task::spawn_blocking({
        let dev_b = dev_b.clone();
        move || read_at(&dev_b, 0, 64 * 1024)
    })
    .await
    .unwrap();
    assert_eq!(back, from_b);
    c.b.unpublish(&id, &dev_b).await;
    c.b.unstage(&id, &staging_b).await;
    for node in [&c.a, &c.b] {
        assert_eq!(
            read_at(&c.replica_data(node), 0, 64 * 1024),
            from_b,
            "{}",
            node.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_nothing_touched() {
    let c = Cluster::new().await;
    c.create_replicas().await;
    let id = c.id.to_string();
    let staging = c.a.path("staging/bad");
    let with = |key: &str, value: &str| {
        let mut context = c.context.clone();
        context.insert(key.into(), value.into());
        context
    };
    let mut no_size = c.context.clone();
    no_size.remove("warren.csi.dev/size");
    let bad_contexts = [
        with("warren.csi.dev/replicas", "../x=127.0.0.1:1"),
        with("warren.csi.dev/replicas", "a=127.0.0.1"),
        with("warren.csi.dev/size", "4097"),
        no_size,
    ];
    for context in &bad_contexts {
        let err =
            c.a.stage(&id, &staging, mount_cap(), context)
                .await
                .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{context:?}: {err}");
    }
    let bad_fs = cap(AccessType::Mount(MountVolume {
        fs_type: "ntfs".into(),
        ..Default::default()
    }));
    let multi_node = VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeMultiWriter as i32,
        }),
        ..block_cap()
    };
    for cap in [bad_fs, multi_node] {
        let err = c.a.stage(&id, &staging, cap, &c.context).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    }
    // A malformed replicated ID cannot name a volume: NOT_FOUND, as for every kind
    // (docs/design.md, "Bad input").
    let err =
        c.a.stage("replicated#../x", &staging, mount_cap(), &c.context)
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let err =
        c.a.stage(&id, Path::new("/tmp/outside"), mount_cap(), &c.context)
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    // Nothing was started, attached or made.
    assert!(!staging.exists());
    assert!(!c.a.replicas.join(".fuse").exists());
    assert_eq!(
        c.a.stats(&id, &staging).await.unwrap_err().code(),
        Code::NotFound
    );
    let info = c.a.store.get_replica(c.id.clone()).await.unwrap();
    assert_eq!((info.gen, info.members.len()), (1, 2));

    // A replica of another size is ALREADY_EXISTS; members without this node, bad.
    let err =
        c.a.store
            .create_replica(ReplicaSpec {
                volume: c.id.clone(),
                size_bytes: 2 * SIZE,
                members: vec!["a".into(), "b".into()],
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    let err =
        c.a.store
            .create_replica(ReplicaSpec {
                volume: ReplicatedVolumeId::new(Key::random()),
                size_bytes: SIZE,
                members: vec!["b".into(), "c".into()],
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_replica_service_refuses_replicated_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalStore::open("n", &dir.path().join("storage"), Arc::new(LoopDevices)).unwrap();
    let kubelet = dir.path().join("kubelet");
    std::fs::create_dir_all(&kubelet).unwrap();
    let service = NodeService::new(
        local.clone(),
        Arc::new(SystemMounter),
        kubelet.clone(),
        Default::default(),
    );
    let id = ReplicatedVolumeId::new(Key::random());
    let mut context = HashMap::new();
    ReplicatedContext {
        replicas: vec![ReplicaEndpoint {
            node: "n".into(),
            endpoint: "127.0.0.1:1".into(),
        }],
        size_bytes: SIZE,
        rebuild_rate: 0,
    }
    .write(&mut context);
    let err = service
        .node_stage_volume(Request::new(NodeStageVolumeRequest {
            volume_id: id.to_string(),
            staging_target_path: kubelet.join("s").display().to_string(),
            volume_capability: Some(mount_cap()),
            volume_context: context,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("no replica service"), "{err}");
    let store = ReplicatingStore::new(Arc::new(local), None);
    assert_eq!(
        store
            .capacity(Layout::Image)
            .await
            .unwrap()
            .replica_endpoint,
        None
    );
    let err = store
        .create_replica(ReplicaSpec {
            volume: id,
            size_bytes: SIZE,
            members: vec!["n".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
}
