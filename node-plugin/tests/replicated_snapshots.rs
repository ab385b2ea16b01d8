//! Snapshots of replicated volumes and seeding new ones, through each node's
//! `ReplicatingStore` (what the controller calls), on real parts: two "nodes" in one
//! process with their own replica services, engines with the node's own replica in
//! process, FUSE + loop devices, real mkfs and mounts. Needs root and /dev/fuse, else
//! each test says it was skipped.

mod replicated_nodes;

use std::path::PathBuf;
use std::time::Duration;

use tonic::Code;
use warren_core::ids::{
    Key, Layout, ReplicatedSnapshotId, ReplicatedVolumeId, SnapshotId, VolumeId,
};
use warren_core::params::ReplicaEndpoint;
use warren_core::storage::{
    Allocation, NodeStorage, ReplicaSpec, SeedSource, SeedTarget, VolumeSpec,
};

use replicated_nodes::*;

fn endpoints(c: &Cluster) -> Vec<ReplicaEndpoint> {
    [&c.a, &c.b]
        .iter()
        .map(|n| ReplicaEndpoint {
            node: n.name.clone(),
            endpoint: n.host.endpoint().to_string(),
        })
        .collect()
}

/// A new replicated volume with empty replicas on a and b, as the controller makes one
/// before it seeds it.
async fn new_volume(c: &Cluster) -> (ReplicatedVolumeId, SeedTarget) {
    let id = ReplicatedVolumeId::new(Key::random());
    for node in [&c.a, &c.b] {
        node.store
            .create_replica(ReplicaSpec {
                volume: id.clone(),
                size_bytes: c.size,
                members: vec!["a".into(), "b".into()],
            })
            .await
            .unwrap();
    }
    let target = SeedTarget {
        volume: id.clone(),
        size_bytes: c.size,
        replicas: endpoints(c),
    };
    (id, target)
}

async fn write_file(path: PathBuf, data: Vec<u8>, sync: bool) {
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            std::fs::write(&path, &data).unwrap();
            if sync {
                std::fs::File::open(&path).unwrap().sync_all().unwrap();
            }
        }),
    )
    .await
    .expect("a write to the file system hung: is it still frozen?")
    .unwrap();
}

async fn read_file(path: PathBuf) -> Vec<u8> {
    tokio::task::spawn_blocking(move || std::fs::read(path).unwrap())
        .await
        .unwrap()
}

fn copy_data(node: &TestNode, snapshot: &ReplicatedSnapshotId) -> PathBuf {
    node.replicas
        .join(".snapshots")
        .join(snapshot.snapshot_name())
        .join("data")
}

/// Stages `volume` on `node` (mounted), checks that each file holds its bytes, unstages.
async fn check_files(
    node: &TestNode,
    c: &Cluster,
    volume: &ReplicatedVolumeId,
    files: &[(&str, u64)],
) {
    let id = volume.to_string();
    let staging = node.path(&format!("staging/check-{}", volume.key));
    node.stage(&id, &staging, mount_cap(), &c.context)
        .await
        .unwrap();
    for (name, sum) in files {
        let read = read_file(staging.join(name)).await;
        assert_eq!(checksum(&read), *sum, "{name} on {}", node.name);
    }
    node.unstage(&id, &staging).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_through_the_staged_engine_is_the_frozen_file_system_and_seeds_a_volume() {
    if !can_run() {
        return;
    }
    let c = Cluster::new().await;
    c.create_replicas().await;
    let id = c.id.to_string();
    let staging = c.a.path("staging/v");
    c.a.stage(&id, &staging, mount_cap(), &c.context)
        .await
        .unwrap();
    let before = pattern(1, 4 * MIB as usize);
    write_file(staging.join("synced"), before.clone(), true).await;
    // Not synced: only the freeze puts it on the device before the copies are taken.
    let cached = pattern(2, 2 * MIB as usize);
    write_file(staging.join("cached"), cached.clone(), false).await;

    let snapshot = ReplicatedSnapshotId::new(c.id.clone(), Key::random());
    let err =
        c.b.store
            .snapshot_through_engine(snapshot.clone())
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let copies =
        c.a.store
            .snapshot_through_engine(snapshot.clone())
            .await
            .unwrap();
    let mut nodes: Vec<&str> = copies.iter().map(|i| i.node.as_str()).collect();
    nodes.sort_unstable();
    assert_eq!(nodes, ["a", "b"]);
    for copy in &copies {
        assert!(copy.clean && copy.gen == copies[0].gen && copy.size_bytes == c.size);
        assert_eq!(copy.snapshot, snapshot);
    }
    // Thawed: the file system takes writes again (a frozen one would hang here).
    let after = pattern(3, 4 * MIB as usize);
    write_file(staging.join("synced"), after.clone(), true).await;
    // The same bytes whichever replica's copy is read.
    assert!(
        std::fs::read(copy_data(&c.a, &snapshot)).unwrap()
            == std::fs::read(copy_data(&c.b, &snapshot)).unwrap()
    );
    // Idempotent.
    let again =
        c.a.store
            .snapshot_through_engine(snapshot.clone())
            .await
            .unwrap();
    assert_eq!(again.len(), 2);
    // An engine has the replicas open: a copy of either on its own is refused.
    for node in [&c.a, &c.b] {
        let other = ReplicatedSnapshotId::new(c.id.clone(), Key::random());
        let err = node.store.snapshot_replica(other).await.unwrap_err();
        assert_eq!(err.code(), Code::Aborted, "{}: {err}", node.name);
    }

    // A new volume seeded from b's copy, read back on b.
    let (restored, target) = new_volume(&c).await;
    let report =
        c.b.store
            .seed_replicated(
                target.clone(),
                SeedSource::ReplicaSnapshot(snapshot.clone()),
            )
            .await
            .unwrap();
    assert_eq!(report.source_bytes, c.size);
    assert!(
        report.written_bytes >= 6 * MIB && report.written_bytes < c.size,
        "{report:?}"
    );
    // Safe to repeat.
    c.b.store
        .seed_replicated(target, SeedSource::ReplicaSnapshot(snapshot.clone()))
        .await
        .unwrap();
    check_files(
        &c.b,
        &c,
        &restored,
        &[("synced", checksum(&before)), ("cached", checksum(&cached))],
    )
    .await;
    // The source volume holds what was written after the snapshot.
    assert_eq!(
        checksum(&read_file(staging.join("synced")).await),
        checksum(&after)
    );
    c.a.unstage(&id, &staging).await;

    // A copy this node does not keep is NOT_FOUND.
    let (_, target) = new_volume(&c).await;
    let unknown = ReplicatedSnapshotId::new(c.id.clone(), Key::random());
    let err =
        c.a.store
            .seed_replicated(target, SeedSource::ReplicaSnapshot(unknown))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    for node in [&c.a, &c.b] {
        node.store
            .delete_replica_snapshot(snapshot.clone())
            .await
            .unwrap();
        node.store
            .delete_replica_snapshot(snapshot.clone())
            .await
            .unwrap();
        assert!(!copy_data(node, &snapshot).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unstaged_volume_is_copied_replica_by_replica() {
    if !can_run() {
        return;
    }
    let c = Cluster::new().await;
    c.create_replicas().await;
    let id = c.id.to_string();
    let staging = c.a.path("staging/v");
    c.a.stage(&id, &staging, mount_cap(), &c.context)
        .await
        .unwrap();
    let data = pattern(9, 3 * MIB as usize);
    write_file(staging.join("f"), data.clone(), true).await;
    c.a.unstage(&id, &staging).await;

    let snapshot = ReplicatedSnapshotId::new(c.id.clone(), Key::random());
    let mut gens = Vec::new();
    for node in [&c.a, &c.b] {
        let copy = node.store.snapshot_replica(snapshot.clone()).await.unwrap();
        assert_eq!(copy.node, node.name);
        assert!(copy.clean, "{}: closed clean by its engine", node.name);
        gens.push((copy.gen, copy.members.clone()));
        assert!(
            std::fs::read(copy_data(node, &snapshot)).unwrap()
                == std::fs::read(c.replica_data(node)).unwrap(),
            "{}",
            node.name
        );
        // Idempotent.
        assert_eq!(
            node.store.snapshot_replica(snapshot.clone()).await.unwrap(),
            copy
        );
    }
    assert_eq!(gens[0], gens[1]);
    // The volume is deleted; its snapshot lives on and still seeds a volume.
    for node in [&c.a, &c.b] {
        node.store.delete_replica(c.id.clone()).await.unwrap();
    }
    let (restored, target) = new_volume(&c).await;
    c.a.store
        .seed_replicated(target, SeedSource::ReplicaSnapshot(snapshot.clone()))
        .await
        .unwrap();
    check_files(&c.a, &c, &restored, &[("f", checksum(&data))]).await;

    let nowhere = ReplicatedSnapshotId::new(ReplicatedVolumeId::new(Key::random()), Key::random());
    let err =
        c.a.store
            .snapshot_replica(nowhere.clone())
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    c.a.store.delete_replica_snapshot(nowhere).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_local_image_volume_and_its_snapshot_seed_replicated_volumes() {
    if !can_run() {
        return;
    }
    let c = Cluster::new().await;
    let local = VolumeId::new(Layout::Image, "a", Key::random());
    c.a.local
        .create_volume(VolumeSpec {
            id: local.clone(),
            name: "pvc-local".into(),
            capacity_bytes: c.size,
            allocation: Allocation::Thin,
            source: None,
            shared: false,
            fs_type: None,
        })
        .await
        .unwrap();
    let staging = c.a.path("staging/local");
    c.a.stage(
        &local.to_string(),
        &staging,
        mount_cap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let data = pattern(5, 5 * MIB as usize);
    // Left in the page cache: the point-in-time copy freezes the mounted file system.
    write_file(staging.join("f"), data.clone(), false).await;

    // The mounted local volume into a replicated one, read back on the other node.
    let (copied, target) = new_volume(&c).await;
    let report =
        c.a.store
            .seed_replicated(target, SeedSource::LocalVolume(local.clone()))
            .await
            .unwrap();
    assert_eq!(report.source_bytes, c.size);
    assert!(report.written_bytes >= 5 * MIB, "{report:?}");
    // Its point-in-time copy is gone once the seed is done.
    assert!(c.a.local.list_snapshots().await.unwrap().is_empty());
    check_files(&c.b, &c, &copied, &[("f", checksum(&data))]).await;
    // Still mounted and writable.
    write_file(staging.join("g"), pattern(6, MIB as usize), true).await;
    c.a.unstage(&local.to_string(), &staging).await;

    // A local snapshot into a replicated volume: every replica holds the image's bytes.
    let snap = SnapshotId::new(Layout::Image, "a", Key::random());
    c.a.local
        .create_snapshot(snap.clone(), "snap".into(), local.clone())
        .await
        .unwrap();
    let (restored, target) = new_volume(&c).await;
    c.b.store
        .seed_replicated(target.clone(), SeedSource::LocalSnapshot(snap.clone()))
        .await
        .map(drop)
        .unwrap_err(); // b does not keep a's snapshot
    c.a.store
        .seed_replicated(target, SeedSource::LocalSnapshot(snap.clone()))
        .await
        .unwrap();
    let image = c.a.local.dirs().snapshot(&snap.key).join("disk.img");
    let image = std::fs::read(image).unwrap();
    for node in [&c.a, &c.b] {
        let replica = node.replicas.join(restored.replica_name()).join("data");
        assert!(std::fs::read(replica).unwrap() == image, "{}", node.name);
    }

    // What cannot be copied, or is not here.
    let (_, target) = new_volume(&c).await;
    for (source, code) in [
        (
            SeedSource::LocalVolume(VolumeId::new(Layout::Dir, "a", Key::random())),
            Code::InvalidArgument,
        ),
        (
            SeedSource::LocalSnapshot(SnapshotId::new(Layout::Dir, "a", Key::random())),
            Code::InvalidArgument,
        ),
        (
            SeedSource::LocalVolume(VolumeId::new(Layout::Image, "a", Key::random())),
            Code::NotFound,
        ),
        (
            SeedSource::LocalVolume(VolumeId::new(Layout::Image, "b", local.key.clone())),
            Code::NotFound,
        ),
    ] {
        let err =
            c.a.store
                .seed_replicated(target.clone(), source.clone())
                .await
                .unwrap_err();
        assert_eq!(err.code(), code, "{source:?}: {err}");
    }
    // A source larger than the target.
    let small = ReplicatedVolumeId::new(Key::random());
    for node in [&c.a, &c.b] {
        node.store
            .create_replica(ReplicaSpec {
                volume: small.clone(),
                size_bytes: c.size / 2,
                members: vec!["a".into(), "b".into()],
            })
            .await
            .unwrap();
    }
    let err =
        c.a.store
            .seed_replicated(
                SeedTarget {
                    volume: small,
                    size_bytes: c.size / 2,
                    replicas: endpoints(&c),
                },
                SeedSource::LocalSnapshot(snap),
            )
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
}
