//! The deleter against a scripted API server and a fake CSI service: which volumes it
//! deletes, in which order (storage, then our finalizer, then the PV object), and which
//! it leaves alone.

use http::Method;
use serde_json::json;

use super::*;
use crate::test_support::context;
use crate::test_support::fake_csi::{CsiCall, FakeCsi, Replies};
use crate::test_support::fixtures::{nfs_volume, volume, NFS_HANDLE};
use crate::test_support::mock_api::{self, within};

const PV: &str = "/api/v1/persistentvolumes/pvc-1234";
const HANDLE: &str = "local#image#n1#0123";

/// A PV of n1's in `phase` under `policy`, with Warren's finalizer.
fn released(mut pv: PersistentVolume, phase: &str, policy: &str) -> PersistentVolume {
    pv.metadata.resource_version = Some("7".into());
    pv.metadata.finalizers = Some(vec![FINALIZER.into()]);
    pv.status = Some(serde_json::from_value(json!({"phase": phase})).unwrap());
    pv.spec.as_mut().unwrap().persistent_volume_reclaim_policy = Some(policy.into());
    pv
}

fn deleted_by_hand(mut pv: PersistentVolume) -> PersistentVolume {
    pv.metadata.deletion_timestamp =
        Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
    pv.metadata.finalizers = Some(vec![FINALIZER.into(), "kubernetes.io/pv-protection".into()]);
    pv
}

fn delete_call(handle: &str) -> CsiCall {
    CsiCall::DeleteVolume(DeleteVolumeRequest {
        volume_id: handle.into(),
        ..Default::default()
    })
}

#[tokio::test]
async fn a_released_volume_under_delete_goes_storage_first_then_finalizer_then_pv() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let ctx = context(client, FakeCsi::default(), "n1", false, vec![], vec![]);
        let pv = released(volume("n1", "1Gi"), "Released", "Delete");
        let json_pv = serde_json::to_value(&pv).unwrap();
        let task = tokio::spawn(reconcile_volume(Arc::new(pv), ctx.clone()));
        let unfinalize = api.expect(Method::PATCH, PV).await;
        assert_eq!(ctx.csi.calls(), [delete_call(HANDLE)], "storage first");
        assert_eq!(
            unfinalize.body,
            json!({"metadata": {"resourceVersion": "7", "finalizers": []}})
        );
        unfinalize.ok(json_pv.clone());
        api.expect(Method::DELETE, PV).await.ok(json_pv);
        assert_eq!(api.finish(task).await.unwrap(), Action::await_change());
        assert_eq!(ctx.csi.calls().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn volumes_kept_bound_or_held_elsewhere_are_not_touched() {
    within(async {
        let cases = [
            ("n1", released(volume("n1", "1Gi"), "Released", "Retain")),
            ("n1", released(volume("n1", "1Gi"), "Bound", "Delete")),
            ("n2", released(volume("n1", "1Gi"), "Released", "Delete")),
            ("n1", released(nfs_volume("1Gi"), "Released", "Delete")),
        ];
        for (node, pv) in cases {
            let (client, mut api) = mock_api::pair();
            let ctx = context(client, FakeCsi::default(), node, false, vec![], vec![]);
            let task = tokio::spawn(reconcile_volume(Arc::new(pv), ctx.clone()));
            // `finish` fails the test on any request.
            assert_eq!(
                api.finish(task).await.unwrap(),
                Action::requeue(Duration::from_secs(300))
            );
            assert_eq!(ctx.csi.calls(), [], "on {node}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_failed_delete_keeps_the_pv_and_says_why() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let csi = FakeCsi::answering(Replies {
            delete_volume: Some(tonic::Status::internal("the disk is gone")),
            ..Default::default()
        });
        let ctx = context(client, csi, "n1", false, vec![], vec![]);
        let pv = released(volume("n1", "1Gi"), "Released", "Delete");
        let task = tokio::spawn(reconcile_volume(Arc::new(pv), ctx.clone()));
        let result = api.finish(task).await;
        assert!(
            matches!(
                result,
                Err(Error::Csi {
                    method: "DeleteVolume",
                    ..
                })
            ),
            "{result:?}"
        );
        assert!(api.has_event("VolumeFailedDelete"));
        assert_eq!(ctx.csi.calls(), [delete_call(HANDLE)]);
    })
    .await;
}

#[tokio::test]
async fn a_pv_deleted_by_hand_loses_only_warrens_finalizer() {
    within(async {
        // Under Retain: the storage stays, the object goes.
        let (client, mut api) = mock_api::pair();
        let ctx = context(client, FakeCsi::default(), "n1", false, vec![], vec![]);
        let pv = deleted_by_hand(released(volume("n1", "1Gi"), "Released", "Retain"));
        let json_pv = serde_json::to_value(&pv).unwrap();
        let task = tokio::spawn(reconcile_volume(Arc::new(pv), ctx.clone()));
        let unfinalize = api.expect(Method::PATCH, PV).await;
        assert_eq!(
            unfinalize.body["metadata"]["finalizers"],
            json!(["kubernetes.io/pv-protection"])
        );
        unfinalize.ok(json_pv);
        assert_eq!(api.finish(task).await.unwrap(), Action::await_change());
        assert_eq!(ctx.csi.calls(), []);

        // Under Delete: the storage goes, and the object is not deleted a second time.
        let (client, mut api) = mock_api::pair();
        let ctx = context(client, FakeCsi::default(), "n1", false, vec![], vec![]);
        let pv = deleted_by_hand(released(volume("n1", "1Gi"), "Available", "Delete"));
        let json_pv = serde_json::to_value(&pv).unwrap();
        let task = tokio::spawn(reconcile_volume(Arc::new(pv), ctx.clone()));
        api.expect(Method::PATCH, PV).await.ok(json_pv);
        assert_eq!(api.finish(task).await.unwrap(), Action::await_change());
        assert_eq!(ctx.csi.calls(), [delete_call(HANDLE)]);
    })
    .await;
}

#[tokio::test]
async fn the_leader_deletes_a_released_nfs_volume_and_a_gone_pv_is_fine() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let ctx = context(client, FakeCsi::default(), "n2", true, vec![], vec![]);
        let mut pv = released(nfs_volume("1Gi"), "Released", "Delete");
        pv.metadata.finalizers = None;
        let task = tokio::spawn(reconcile_volume(Arc::new(pv), ctx.clone()));
        // No finalizer to drop: straight to the object, which someone deleted already.
        api.expect(Method::DELETE, PV).await.not_found();
        assert_eq!(api.finish(task).await.unwrap(), Action::await_change());
        assert_eq!(ctx.csi.calls(), [delete_call(NFS_HANDLE)]);
    })
    .await;
}
