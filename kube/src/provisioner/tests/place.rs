//! Placement of Immediate-binding claims by the leader: the node it picks and how it
//! writes the choice.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use crate::claims::PLACED_ON;
use crate::error::Error;
use crate::provisioner::reconcile_claim;
use crate::test_support::context;
use crate::test_support::fake_csi::FakeCsi;
use crate::test_support::fixtures::{claim, class, volume};
use crate::test_support::mock_api::{self, within};
use crate::TOPOLOGY_KEY;

const NODES: &str = "/api/v1/nodes";
const CLAIM: &str = "/api/v1/namespaces/default/persistentvolumeclaims/data";

/// The Node objects' metadata, as a label-selected metadata list answers it.
fn nodes(names: &[&str]) -> Value {
    let items: Vec<Value> = names
        .iter()
        .map(|n| {
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": n, "labels": {TOPOLOGY_KEY: n}}})
        })
        .collect();
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
        "metadata": {"resourceVersion": "1"}, "items": items})
}

/// `count` Warren volumes on `node`, under distinct names.
fn volumes_on(node: &str, count: usize) -> Vec<PersistentVolume> {
    (0..count)
        .map(|i| {
            let mut pv = volume(node, "1Gi");
            pv.metadata.name = Some(format!("pvc-{node}-{i}"));
            pv
        })
        .collect()
}

fn unplaced() -> Arc<k8s_openapi::api::core::v1::PersistentVolumeClaim> {
    let mut c = claim(json!({}), json!({}));
    c.metadata.resource_version = Some("9".into());
    Arc::new(c)
}

/// Runs a leader's reconcile of the unplaced claim: the Node list is answered with
/// `nodes`; returns the node its placement patch names (after checking the patch) and
/// the reconcile's result.
async fn placement(class: StorageClass, nodes_answer: Value) -> (String, Action) {
    let (client, mut api) = mock_api::pair();
    let mut volumes = volumes_on("n1", 2);
    volumes.extend(volumes_on("n2", 1));
    let ctx = context(client, FakeCsi::default(), "n1", true, vec![class], volumes);
    let task = tokio::spawn(reconcile_claim(unplaced(), ctx.clone()));
    let list = api.expect(Method::GET, NODES).await;
    assert!(
        list.query
            .contains("labelSelector=topology.warren.csi.dev%2Fnode"),
        "only Warren's nodes: {}",
        list.query
    );
    list.ok(nodes_answer);
    let patch = api.expect(Method::PATCH, CLAIM).await;
    assert_eq!(
        patch.body["metadata"]["resourceVersion"], "9",
        "placed at the version read, so never twice"
    );
    let node = patch.body["metadata"]["annotations"][PLACED_ON]
        .as_str()
        .unwrap()
        .to_string();
    patch.ok(serde_json::to_value(&*unplaced()).unwrap());
    let action = api.finish(task).await.unwrap();
    assert_eq!(ctx.csi.calls(), [], "placing creates nothing");
    (node, action)
}

#[tokio::test]
async fn the_leader_places_a_claim_on_the_node_with_the_fewest_volumes() {
    within(async {
        let (node, action) = placement(class("Immediate", true), nodes(&["n1", "n2", "n3"])).await;
        assert_eq!(node, "n3");
        assert_eq!(action, Action::requeue(Duration::from_secs(60)));
        // Equal loads: the first by name.
        let (node, _) = placement(class("Immediate", true), nodes(&["n4", "n3", "n1"])).await;
        assert_eq!(node, "n3");
    })
    .await;
}

#[tokio::test]
async fn placement_stays_within_the_classs_allowed_topologies() {
    within(async {
        let mut limited = class("Immediate", true);
        limited.allowed_topologies = Some(
            serde_json::from_value(
                json!([{"matchLabelExpressions": [{"key": TOPOLOGY_KEY, "values": ["n1", "n2"]}]}]),
            )
            .unwrap(),
        );
        let (node, _) = placement(limited, nodes(&["n1", "n2", "n3"])).await;
        assert_eq!(node, "n2", "n3 is emptier but not allowed");
    })
    .await;
}

#[tokio::test]
async fn a_claim_changed_meanwhile_is_looked_at_again_not_failed() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let ctx = context(
            client,
            FakeCsi::default(),
            "n1",
            true,
            vec![class("Immediate", true)],
            vec![],
        );
        let task = tokio::spawn(reconcile_claim(unplaced(), ctx));
        api.expect(Method::GET, NODES).await.ok(nodes(&["n1"]));
        api.expect(Method::PATCH, CLAIM).await.conflict();
        assert_eq!(
            api.finish(task).await.unwrap(),
            Action::requeue(Duration::from_secs(60))
        );
    })
    .await;
}

#[tokio::test]
async fn without_a_warren_node_the_claim_gets_an_event_and_no_placement() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let ctx = context(
            client,
            FakeCsi::default(),
            "n1",
            true,
            vec![class("Immediate", true)],
            vec![],
        );
        let task = tokio::spawn(reconcile_claim(unplaced(), ctx));
        api.expect(Method::GET, NODES).await.ok(nodes(&[]));
        let result = api.finish(task).await;
        assert!(matches!(result, Err(Error::Invalid(_))), "{result:?}");
        assert!(api.has_event("ProvisioningFailed"));
    })
    .await;
}

#[tokio::test]
async fn a_node_that_does_not_lead_places_nothing() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let ctx = context(
            client,
            FakeCsi::default(),
            "n1",
            false,
            vec![class("Immediate", true)],
            vec![],
        );
        let task = tokio::spawn(reconcile_claim(unplaced(), ctx));
        assert_eq!(
            api.finish(task).await.unwrap(),
            Action::requeue(Duration::from_secs(60))
        );
    })
    .await;
}
