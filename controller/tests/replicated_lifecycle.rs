//! Replicated volumes after creation: unreachable nodes, restarts, delete, the queries.
//! Against fake nodes (see `support` for why fakes).

mod support;

use std::collections::HashMap;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::volume_capability::access_mode::Mode as AccessMode;
use csi_proto::v1::*;
use support::*;
use tonic::{Code, Request};
use warren_controller::reconcile::Report;
use warren_controller::records::{State, VolumeRecord};
use warren_controller::replicated_record::{ReplicaLocation, ReplicatedRecord};
use warren_core::ids::{Key, Layout, ReplicatedVolumeId, VolumeId};
use warren_core::params::DataLocality;
use warren_core::storage::Allocation;

fn key_of(volume: &Volume) -> String {
    ReplicatedVolumeId::parse(&volume.volume_id)
        .unwrap()
        .key
        .to_string()
}

#[tokio::test]
async fn an_unreachable_node_keeps_creating_and_a_retry_finishes_it() {
    let c = cluster(&[("n1", 9, true), ("n2", 5, true)]);
    c.node("n2").set_mode(Mode::LostAfterProbe);
    let req = replicated_request("pvc-a", &[]);
    let err = c.create(req.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().starts_with("node n2: "), "{err:?}");
    let recs = c.records().replicated_volumes();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].state, State::Creating);
    assert_eq!(c.node("n1").replicas(), [recs[0].id.key.to_string()]);

    c.node("n2").set_mode(Mode::Up);
    let volume = c.create(req).await.unwrap();
    assert_eq!(
        volume.volume_id,
        recs[0].id.to_string(),
        "same ID, same nodes"
    );
    assert_eq!(c.node("n2").replicas(), [key_of(&volume)]);
}

#[tokio::test]
async fn a_restart_undoes_a_volume_nobody_was_told_about() {
    let mut c = cluster(&[("n1", 9, true), ("n2", 5, true)]);
    c.node("n2").set_mode(Mode::LostAfterProbe);
    c.create(replicated_request("pvc-a", &[]))
        .await
        .unwrap_err();
    assert_eq!(c.node("n1").replicas().len(), 1);

    c.restart(); // as after kill -9: only what is on disk is left
    c.node("n2").set_mode(Mode::Up);
    let report = c.svc.reconcile().await;
    assert_eq!(
        report,
        Report {
            undone: 1,
            deleted: 0,
            pending: 0
        }
    );
    assert!(c.node("n1").replicas().is_empty());
    assert_eq!(c.record_files(), 0);
}

#[tokio::test]
async fn a_crash_before_any_node_answered_is_undone_on_every_recorded_node() {
    // The record is written before the first create_replica: a crash right then leaves a
    // record and maybe replicas, never a replica without a record.
    let mut c = cluster(&[("n1", 9, true), ("n2", 5, true), ("n3", 5, true)]);
    let rec = ReplicatedRecord {
        id: ReplicatedVolumeId::new(Key::random()),
        name: "pvc-a".into(),
        capacity_bytes: GIB,
        replicas: ["n1", "n2"]
            .map(|n| ReplicaLocation {
                node: n.into(),
                endpoint: format!("{n}:7460"),
            })
            .to_vec(),
        replica_count: 2,
        fs_type: None,
        data_locality: DataLocality::BestEffort,
        spread_key: None,
        spread_required: false,
        rebuild_rate: 0,
        block: false,
        source: None,
        state: State::Creating,
    };
    c.records().put_replicated(&rec).unwrap();
    c.restart();
    assert_eq!(c.svc.reconcile().await.undone, 1);
    let delete = format!("delete {}", rec.id.key);
    assert_eq!(c.node("n1").changes(), std::slice::from_ref(&delete));
    assert_eq!(c.node("n2").changes(), [delete]);
    assert!(c.node("n3").calls().is_empty());
    assert_eq!(c.record_files(), 0);
}

#[tokio::test]
async fn delete_removes_every_replica_and_tolerates_unknown_ids() {
    let c = cluster(&[("n1", 9, true), ("n2", 5, true)]);
    let volume = c.create(replicated_request("pvc-a", &[])).await.unwrap();
    c.delete(&volume.volume_id).await.unwrap();
    assert!(c.node("n1").replicas().is_empty() && c.node("n2").replicas().is_empty());
    assert_eq!(c.record_files(), 0);
    c.delete(&volume.volume_id).await.unwrap();
    c.delete("replicated#not-a-key").await.unwrap();
    c.delete(&format!("replicated#{}", Key::random()))
        .await
        .unwrap();
}

/// The edge mode's leader may change, and a standard controller's records may be lost:
/// a controller without the volume's record still removes every replica, from every node
/// it knows, and fails (to be retried) while a node cannot answer.
#[tokio::test]
async fn delete_without_a_record_asks_every_node() {
    let c = cluster(&[("n1", 9, true), ("n2", 5, true), ("n3", 1, false)]);
    let volume = c.create(replicated_request("pvc-a", &[])).await.unwrap();
    assert_eq!(c.node("n1").replicas(), [key_of(&volume)]);
    let other_dir = tempfile::tempdir().unwrap();
    let other = service(other_dir.path(), &c.nodes);
    let delete = || {
        Request::new(DeleteVolumeRequest {
            volume_id: volume.volume_id.clone(),
            secrets: HashMap::new(),
        })
    };
    c.node("n2").set_mode(Mode::Down);
    let err = other.delete_volume(delete()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("n2"), "{}", err.message());
    c.node("n2").set_mode(Mode::Up);
    other.delete_volume(delete()).await.unwrap();
    assert!(c.node("n1").replicas().is_empty() && c.node("n2").replicas().is_empty());
}

#[tokio::test]
async fn delete_with_an_unreachable_node_keeps_the_record_until_reconciled() {
    let c = cluster(&[("n1", 9, true), ("n2", 5, true)]);
    let volume = c.create(replicated_request("pvc-a", &[])).await.unwrap();
    c.node("n2").set_mode(Mode::Down);
    let err = c.delete(&volume.volume_id).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let recs = c.records().replicated_volumes();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].state, State::Deleting);
    assert!(c.node("n1").replicas().is_empty());
    assert_eq!(c.node("n2").replicas(), [key_of(&volume)]);
    // No longer offered to the CO, and the name cannot be reused until it is gone.
    let listed = c
        .svc
        .list_volumes(Request::new(ListVolumesRequest::default()));
    assert!(listed.await.unwrap().into_inner().entries.is_empty());
    let err = c
        .create(replicated_request("pvc-a", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);

    assert_eq!(c.svc.reconcile().await.pending, 1, "still unreachable");
    c.node("n2").set_mode(Mode::Up);
    assert_eq!(c.svc.reconcile().await.deleted, 1);
    assert!(c.node("n2").replicas().is_empty());
    assert_eq!(c.record_files(), 0);
}

#[tokio::test]
async fn delete_of_a_volume_in_use_leaves_it_ready() {
    let c = cluster(&[("n1", 9, true), ("n2", 5, true)]);
    let volume = c.create(replicated_request("pvc-a", &[])).await.unwrap();
    c.node("n1").set_mode(Mode::InUse);
    c.node("n2").set_mode(Mode::InUse);
    let err = c.delete(&volume.volume_id).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(c.records().replicated_volumes()[0].state, State::Ready);
    assert_eq!(
        c.svc.reconcile().await,
        Report::default(),
        "nothing left to do"
    );
    assert_eq!(c.node("n1").replicas().len(), 1);
}

#[tokio::test]
async fn get_volume_reports_replicas_out_of_sync_by_node() {
    let c = cluster(&[("n1", 9, true), ("n2", 7, true), ("n3", 5, true)]);
    let volume = c
        .create(replicated_request("pvc-a", &[("replicas", "3")]))
        .await
        .unwrap();
    let key = key_of(&volume);
    let condition = || async {
        let reply = c
            .svc
            .controller_get_volume(Request::new(ControllerGetVolumeRequest {
                volume_id: volume.volume_id.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.volume.as_ref(), Some(&volume));
        reply.status.unwrap().volume_condition.unwrap()
    };
    let healthy = condition().await;
    assert!(!healthy.abnormal);
    assert_eq!(healthy.message, "all 3 replicas in sync");

    c.node("n2").edit_replica(&key, |r| r.in_sync = false);
    c.node("n3").set_mode(Mode::Down);
    let sick = condition().await;
    assert!(sick.abnormal);
    assert_eq!(
        sick.message,
        "1 of 3 replicas in sync; n2: not in sync (rebuilding); n3: cannot reach node n3"
    );

    // Cut out by the engine: the others committed a generation without it.
    c.node("n2").edit_replica(&key, |r| r.in_sync = true);
    c.node("n3").set_mode(Mode::Up);
    for node in ["n1", "n2"] {
        c.node(node).edit_replica(&key, |r| {
            r.gen = 2;
            r.members = vec!["n1".into(), "n2".into()];
        });
    }
    let cut = condition().await;
    assert_eq!(
        cut.message,
        "2 of 3 replicas in sync; n3: not a member of generation 2 (left at 1)"
    );
}

#[tokio::test]
async fn list_volumes_pages_across_local_and_replicated_volumes() {
    let mut c = cluster(&[("n1", 9, true), ("n2", 5, true)]);
    c.records()
        .put_volume(&VolumeRecord {
            id: VolumeId::new(Layout::Image, "n1", Key::random()),
            name: "pvc-local".into(),
            capacity_bytes: GIB,
            allocation: Allocation::Thick,
            source: None,
            block: false,
            fs_type: None,
            shared: false,
            share_endpoint: None,
            state: State::Ready,
        })
        .unwrap();
    c.restart();
    for name in ["pvc-a", "pvc-b", "pvc-c"] {
        c.create(replicated_request(name, &[])).await.unwrap();
    }
    let (mut seen, mut token) = (Vec::new(), String::new());
    loop {
        let page = c
            .svc
            .list_volumes(Request::new(ListVolumesRequest {
                max_entries: 1,
                starting_token: token,
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.entries.len(), 1);
        seen.push(page.entries[0].volume.clone().unwrap().volume_id);
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(seen.len(), 4);
    assert_eq!(
        seen.iter()
            .filter(|id| id.starts_with("replicated#"))
            .count(),
        3
    );
    assert_eq!(seen.iter().filter(|id| id.starts_with("local#")).count(), 1);
}

#[tokio::test]
async fn capacity_is_what_one_new_volume_can_get() {
    let c = cluster(&[
        ("n1", 5, true),
        ("n2", 9, true),
        ("n3", 7, true),
        ("big", 100, false),
    ]);
    for (replicas, gib) in [("1", 9), ("2", 7), ("3", 5), ("4", 0)] {
        let reply = c
            .svc
            .get_capacity(Request::new(GetCapacityRequest {
                parameters: HashMap::from([
                    ("backend".into(), "replicated".into()),
                    ("replicas".into(), replicas.into()),
                ]),
                volume_capabilities: vec![mount_cap(AccessMode::SingleNodeWriter)],
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.available_capacity, (gib * GIB) as i64, "{replicas}");
    }
    let bad = c.svc.get_capacity(Request::new(GetCapacityRequest {
        parameters: HashMap::from([
            ("backend".into(), "replicated".into()),
            ("replicas".into(), "x".into()),
        ]),
        ..Default::default()
    }));
    assert_eq!(bad.await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn only_single_node_access_is_confirmed() {
    let c = cluster(&[("n1", 9, true), ("n2", 5, true)]);
    let volume = c.create(replicated_request("pvc-a", &[])).await.unwrap();
    let validate = |mode: AccessMode| {
        c.svc
            .validate_volume_capabilities(Request::new(ValidateVolumeCapabilitiesRequest {
                volume_id: volume.volume_id.clone(),
                volume_capabilities: vec![mount_cap(mode)],
                ..Default::default()
            }))
    };
    let ok = validate(AccessMode::SingleNodeWriter)
        .await
        .unwrap()
        .into_inner();
    assert!(ok.confirmed.is_some());
    let no = validate(AccessMode::MultiNodeMultiWriter)
        .await
        .unwrap()
        .into_inner();
    assert!(no.confirmed.is_none() && no.message.contains("one node at a time"));
}
