//! Expansion of a bound claim by the node holding its volume, recorded as
//! external-resizer records it.

use std::sync::Arc;
use std::time::Duration;

use csi_proto::v1::{CapacityRange, ControllerExpandVolumeRequest, ControllerExpandVolumeResponse};
use http::Method;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use crate::claims::CONTROLLER_RESIZE_IN_PROGRESS;
use crate::error::Error;
use crate::provisioner::{capabilities, reconcile_claim};
use crate::test_support::context;
use crate::test_support::fake_csi::{CsiCall, FakeCsi, Replies};
use crate::test_support::fixtures::{claim, class, nfs_class, nfs_volume, volume, NFS_HANDLE};
use crate::test_support::mock_api::{self, within, MockApi};

const CLAIM_STATUS: &str = "/api/v1/namespaces/default/persistentvolumeclaims/data/status";
const PV: &str = "/api/v1/persistentvolumes/pvc-1234";
const GIB: i64 = 1 << 30;

/// The claim `data`, bound to `pvc-1234`, asking for 2Gi; `extra` adds to its spec.
fn grown(extra: Value) -> PersistentVolumeClaim {
    let mut spec = json!({"volumeName": "pvc-1234", "resources": {"requests": {"storage": "2Gi"}}});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    claim(json!({}), spec)
}

fn expanded_to(bytes: i64, node_step: bool) -> Replies {
    Replies {
        expand: Some(Ok(ControllerExpandVolumeResponse {
            capacity_bytes: bytes,
            node_expansion_required: node_step,
        })),
        ..Default::default()
    }
}

fn expand_call(handle: &str, block: bool) -> CsiCall {
    CsiCall::Expand(ControllerExpandVolumeRequest {
        volume_id: handle.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: 2 * GIB,
            limit_bytes: 0,
        }),
        volume_capability: capabilities(&["ReadWriteOnce".into()], block, "", &[])
            .into_iter()
            .next(),
        ..Default::default()
    })
}

/// The first step: the claim records the resize as under way before anything grows.
async fn resize_recorded(api: &mut MockApi, claim: &PersistentVolumeClaim) {
    let started = api.expect(Method::PATCH, CLAIM_STATUS).await;
    assert_eq!(
        started.body,
        json!({"status": {"allocatedResources": {"storage": "2Gi"},
            "allocatedResourceStatuses": {"storage": CONTROLLER_RESIZE_IN_PROGRESS}}})
    );
    started.ok(serde_json::to_value(claim).unwrap());
}

#[tokio::test]
async fn a_filesystem_volume_grows_then_waits_for_the_kubelet() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let pv = volume("n1", "1Gi");
        let ctx = context(
            client,
            FakeCsi::answering(expanded_to(2 * GIB, true)),
            "n1",
            false,
            vec![class("WaitForFirstConsumer", true)],
            vec![pv.clone()],
        );
        let claim = grown(json!({}));
        let task = tokio::spawn(reconcile_claim(Arc::new(claim.clone()), ctx.clone()));
        resize_recorded(&mut api, &claim).await;

        let pv_patch = api.expect(Method::PATCH, PV).await;
        assert_eq!(
            ctx.csi.calls(),
            [expand_call("local#image#n1#0123", false)],
            "the volume grows after the claim says so, before the PV does"
        );
        assert_eq!(
            pv_patch.body,
            json!({"spec": {"capacity": {"storage": "2Gi"}}})
        );
        pv_patch.ok(serde_json::to_value(&pv).unwrap());

        let done = api.expect(Method::PATCH, CLAIM_STATUS).await;
        let status = &done.body["status"];
        assert_eq!(
            status["allocatedResourceStatuses"],
            json!({"storage": "NodeResizePending"})
        );
        assert_eq!(status["conditions"][0]["type"], "FileSystemResizePending");
        assert_eq!(status["conditions"][0]["status"], "True");
        assert!(
            status["capacity"].is_null(),
            "the kubelet records the capacity"
        );
        done.ok(serde_json::to_value(&claim).unwrap());

        assert_eq!(
            api.finish(task).await.unwrap(),
            Action::requeue(Duration::from_secs(60))
        );
        assert!(api.has_event("VolumeResizeSuccessful"));
        assert_eq!(ctx.csi.calls().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_block_volume_is_done_at_once_at_the_size_the_volume_got() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let pv = volume("n1", "1Gi");
        // The volume rounds up past what was asked; no node step for raw blocks.
        let ctx = context(
            client,
            FakeCsi::answering(expanded_to(3 * GIB, true)),
            "n1",
            false,
            vec![class("WaitForFirstConsumer", true)],
            vec![pv.clone()],
        );
        let claim = grown(json!({"volumeMode": "Block"}));
        let task = tokio::spawn(reconcile_claim(Arc::new(claim.clone()), ctx.clone()));
        resize_recorded(&mut api, &claim).await;
        let pv_patch = api.expect(Method::PATCH, PV).await;
        assert_eq!(ctx.csi.calls(), [expand_call("local#image#n1#0123", true)]);
        assert_eq!(
            pv_patch.body,
            json!({"spec": {"capacity": {"storage": "3Gi"}}})
        );
        pv_patch.ok(serde_json::to_value(&pv).unwrap());
        let done = api.expect(Method::PATCH, CLAIM_STATUS).await;
        assert_eq!(
            done.body,
            json!({"status": {"capacity": {"storage": "3Gi"},
                "allocatedResourceStatuses": null, "conditions": []}})
        );
        done.ok(serde_json::to_value(&claim).unwrap());
        api.finish(task).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_failed_expansion_leaves_the_pv_and_says_why() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let csi = FakeCsi::answering(Replies {
            expand: Some(Err(tonic::Status::out_of_range("no space left"))),
            ..Default::default()
        });
        let ctx = context(
            client,
            csi,
            "n1",
            false,
            vec![class("WaitForFirstConsumer", true)],
            vec![volume("n1", "1Gi")],
        );
        let claim = grown(json!({}));
        let task = tokio::spawn(reconcile_claim(Arc::new(claim.clone()), ctx.clone()));
        resize_recorded(&mut api, &claim).await;
        // Nothing more: the claim stays ControllerResizeInProgress, to be retried.
        let result = api.finish(task).await;
        assert!(
            matches!(
                result,
                Err(Error::Csi {
                    method: "ControllerExpandVolume",
                    ..
                })
            ),
            "{result:?}"
        );
        assert!(api.has_event("VolumeResizeFailed"));
    })
    .await;
}

#[tokio::test]
async fn an_nfs_volume_is_grown_by_the_leader_only() {
    within(async {
        let claim = grown(json!({"storageClassName": "warren-nfs"}));
        for leading in [false, true] {
            let (client, mut api) = mock_api::pair();
            let ctx = context(
                client,
                FakeCsi::answering(expanded_to(2 * GIB, false)),
                "n2",
                leading,
                vec![nfs_class("WaitForFirstConsumer", true)],
                vec![nfs_volume("1Gi")],
            );
            let task = tokio::spawn(reconcile_claim(Arc::new(claim.clone()), ctx.clone()));
            if leading {
                resize_recorded(&mut api, &claim).await;
                api.expect(Method::PATCH, PV)
                    .await
                    .ok(serde_json::to_value(nfs_volume("2Gi")).unwrap());
                api.expect(Method::PATCH, CLAIM_STATUS)
                    .await
                    .ok(serde_json::to_value(&claim).unwrap());
                assert_eq!(ctx.csi.calls(), [expand_call(NFS_HANDLE, false)]);
            }
            api.finish(task).await.unwrap();
            assert_eq!(ctx.csi.calls().len(), usize::from(leading));
        }
    })
    .await;
}
