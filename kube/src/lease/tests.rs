//! Leader election against a scripted API server: which requests a node sends to take,
//! renew and give up the Lease, and what it makes of the answers.

use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use serde_json::{json, Value};

use super::*;
use crate::test_support::mock_api::{self, within};

const NAME: &str = "warren-edge-placement";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/warren/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/warren/leases/warren-edge-placement";

fn config(holder: &str) -> LeaseConfig {
    LeaseConfig {
        namespace: "warren".into(),
        name: NAME.into(),
        holder: holder.into(),
        duration: Duration::from_secs(15),
    }
}

fn micro_time(t: Timestamp) -> Value {
    serde_json::to_value(MicroTime(t)).unwrap()
}

fn parse_time(v: &Value) -> Timestamp {
    v.as_str()
        .unwrap_or_else(|| panic!("a time, got {v}"))
        .parse()
        .unwrap()
}

/// The Lease as the API server has it: held by `holder`, renewed `age` ago.
fn lease(holder: &str, age: Duration, transitions: i32, version: &str) -> Value {
    let renewed = Timestamp::now() - SignedDuration::try_from(age).unwrap();
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": NAME, "namespace": "warren", "resourceVersion": version},
        "spec": {
            "holderIdentity": holder, "leaseDurationSeconds": 15,
            "acquireTime": micro_time(renewed), "renewTime": micro_time(renewed),
            "leaseTransitions": transitions,
        },
    })
}

fn try_lead(client: kube::Client, holder: &str) -> tokio::task::JoinHandle<Result<bool>> {
    let config = config(holder);
    tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, "warren");
        try_acquire_or_renew(&api, &config).await
    })
}

#[tokio::test]
async fn a_node_creates_the_missing_lease_and_leads() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let before = Timestamp::now();
        let task = try_lead(client, "n1");
        api.expect(Method::GET, LEASE).await.not_found();
        let create = api.expect(Method::POST, LEASES).await;
        let spec = &create.body["spec"];
        assert_eq!(create.body["metadata"]["name"], NAME);
        assert_eq!(spec["holderIdentity"], "n1");
        assert_eq!(spec["leaseDurationSeconds"], 15);
        assert_eq!(spec["leaseTransitions"], 0);
        assert!(parse_time(&spec["renewTime"]) >= before);
        create.echo(201);
        assert!(api.finish(task).await.unwrap(), "the creator leads");
    })
    .await;
}

#[tokio::test]
async fn of_two_nodes_creating_the_lease_the_one_refused_does_not_lead() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let task = try_lead(client, "n1");
        api.expect(Method::GET, LEASE).await.not_found();
        api.expect(Method::POST, LEASES).await.conflict();
        assert!(!api.finish(task).await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn a_lease_another_node_renewed_recently_is_left_alone() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let task = try_lead(client, "n1");
        api.expect(Method::GET, LEASE)
            .await
            .ok(lease("n2", Duration::from_secs(2), 3, "41"));
        // No write at all: `finish` fails on any further request.
        assert!(!api.finish(task).await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_at_the_resource_version_read() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let before = Timestamp::now();
        let task = try_lead(client, "n1");
        api.expect(Method::GET, LEASE)
            .await
            .ok(lease("n2", Duration::from_secs(60), 3, "41"));
        let replace = api.expect(Method::PUT, LEASE).await;
        let spec = &replace.body["spec"];
        assert_eq!(replace.body["metadata"]["resourceVersion"], "41");
        assert_eq!(spec["holderIdentity"], "n1");
        assert_eq!(spec["leaseTransitions"], 4, "a takeover is a transition");
        assert!(parse_time(&spec["acquireTime"]) >= before);
        assert!(parse_time(&spec["renewTime"]) >= before);
        replace.echo(200);
        assert!(api.finish(task).await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn a_renewal_keeps_the_holder_and_a_conflict_means_not_leading() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let before = Timestamp::now();
        let task = try_lead(client, "n1");
        let held = lease("n1", Duration::from_secs(5), 2, "57");
        let acquired = held["spec"]["acquireTime"].clone();
        api.expect(Method::GET, LEASE).await.ok(held);
        let renew = api.expect(Method::PUT, LEASE).await;
        let spec = &renew.body["spec"];
        assert_eq!(renew.body["metadata"]["resourceVersion"], "57");
        assert_eq!(spec["holderIdentity"], "n1");
        assert_eq!(spec["leaseTransitions"], 2, "a renewal is no transition");
        assert_eq!(spec["acquireTime"], acquired);
        assert!(parse_time(&spec["renewTime"]) >= before);
        // Someone else wrote the Lease since it was read.
        renew.conflict();
        assert!(!api.finish(task).await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_api_server_is_an_error_not_a_verdict() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let task = try_lead(client, "n1");
        api.expect(Method::GET, LEASE)
            .await
            .fail(500, "InternalError");
        assert!(api.finish(task).await.is_err());
    })
    .await;
}

#[tokio::test]
async fn run_leads_and_gives_the_lease_up_when_stopped() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let (leading_tx, mut leading) = watch::channel(false);
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(run(client, config("n1"), leading_tx, stop));
        api.expect(Method::GET, LEASE).await.not_found();
        api.expect(Method::POST, LEASES).await.echo(201);
        leading.wait_for(|l| *l).await.unwrap();
        stop_tx.send_replace(true);
        // On the way out: the lease is read again and handed back, at its version.
        api.expect(Method::GET, LEASE)
            .await
            .ok(lease("n1", Duration::from_secs(1), 0, "60"));
        let release = api.expect(Method::PUT, LEASE).await;
        assert_eq!(release.body["metadata"]["resourceVersion"], "60");
        assert!(release.body["spec"]["holderIdentity"].is_null());
        assert!(release.body["spec"]["renewTime"].is_null());
        release.echo(200);
        api.finish(task).await;
        assert!(!*leading.borrow(), "no longer leading once stopped");
    })
    .await;
}
