//! The snapshotter against a scripted API server and a fake CSI service: the finalizer,
//! the content object, the CSI snapshot and both statuses, in that order; on deletion,
//! the content's deletion policy.

use csi_proto::v1::{CreateSnapshotResponse, Snapshot};
use http::Method;
use serde_json::{json, Value};

use super::*;
use crate::test_support::fake_csi::{CsiCall, FakeCsi, Replies};
use crate::test_support::fixtures::{bound_claim, snapshot_class, volume, volume_snapshot};
use crate::test_support::mock_api::{self, within};
use crate::test_support::snapshot_context;

const SNAPSHOT: &str = "/apis/snapshot.storage.k8s.io/v1/namespaces/default/volumesnapshots/snap";
const CONTENTS: &str = "/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents";
const CONTENT: &str = "/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/snapcontent-77";
const SOURCE: &str = "local#image#n1#0123";
const TAKEN: &str = "snap#image#n1#0123456789abcdef0123456789abcdef";
const NFS_TAKEN: &str = "nfssnap#10.0.0.5#/srv#0123456789abcdef0123456789abcdef";

/// CSI's answer to CreateSnapshot: 1 GiB, ready, taken at 2026-01-01T00:00:00Z.
fn taken() -> Replies {
    let mut snapshot = Snapshot {
        snapshot_id: TAKEN.into(),
        source_volume_id: SOURCE.into(),
        size_bytes: 1 << 30,
        ready_to_use: true,
        ..Default::default()
    };
    let mut at = snapshot.creation_time.take().unwrap_or_default();
    at.seconds = 1_767_225_600;
    snapshot.creation_time = Some(at);
    Replies {
        create_snapshot: Some(Ok(CreateSnapshotResponse {
            snapshot: Some(snapshot),
        })),
        ..Default::default()
    }
}

fn with_version(mut snapshot: DynamicObject) -> DynamicObject {
    snapshot.metadata.resource_version = Some("5".into());
    snapshot
}

/// The snapshot being deleted, bound to its content, with Warren's finalizer and another.
fn deleting() -> DynamicObject {
    with_version(volume_snapshot(json!({
        "metadata": {"name": "snap", "namespace": "default", "uid": "77",
            "deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": [FINALIZER, "other"]},
        "status": {"boundVolumeSnapshotContentName": "snapcontent-77", "readyToUse": true},
    })))
}

fn content(policy: &str, handle: &str) -> Value {
    json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
        "metadata": {"name": "snapcontent-77"},
        "spec": {"deletionPolicy": policy, "driver": DRIVER, "source": {"volumeHandle": SOURCE}},
        "status": {"snapshotHandle": handle, "readyToUse": true},
    })
}

fn on_n1(client: kube::Client, csi: FakeCsi) -> Arc<SnapshotContext<FakeCsi>> {
    snapshot_context(
        client,
        csi,
        "n1",
        false,
        vec![bound_claim()],
        vec![volume("n1", "1Gi")],
        vec![snapshot_class(DRIVER, false)],
    )
}

/// A node whose informers no longer hold the snapshot's source claim and volume.
fn source_gone(client: kube::Client, node: &str, leading: bool) -> Arc<SnapshotContext<FakeCsi>> {
    snapshot_context(
        client,
        FakeCsi::default(),
        node,
        leading,
        vec![],
        vec![],
        vec![snapshot_class(DRIVER, false)],
    )
}

#[tokio::test]
async fn the_source_volumes_node_takes_the_snapshot_and_records_it_on_both_objects() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let ctx = on_n1(client, FakeCsi::answering(taken()));
        let snapshot = with_version(volume_snapshot(json!({})));
        let json_snapshot = serde_json::to_value(&snapshot).unwrap();
        let task = tokio::spawn(reconcile_snapshot(Arc::new(snapshot), ctx.clone()));

        let finalize = api.expect(Method::PATCH, SNAPSHOT).await;
        assert_eq!(
            finalize.body,
            json!({"metadata": {"resourceVersion": "5", "finalizers": [FINALIZER]}})
        );
        finalize.ok(json_snapshot.clone());

        let create = api.expect(Method::POST, CONTENTS).await;
        assert_eq!(ctx.csi.calls(), [], "the content object comes first");
        assert_eq!(create.body["metadata"]["name"], "snapcontent-77");
        let spec = &create.body["spec"];
        assert_eq!(spec["source"]["volumeHandle"], SOURCE);
        assert_eq!(spec["driver"], DRIVER);
        assert_eq!(spec["deletionPolicy"], "Retain", "the class's");
        assert_eq!(spec["volumeSnapshotClassName"], "warren");
        assert_eq!(
            spec["volumeSnapshotRef"],
            json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "name": "snap", "namespace": "default", "uid": "77"})
        );
        create.echo(201);

        let content_status = api
            .expect(Method::PATCH, &format!("{CONTENT}/status"))
            .await;
        assert_eq!(
            ctx.csi.calls(),
            [CsiCall::CreateSnapshot(CreateSnapshotRequest {
                source_volume_id: SOURCE.into(),
                name: "snapshot-77".into(),
                ..Default::default()
            })]
        );
        assert_eq!(
            content_status.body,
            json!({"status": {"snapshotHandle": TAKEN, "readyToUse": true,
                "restoreSize": 1 << 30, "creationTime": 1_767_225_600_000_000_000_i64}})
        );
        content_status.ok(content("Retain", TAKEN));

        let snapshot_status = api
            .expect(Method::PATCH, &format!("{SNAPSHOT}/status"))
            .await;
        assert_eq!(
            snapshot_status.body,
            json!({"status": {"boundVolumeSnapshotContentName": "snapcontent-77",
                "readyToUse": true, "restoreSize": "1Gi", "creationTime": "2026-01-01T00:00:00Z"}})
        );
        snapshot_status.ok(json_snapshot);

        assert_eq!(
            api.finish(task).await.unwrap(),
            Action::requeue(Duration::from_secs(60))
        );
        assert!(api.has_event("SnapshotReady"));
    })
    .await;
}

#[tokio::test]
async fn a_content_object_made_before_is_used_and_a_failed_snapshot_is_reported() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let csi = FakeCsi::answering(Replies {
            create_snapshot: Some(Err(tonic::Status::resource_exhausted("no space"))),
            ..Default::default()
        });
        let ctx = on_n1(client, csi);
        // Our finalizer is on already: no patch for it.
        let snapshot = with_version(volume_snapshot(json!({
            "metadata": {"name": "snap", "namespace": "default", "uid": "77",
                "finalizers": [FINALIZER]},
        })));
        let task = tokio::spawn(reconcile_snapshot(Arc::new(snapshot), ctx.clone()));
        api.expect(Method::POST, CONTENTS).await.conflict();
        // No status is written for a snapshot not taken.
        let result = api.finish(task).await;
        assert!(
            matches!(
                result,
                Err(Error::Csi {
                    method: "CreateSnapshot",
                    ..
                })
            ),
            "{result:?}"
        );
        assert!(api.has_event("SnapshotFailed"));
        assert_eq!(ctx.csi.calls().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn deleting_under_delete_removes_the_snapshot_then_its_content_then_the_finalizer() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let ctx = on_n1(client, FakeCsi::default());
        let task = tokio::spawn(reconcile_snapshot(Arc::new(deleting()), ctx.clone()));
        api.expect(Method::GET, CONTENT)
            .await
            .ok(content("Delete", TAKEN));
        let delete = api.expect(Method::DELETE, CONTENT).await;
        assert_eq!(
            ctx.csi.calls(),
            [CsiCall::DeleteSnapshot(DeleteSnapshotRequest {
                snapshot_id: TAKEN.into(),
                ..Default::default()
            })],
            "the storage before the object"
        );
        delete.ok(content("Delete", TAKEN));
        let unfinalize = api.expect(Method::PATCH, SNAPSHOT).await;
        assert_eq!(
            unfinalize.body,
            json!({"metadata": {"resourceVersion": "5", "finalizers": ["other"]}})
        );
        unfinalize.ok(serde_json::to_value(deleting()).unwrap());
        assert_eq!(api.finish(task).await.unwrap(), Action::await_change());
    })
    .await;
}

#[tokio::test]
async fn deleting_under_retain_keeps_the_snapshot_and_its_content() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let ctx = on_n1(client, FakeCsi::default());
        let task = tokio::spawn(reconcile_snapshot(Arc::new(deleting()), ctx.clone()));
        api.expect(Method::GET, CONTENT)
            .await
            .ok(content("Retain", TAKEN));
        let unfinalize = api.expect(Method::PATCH, SNAPSHOT).await;
        assert_eq!(unfinalize.body["metadata"]["finalizers"], json!(["other"]));
        unfinalize.ok(serde_json::to_value(deleting()).unwrap());
        assert_eq!(api.finish(task).await.unwrap(), Action::await_change());
        assert_eq!(ctx.csi.calls(), []);
    })
    .await;
}

#[tokio::test]
async fn the_leader_deletes_an_nfs_snapshot_whose_source_is_gone() {
    within(async {
        let gone = |client, leading| source_gone(client, "n2", leading);
        // Not the leader: it reads whose the snapshot is, and leaves it to the leader.
        let (client, mut api) = mock_api::pair();
        let ctx = gone(client, false);
        let task = tokio::spawn(reconcile_snapshot(Arc::new(deleting()), ctx.clone()));
        api.expect(Method::GET, CONTENT)
            .await
            .ok(content("Delete", NFS_TAKEN));
        assert_eq!(
            api.finish(task).await.unwrap(),
            Action::requeue(Duration::from_secs(60))
        );
        assert_eq!(ctx.csi.calls(), []);

        // The leader reads the content's handle, sees an NFS snapshot, and deletes it.
        let (client, mut api) = mock_api::pair();
        let ctx = gone(client, true);
        let task = tokio::spawn(reconcile_snapshot(Arc::new(deleting()), ctx.clone()));
        // Read once, for whose it is and for its deletion policy.
        api.expect(Method::GET, CONTENT)
            .await
            .ok(content("Delete", NFS_TAKEN));
        api.expect(Method::DELETE, CONTENT).await.not_found();
        api.expect(Method::PATCH, SNAPSHOT)
            .await
            .ok(serde_json::to_value(deleting()).unwrap());
        assert_eq!(api.finish(task).await.unwrap(), Action::await_change());
        assert_eq!(
            ctx.csi.calls(),
            [CsiCall::DeleteSnapshot(DeleteSnapshotRequest {
                snapshot_id: NFS_TAKEN.into(),
                ..Default::default()
            })]
        );
    })
    .await;
}

/// Issue 20: with its source claim and volume gone, a local snapshot is deleted by the
/// node its handle names (not the leader), content and finalizer included.
#[tokio::test]
async fn the_node_holding_a_local_snapshot_deletes_it_after_its_source_is_gone() {
    within(async {
        let gone = |client, node| source_gone(client, node, false);
        // Another node reads the handle and leaves it.
        let (client, mut api) = mock_api::pair();
        let ctx = gone(client, "n2");
        let task = tokio::spawn(reconcile_snapshot(Arc::new(deleting()), ctx.clone()));
        api.expect(Method::GET, CONTENT)
            .await
            .ok(content("Delete", TAKEN));
        assert_eq!(
            api.finish(task).await.unwrap(),
            Action::requeue(Duration::from_secs(60))
        );
        assert_eq!(ctx.csi.calls(), []);

        // n1, which the handle names, deletes the snapshot, its content, then the finalizer.
        let (client, mut api) = mock_api::pair();
        let ctx = gone(client, "n1");
        let task = tokio::spawn(reconcile_snapshot(Arc::new(deleting()), ctx.clone()));
        api.expect(Method::GET, CONTENT)
            .await
            .ok(content("Delete", TAKEN));
        api.expect(Method::DELETE, CONTENT)
            .await
            .ok(content("Delete", TAKEN));
        let unfinalize = api.expect(Method::PATCH, SNAPSHOT).await;
        assert_eq!(unfinalize.body["metadata"]["finalizers"], json!(["other"]));
        unfinalize.ok(serde_json::to_value(deleting()).unwrap());
        assert_eq!(api.finish(task).await.unwrap(), Action::await_change());
        assert_eq!(
            ctx.csi.calls(),
            [CsiCall::DeleteSnapshot(DeleteSnapshotRequest {
                snapshot_id: TAKEN.into(),
                ..Default::default()
            })]
        );
    })
    .await;
}
