//! Expansion of replicated volumes on real parts (the harness of `replicated.rs`: two
//! nodes' replica services on localhost TCP, FUSE + loop, real mkfs and mounts): the
//! replicas grow through each node's `ReplicatingStore` (what ControllerExpandVolume asks
//! of every replica's node), then NodeExpandVolume grows the running engine, its device
//! and the mounted file system, online; a later stage from the unchanged volume context
//! starts at the new size. Online file-system growth is tested with xfs: this host lacks
//! CAP_SYS_RESOURCE, which online ext4 growth needs (see ../shared/ENVIRONMENT.md).

mod replicated_nodes;

use std::os::unix::fs::FileExt;
use std::path::Path;

use csi_proto::v1::volume_capability::{AccessType, MountVolume};
use csi_proto::v1::VolumeCapability;
use tonic::Code;
use warren_core::storage::NodeStorage;
use warren_node::loopdev::block_device_size;

use replicated_nodes::*;

fn xfs_cap() -> VolumeCapability {
    cap(AccessType::Mount(MountVolume {
        fs_type: "xfs".into(),
        ..Default::default()
    }))
}

fn have_xfs() -> bool {
    let found = ["/usr/sbin/mkfs.xfs", "/sbin/mkfs.xfs"]
        .iter()
        .any(|p| Path::new(p).exists());
    if !found {
        warren_test_support::skip(
            "WARREN_REQUIRE_FUSE",
            "mkfs.xfs not found (apt-get install xfsprogs)",
        );
    }
    found
}

/// What `df` shows as the size of the file system mounted at `path`.
fn df_bytes(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).unwrap();
    st.blocks() * st.fragment_size()
}

fn file_checksum(path: &Path) -> u64 {
    checksum(&std::fs::read(path).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mounted_volume_grows_online_and_a_later_stage_starts_grown() {
    if !can_run() || !have_xfs() {
        return;
    }
    // mkfs.xfs wants at least 300 MiB.
    let (old, new) = (320 * MIB, 640 * MIB);
    let c = Cluster::with_size(old).await;
    c.create_replicas().await;
    let id = c.id.to_string();
    let (staging, pod) = (c.a.path("staging/v"), c.a.path("pods/p1/vol"));
    c.a.stage(&id, &staging, xfs_cap(), &c.context)
        .await
        .unwrap();
    c.a.publish(&id, &staging, &pod, xfs_cap()).await;
    let data = pattern(11, 8 * MIB as usize);
    let sum = checksum(&data);
    let file = pod.join("before");
    {
        let (file, data) = (file.clone(), data.clone());
        tokio::task::spawn_blocking(move || {
            std::fs::write(&file, &data).unwrap();
            std::fs::File::open(&file).unwrap().sync_all().unwrap();
        })
        .await
        .unwrap();
    }
    let df_before = df_bytes(&pod);
    assert!(df_before < old, "{df_before}");

    // What ControllerExpandVolume asks of every replica's node, while a's engine runs.
    for node in [&c.a, &c.b] {
        let info = node.store.expand_replica(c.id.clone(), new).await.unwrap();
        assert_eq!(
            (info.size_bytes, info.in_sync),
            (new, true),
            "{}",
            node.name
        );
        // Idempotent; a smaller size leaves it as it is (never shrinks).
        let again = node.store.expand_replica(c.id.clone(), new).await.unwrap();
        assert_eq!(again.size_bytes, new);
        let smaller = node.store.expand_replica(c.id.clone(), old).await.unwrap();
        assert_eq!(smaller.size_bytes, new, "{}", node.name);
        let data_len = std::fs::metadata(c.replica_data(node)).unwrap().len();
        assert_eq!(data_len, new);
    }
    // The engine still serves the old size until the node is told.
    assert_eq!(df_bytes(&pod), df_before);

    assert_eq!(c.a.expand(&id, &pod, new).await.unwrap(), new);
    assert_eq!(c.a.expand(&id, &pod, new).await.unwrap(), new, "a retry");
    let df_after = df_bytes(&pod);
    assert!(
        df_after > old && df_after <= new && df_after > df_before + (new - old) / 2,
        "df shows {df_after} bytes, was {df_before}"
    );
    let stats = c.a.stats(&id, &pod).await.unwrap();
    assert!(!stats.volume_condition.unwrap().abnormal);
    assert!(stats.usage[0].total as u64 > old, "{:?}", stats.usage);
    assert_eq!(file_checksum(&file), sum, "data written before is intact");

    // The new space is usable: a file larger than the whole old volume, with data at
    // its end.
    let big = pod.join("big");
    let tail = pattern(12, MIB as usize);
    let tail_sum = checksum(&tail);
    {
        let (big, tail) = (big.clone(), tail.clone());
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::create(&big).unwrap();
            nix::fcntl::fallocate(
                &f,
                nix::fcntl::FallocateFlags::empty(),
                0,
                (old + 40 * MIB) as i64,
            )
            .unwrap();
            f.write_all_at(&tail, old + 39 * MIB).unwrap();
            f.sync_all().unwrap();
        })
        .await
        .unwrap();
    }
    c.a.unpublish(&id, &pod).await;
    c.a.unstage(&id, &staging).await;

    // Staged again (on the other node) from the unchanged context, which says `old`.
    assert!(c.context.values().any(|v| v == &old.to_string()));
    let staging_b = c.b.path("staging/v");
    c.b.stage(&id, &staging_b, xfs_cap(), &c.context)
        .await
        .unwrap();
    assert_eq!(df_bytes(&staging_b), df_after);
    assert_eq!(file_checksum(&staging_b.join("before")), sum);
    let read = read_at(&staging_b.join("big"), old + 39 * MIB, MIB as usize);
    assert_eq!(checksum(&read), tail_sum);
    c.b.unstage(&id, &staging_b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_raw_block_device_grows_online_and_bad_calls_are_refused() {
    if !can_run() {
        return;
    }
    let c = Cluster::new().await;
    c.create_replicas().await;
    let id = c.id.to_string();
    let (staging, dev) = (c.a.path("staging/b"), c.a.path("pods/p2/dev"));
    // Not staged here: nothing to grow.
    std::fs::create_dir_all(c.a.path("pods/p2")).unwrap();
    std::fs::write(&dev, b"").unwrap();
    let err = c.a.expand(&id, &dev, SIZE).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    std::fs::remove_file(&dev).unwrap();

    c.a.stage(&id, &staging, block_cap(), &c.context)
        .await
        .unwrap();
    c.a.publish(&id, &staging, &dev, block_cap()).await;
    write_durably(&dev, SIZE - MIB, pattern(3, MIB as usize))
        .await
        .unwrap();
    for node in [&c.a, &c.b] {
        node.store
            .expand_replica(c.id.clone(), 2 * SIZE)
            .await
            .unwrap();
    }
    assert_eq!(block_device_size(&dev).unwrap(), SIZE);
    assert_eq!(c.a.expand(&id, &dev, 2 * SIZE).await.unwrap(), 2 * SIZE);
    assert_eq!(block_device_size(&dev).unwrap(), 2 * SIZE);
    write_durably(&dev, 2 * SIZE - MIB, pattern(4, MIB as usize))
        .await
        .unwrap();
    assert_eq!(
        read_at(&dev, SIZE - MIB, MIB as usize),
        pattern(3, MIB as usize)
    );
    assert_eq!(
        read_at(&dev, 2 * SIZE - MIB, MIB as usize),
        pattern(4, MIB as usize)
    );
    // A CO that calls only the node (as csi-sanity does against a node-only endpoint):
    // the engine grows its replicas itself, to whole MiB.
    assert_eq!(c.a.expand(&id, &dev, 3 * SIZE - 5).await.unwrap(), 3 * SIZE);
    assert_eq!(block_device_size(&dev).unwrap(), 3 * SIZE);
    for node in [&c.a, &c.b] {
        let len = std::fs::metadata(c.replica_data(node)).unwrap().len();
        assert_eq!(len, 3 * SIZE, "{}", node.name);
    }
    c.a.unpublish(&id, &dev).await;
    c.a.unstage(&id, &staging).await;
    // Both replicas hold the write into the new space.
    for node in [&c.a, &c.b] {
        assert_eq!(
            read_at(&c.replica_data(node), 2 * SIZE - MIB, MIB as usize),
            pattern(4, MIB as usize),
            "{}",
            node.name
        );
    }
}
