//! Snapshots of replicated volumes, restore and clone, in the controller: which node is
//! asked for what, what is recorded, what a crash leaves. Against fake nodes (see
//! `support` for why fakes; the copies and the seeding themselves are the node plugin's,
//! tested there on real parts).

mod support;

use std::collections::HashMap;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::*;
use support::*;
use tonic::{Code, Request};
use warren_controller::records::State;
use warren_core::ids::{ReplicatedSnapshotId, ReplicatedVolumeId};
use warren_core::storage::SeedSource;

fn key_of(volume: &Volume) -> String {
    ReplicatedVolumeId::parse(&volume.volume_id)
        .unwrap()
        .key
        .to_string()
}

fn snap_key(snapshot: &Snapshot) -> String {
    ReplicatedSnapshotId::parse(&snapshot.snapshot_id)
        .unwrap()
        .key
        .to_string()
}

async fn snapshot(c: &Cluster, name: &str, source: &str) -> Result<Snapshot, tonic::Status> {
    c.svc
        .create_snapshot(Request::new(CreateSnapshotRequest {
            source_volume_id: source.into(),
            name: name.into(),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner().snapshot.unwrap())
}

async fn delete_snapshot(c: &Cluster, id: &str) -> Result<(), tonic::Status> {
    c.svc
        .delete_snapshot(Request::new(DeleteSnapshotRequest {
            snapshot_id: id.into(),
            secrets: HashMap::new(),
        }))
        .await
        .map(drop)
}

fn from_snapshot(name: &str, snapshot_id: &str) -> CreateVolumeRequest {
    let mut req = replicated_request(name, &[]);
    req.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: snapshot_id.into(),
            },
        )),
    });
    req
}

fn from_volume(name: &str, volume_id: &str) -> CreateVolumeRequest {
    let mut req = replicated_request(name, &[]);
    req.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(
            volume_content_source::VolumeSource {
                volume_id: volume_id.into(),
            },
        )),
    });
    req
}

#[tokio::test]
async fn an_idle_volume_is_copied_on_every_replica_and_deleted_everywhere() {
    let c = cluster(&[("n1", 9, true), ("n2", 5, true), ("n3", 1, true)]);
    let volume = c.create(replicated_request("pvc-a", &[])).await.unwrap();
    let snap = snapshot(&c, "snap-a", &volume.volume_id).await.unwrap();
    assert!(snap.ready_to_use);
    assert_eq!(snap.source_volume_id, volume.volume_id);
    assert_eq!(snap.size_bytes as u64, GIB);
    assert!(snap
        .snapshot_id
        .starts_with(&format!("replsnap#{}#", key_of(&volume))));
    let key = snap_key(&snap);
    // No node runs its engine: each replica's node copied its own replica.
    for node in ["n1", "n2"] {
        assert_eq!(c.node(node).copies(), vec![key.clone()], "{node}");
    }
    assert!(c.node("n3").copies().is_empty());

    // Idempotent by name; another volume under the same name is ALREADY_EXISTS.
    let again = snapshot(&c, "snap-a", &volume.volume_id).await.unwrap();
    assert_eq!(again.snapshot_id, snap.snapshot_id);
    let other = c.create(replicated_request("pvc-b", &[])).await.unwrap();
    let err = snapshot(&c, "snap-a", &other.volume_id).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    let listed = c
        .svc
        .list_snapshots(Request::new(ListSnapshotsRequest {
            source_volume_id: volume.volume_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    let got = c
        .svc
        .get_snapshot(Request::new(GetSnapshotRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.snapshot.unwrap().snapshot_id, snap.snapshot_id);

    delete_snapshot(&c, &snap.snapshot_id).await.unwrap();
    for node in ["n1", "n2", "n3"] {
        assert!(c.node(node).copies().is_empty(), "{node}");
    }
    assert!(c.records().replicated_snapshots().is_empty());
    // Again, and an ID nobody made: success.
    delete_snapshot(&c, &snap.snapshot_id).await.unwrap();
    delete_snapshot(&c, "replsnap#bogus").await.unwrap();
}

#[tokio::test]
async fn a_staged_volume_is_snapshotted_by_its_engine_node() {
    let c = cluster(&[("n1", 9, true), ("n2", 5, true), ("n3", 1, true)]);
    let volume = c.create(replicated_request("pvc-a", &[])).await.unwrap();
    // The pod runs on n3, which holds no replica: its Warren runs the engine.
    c.node("n3").run_engine(&key_of(&volume), &["n1", "n2"]);
    let snap = snapshot(&c, "snap-a", &volume.volume_id).await.unwrap();
    let key = key_of(&volume);
    assert!(c
        .node("n3")
        .calls()
        .contains(&format!("engine-snapshot {key}")));
    for node in ["n1", "n2"] {
        assert!(
            !c.node(node).calls().contains(&format!("snapshot {key}")),
            "{node} was asked to copy an open replica by itself"
        );
    }
    let rec = c.records().replicated_snapshots().pop().unwrap();
    assert_eq!(rec.state, State::Ready);
    let holders: Vec<&str> = rec.copies.iter().map(|c| c.node.as_str()).collect();
    assert_eq!(holders, ["n1", "n2"]);
    assert_eq!(rec.id.to_string(), snap.snapshot_id);
}

#[tokio::test]
async fn an_engine_starting_during_the_copies_aborts_and_leaves_no_copy() {
    let c = cluster(&[("n1", 9, true), ("n2", 5, true)]);
    let volume = c.create(replicated_request("pvc-a", &[])).await.unwrap();
    // n2's replica was opened by an engine after no node said it ran one.
    c.node("n2").set_mode(Mode::InUse);
    let err = snapshot(&c, "snap-a", &volume.volume_id).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert!(
        c.node("n1").copies().is_empty(),
        "the copy n1 made is removed"
    );
    // The retry succeeds once the replicas answer again.
    c.node("n2").set_mode(Mode::Up);
    snapshot(&c, "snap-a", &volume.volume_id).await.unwrap();
    assert_eq!(c.node("n2").copies().len(), 1);
}

#[tokio::test]
async fn after_an_unclean_end_one_copy_is_kept() {
    let c = cluster(&[("n1", 9, true), ("n2", 5, true)]);
    let volume = c.create(replicated_request("pvc-a", &[])).await.unwrap();
    for node in ["n1", "n2"] {
        c.node(node).mark_unclean(&key_of(&volume));
    }
    snapshot(&c, "snap-a", &volume.volume_id).await.unwrap();
    let copies = c.node("n1").copies().len() + c.node("n2").copies().len();
    assert_eq!(copies, 1, "copies that may differ are not both kept");
    assert_eq!(c.records().replicated_snapshots()[0].copies.len(), 1);
}

#[tokio::test]
async fn restore_creates_replicas_then_seeds_them_from_a_copy() {
    let c = cluster(&[("n1", 9, true), ("n2", 5, true), ("n3", 3, true)]);
    let volume = c.create(replicated_request("pvc-a", &[])).await.unwrap();
    let snap = snapshot(&c, "snap-a", &volume.volume_id).await.unwrap();

    let restored = c
        .create(from_snapshot("pvc-r", &snap.snapshot_id))
        .await
        .unwrap();
    let source = restored.content_source.clone().unwrap();
    assert!(matches!(
        source.r#type,
        Some(volume_content_source::Type::Snapshot(ref s)) if s.snapshot_id == snap.snapshot_id
    ));
    let seeds: Vec<_> = ["n1", "n2", "n3"]
        .iter()
        .flat_map(|n| c.node(n).seeded())
        .collect();
    assert_eq!(seeds.len(), 1, "one node seeds: {seeds:?}");
    assert_eq!(seeds[0].0, key_of(&restored));
    assert!(
        matches!(&seeds[0].1, SeedSource::ReplicaSnapshot(id) if id.to_string() == snap.snapshot_id)
    );
    // Idempotent; the same name from another source is ALREADY_EXISTS.
    let again = c
        .create(from_snapshot("pvc-r", &snap.snapshot_id))
        .await
        .unwrap();
    assert_eq!(again.volume_id, restored.volume_id);
    let err = c
        .create(replicated_request("pvc-r", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    // Bad sources: missing, and larger than the new volume.
    let missing = format!("replsnap#{}#{}", key_of(&volume), "0".repeat(32));
    let err = c
        .create(from_snapshot("pvc-x", &missing))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let mut small = from_snapshot("pvc-y", &snap.snapshot_id);
    small.capacity_range = Some(CapacityRange {
        required_bytes: (GIB / 2) as i64,
        limit_bytes: 0,
    });
    let err = c.create(small).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert_eq!(
        c.records().replicated_volumes().len(),
        2,
        "refusals change nothing"
    );
}

#[tokio::test]
async fn a_clone_is_seeded_from_a_snapshot_taken_for_it_and_deleted_after() {
    let c = cluster(&[("n1", 9, true), ("n2", 5, true), ("n3", 3, true)]);
    let volume = c.create(replicated_request("pvc-a", &[])).await.unwrap();
    let clone = c
        .create(from_volume("pvc-c", &volume.volume_id))
        .await
        .unwrap();
    assert_ne!(clone.volume_id, volume.volume_id);
    let seeds: Vec<_> = ["n1", "n2", "n3"]
        .iter()
        .flat_map(|n| c.node(n).seeded())
        .collect();
    assert_eq!(seeds.len(), 1, "{seeds:?}");
    assert_eq!(seeds[0].0, key_of(&clone));
    assert!(
        c.records().replicated_snapshots().is_empty(),
        "the snapshot for the clone is gone"
    );
    for node in ["n1", "n2", "n3"] {
        assert!(c.node(node).copies().is_empty(), "{node}");
    }
    let missing = format!("replicated#{}", "0".repeat(32));
    let err = c.create(from_volume("pvc-x", &missing)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test]
async fn a_seed_cut_off_keeps_the_volume_creating_and_a_restart_undoes_it() {
    let mut c = cluster(&[("n1", 9, true), ("n2", 5, true)]);
    let volume = c.create(replicated_request("pvc-a", &[])).await.unwrap();
    let snap = snapshot(&c, "snap-a", &volume.volume_id).await.unwrap();
    // Both copies' nodes stop answering before the seed.
    c.node("n1").set_mode(Mode::LostAfterProbe);
    c.node("n2").set_mode(Mode::LostAfterProbe);
    let err = c
        .create(from_snapshot("pvc-r", &snap.snapshot_id))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    c.node("n1").set_mode(Mode::Up);
    c.node("n2").set_mode(Mode::Up);
    c.restart();
    let report = c.svc.reconcile().await;
    assert_eq!(report.undone, 1, "{report:?}");
    assert_eq!(
        c.records().replicated_volumes().len(),
        1,
        "only the source is left"
    );
    for node in ["n1", "n2"] {
        assert_eq!(c.node(node).replicas(), [key_of(&volume)], "{node}");
    }
}
