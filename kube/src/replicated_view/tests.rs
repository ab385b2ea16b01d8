//! The ReplicatedVolume decisions on plain objects, the rounds against a scripted API
//! server, and the chart's CRD against the types.

use http::Method;
use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::Api;
use kube::CustomResourceExt;
use serde_json::json;

use super::crd_yaml::crd_yaml;
use super::decide::*;
use super::keeper::{apply_object_action, status_round};
use super::resource::*;
use crate::test_support::mock_api::{self, within};
use crate::DRIVER;

const KEY: &str = "0123456789abcdef0123456789abcdef";
const STATUS_PATH: &str = "/apis/warren.csi.dev/v1alpha1/replicatedvolumes/pvc-1/status";

fn pv(uid: &str, handle: &str, capacity: &str) -> PersistentVolume {
    serde_json::from_value(json!({
        "metadata": {"name": "pvc-1", "uid": uid},
        "spec": {
            "capacity": {"storage": capacity},
            "claimRef": {"namespace": "apps", "name": "data"},
            "csi": {
                "driver": DRIVER,
                "volumeHandle": handle,
                "volumeAttributes": {
                    "warren.csi.dev/replicas": "n1=10.0.0.1:7462,n2=10.0.0.2:7462,n3=10.0.0.3:7462",
                    "warren.csi.dev/size": "1073741824",
                    "warren.csi.dev/rebuildRate": "0",
                },
            },
        },
    }))
    .unwrap()
}

fn replicated_pv() -> PersistentVolume {
    pv("uid-1", &format!("replicated#{KEY}"), "1Gi")
}

/// The object the keeper made for `replicated_pv`, as read back at resourceVersion 5.
fn object(status: Option<ReplicatedVolumeStatus>) -> ReplicatedVolume {
    let mut object = object_for(&replicated_pv()).unwrap();
    object.metadata.resource_version = Some("5".into());
    object.status = status;
    object
}

fn engine(members: &[&str], rebuilding: &[(&str, Option<RebuildBytes>)]) -> EngineView {
    EngineView {
        key: KEY.into(),
        replicas: vec!["n1".into(), "n2".into(), "n3".into()],
        generation: 7,
        members: members.iter().map(|m| m.to_string()).collect(),
        rebuilding: rebuilding
            .iter()
            .map(|(r, progress)| RebuildView {
                replica: r.to_string(),
                progress: *progress,
            })
            .collect(),
        failed: None,
        last_rebuild: None,
    }
}

fn t(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

#[test]
fn a_replicated_pv_gets_an_object_named_and_owned_by_it_with_its_replicas() {
    let object = object_for(&replicated_pv()).unwrap();
    assert_eq!(object.metadata.name.as_deref(), Some("pvc-1"));
    let owner = &object.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("PersistentVolume", "pvc-1", "uid-1"),
        "the garbage collector deletes it with this PV (and only this one: by uid)"
    );
    assert_eq!(
        object.spec,
        ReplicatedVolumeSpec {
            persistent_volume: "pvc-1".into(),
            claim: Some("apps/data".into()),
            volume_handle: format!("replicated#{KEY}"),
            capacity: "1Gi".into(),
            replicas_wanted: 3,
            replicas: ["n1", "n2", "n3"]
                .iter()
                .enumerate()
                .map(|(i, n)| ReplicaPlacement {
                    node: n.to_string(),
                    address: format!("10.0.0.{}:7462", i + 1),
                })
                .collect(),
        }
    );
    assert!(object.status.is_none());
    // Not Warren's replicated volumes: none.
    assert_eq!(object_for(&pv("uid-2", "local#image#n1#0123", "1Gi")), None);
    let mut other_driver = replicated_pv();
    other_driver
        .spec
        .as_mut()
        .unwrap()
        .csi
        .as_mut()
        .unwrap()
        .driver = "other.csi".into();
    assert_eq!(object_for(&other_driver), None);
}

#[test]
fn the_keeper_creates_updates_and_first_marks_detached_only_what_it_keeps() {
    let pvs = [replicated_pv()];
    let everything = |_: &ReplicatedVolumeSpec| true;
    // No object yet: create it.
    let actions = object_actions(&pvs, &[], everything, t(0));
    assert_eq!(
        actions,
        [ObjectAction::Create(Box::new(object_for(&pvs[0]).unwrap()))]
    );
    // Not this keeper's: nothing.
    assert!(object_actions(&pvs, &[], |_: &ReplicatedVolumeSpec| false, t(0)).is_empty());
    // Created, no status yet: Detached, at the version seen.
    let created = object(None);
    let actions = object_actions(&pvs, &[&created], everything, t(0));
    assert_eq!(
        actions,
        [ObjectAction::FirstStatus {
            name: "pvc-1".into(),
            resource_version: "5".into(),
            status: detached_status(&created.spec, None, t(0)),
        }]
    );
    let ObjectAction::FirstStatus { status, .. } = &actions[0] else {
        unreachable!()
    };
    assert_eq!(status.state, DETACHED);
    assert_eq!(
        status
            .replicas
            .iter()
            .map(|r| (r.node.as_str(), r.address.as_deref(), r.state.as_str()))
            .collect::<Vec<_>>(),
        [
            ("n1", Some("10.0.0.1:7462"), UNKNOWN),
            ("n2", Some("10.0.0.2:7462"), UNKNOWN),
            ("n3", Some("10.0.0.3:7462"), UNKNOWN)
        ],
        "a volume staged nowhere still shows where its replicas are"
    );
    // With a status and the right spec: nothing to do.
    let whole = object(Some(detached_status(&created.spec, None, t(0))));
    assert!(object_actions(&pvs, &[&whole], everything, t(9)).is_empty());
    // The PV grew: the spec follows.
    let grown = [pv("uid-1", &format!("replicated#{KEY}"), "2Gi")];
    let actions = object_actions(&grown, &[&whole], everything, t(9));
    let [ObjectAction::UpdateSpec { name, spec }] = actions.as_slice() else {
        panic!("{actions:?}")
    };
    assert_eq!((name.as_str(), spec.capacity.as_str()), ("pvc-1", "2Gi"));
    // An object of an older PV of the same name (another uid): the garbage collector's.
    let newer = [pv("uid-9", &format!("replicated#{KEY}"), "1Gi")];
    assert!(object_actions(&newer, &[&whole], everything, t(9)).is_empty());
}

#[test]
fn a_running_engine_says_which_replicas_are_in_sync_rebuilding_or_absent() {
    let spec = object(None).spec;
    let healthy = running_status(&spec, &engine(&["n1", "n2", "n3"], &[]), "n1", t(0));
    assert_eq!(healthy.state, HEALTHY);
    assert_eq!(
        (
            healthy.engine_node.as_deref(),
            healthy.in_sync,
            healthy.generation
        ),
        (Some("n1"), Some(3), Some(7))
    );
    assert!(healthy.replicas.iter().all(|r| r.state == IN_SYNC));

    let progress = RebuildBytes {
        done: 64 << 20,
        total: 256 << 20,
        incremental: true,
    };
    let rebuilding = running_status(
        &spec,
        &engine(&["n1", "n2"], &[("n3", Some(progress))]),
        "n1",
        t(0),
    );
    assert_eq!(rebuilding.state, REBUILDING);
    assert_eq!(rebuilding.in_sync, Some(2));
    let n3 = &rebuilding.replicas[2];
    assert_eq!(
        (
            n3.node.as_str(),
            n3.address.as_deref(),
            n3.state.as_str(),
            n3.rebuild_bytes_done,
            n3.rebuild_bytes_total,
            n3.rebuild_incremental
        ),
        (
            "n3",
            Some("10.0.0.3:7462"),
            REBUILDING,
            Some(64 << 20),
            Some(256 << 20),
            Some(true)
        )
    );
    assert_eq!(rebuilding.replicas[0].rebuild_bytes_done, None);

    let degraded = running_status(&spec, &engine(&["n1", "n2"], &[]), "n1", t(0));
    assert_eq!(degraded.state, DEGRADED);
    assert_eq!(degraded.replicas[2].state, ABSENT);

    let mut fenced = engine(&["n1", "n2", "n3"], &[]);
    fenced.failed = Some("fenced by a newer engine".into());
    let failed = running_status(&spec, &fenced, "n1", t(0));
    assert_eq!(
        (failed.state.as_str(), failed.message.as_deref()),
        (FAILED, Some("fenced by a newer engine"))
    );
}

#[test]
fn a_node_writes_a_status_only_when_it_changed_or_for_the_slow_refresh() {
    let running = [engine(&["n1", "n2", "n3"], &[])];
    let mut written = Written::new();
    // Never written: write it.
    let bare = object(None);
    let writes = status_writes("n1", &running, &[&bare], &written, t(0));
    assert_eq!(writes.len(), 1);
    assert_eq!(
        writes[0].resource_version, None,
        "the engine's node is the authority"
    );
    assert_eq!(writes[0].status.state, HEALTHY);
    // Written; the object does not show it yet: not again.
    written.insert("pvc-1".into(), (writes[0].status.clone(), t(0)));
    assert!(status_writes("n1", &running, &[&bare], &written, t(5)).is_empty());
    // The object shows it: nothing to write, until the refresh is due.
    let shown = object(Some(writes[0].status.clone()));
    let none = Written::new();
    assert!(status_writes("n1", &running, &[&shown], &none, t(60)).is_empty());
    let refresh = i64::try_from(REFRESH.as_secs()).unwrap();
    assert_eq!(
        status_writes("n1", &running, &[&shown], &none, t(refresh + 1)).len(),
        1,
        "a slow heartbeat"
    );
    // A change (a replica gone): at once.
    let degraded = [engine(&["n1", "n2"], &[])];
    let writes = status_writes("n1", &degraded, &[&shown], &written, t(6));
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].status.state, DEGRADED);
    assert_eq!(writes[0].status.replicas[2].state, ABSENT);
    // Another node's engine: not this node's to write.
    assert!(status_writes("n2", &[], &[&shown], &none, t(6)).is_empty());
}

#[test]
fn a_node_whose_engine_stopped_marks_the_volume_detached_at_the_version_it_saw() {
    let spec = object(None).spec;
    let mut last = running_status(&spec, &engine(&["n1", "n2", "n3"], &[]), "n1", t(0));
    last.last_rebuild = Some(LastRebuild {
        bytes: 4 << 20,
        seconds: 0.5,
        incremental: true,
    });
    let shown = object(Some(last.clone()));
    // Unstaged here (or this Warren restarted): no engine runs for it.
    let writes = status_writes("n1", &[], &[&shown], &Written::new(), t(10));
    assert_eq!(writes.len(), 1);
    let detached = &writes[0];
    assert_eq!(detached.resource_version.as_deref(), Some("5"));
    assert_eq!(detached.status.state, DETACHED);
    assert_eq!(detached.status.engine_node, None);
    assert_eq!(detached.status.in_sync, None);
    assert_eq!(
        (detached.status.generation, &detached.status.last_rebuild),
        (Some(7), &last.last_rebuild),
        "what was last seen is kept"
    );
    // Once written, not again while the object catches up.
    let mut written = Written::new();
    written.insert("pvc-1".into(), (detached.status.clone(), t(10)));
    assert!(status_writes("n1", &[], &[&shown], &written, t(15)).is_empty());
    // Detached already: nothing more from anyone.
    let quiet = object(Some(detached.status.clone()));
    assert!(status_writes("n1", &[], &[&quiet], &Written::new(), t(20)).is_empty());
}

#[test]
fn statuses_compare_without_their_time() {
    let spec = object(None).spec;
    let a = detached_status(&spec, None, t(0));
    let b = detached_status(&spec, None, t(100));
    assert_ne!(a, b);
    assert!(same(&a, &b));
    assert_eq!(
        a.updated.as_deref().unwrap().parse::<Timestamp>().unwrap(),
        t(0)
    );
    assert_eq!(t(100).duration_since(t(0)), SignedDuration::from_secs(100));
}

#[tokio::test]
async fn a_status_round_patches_the_status_once_and_retries_a_failed_write() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let rv_api: Api<ReplicatedVolume> = Api::all(client);
        let running = vec![engine(
            &["n1", "n2"],
            &[(
                "n3",
                Some(RebuildBytes {
                    done: 1 << 20,
                    total: 8 << 20,
                    incremental: false,
                }),
            )],
        )];
        let bare = object(None);
        let round = |written: crate::replicated_view::decide::Written, now: Timestamp| {
            let rv_api = rv_api.clone();
            let running = running.clone();
            let bare = bare.clone();
            tokio::spawn(async move {
                let mut written = written;
                status_round(&rv_api, "n1", &running, &[&bare], &mut written, now).await;
                written
            })
        };
        // The API refuses the first write: nothing is remembered as written.
        let task = round(Written::new(), t(0));
        let call = api.expect(Method::PATCH, STATUS_PATH).await;
        call.fail(500, "InternalError");
        let written = api.finish(task).await;
        assert!(written.is_empty());
        // The next round writes it: a merge patch of the whole status.
        let task = round(written, t(5));
        let call = api.expect(Method::PATCH, STATUS_PATH).await;
        let status = &call.body["status"];
        assert_eq!(call.body.get("metadata"), None, "no precondition");
        assert_eq!(status["state"], json!(REBUILDING));
        assert_eq!(status["engineNode"], json!("n1"));
        assert_eq!(status["inSync"], json!(2));
        assert_eq!(status["replicas"][2]["rebuildBytesDone"], json!(1 << 20));
        assert_eq!(status["replicas"][2]["rebuildBytesTotal"], json!(8 << 20));
        let mut echoed = serde_json::to_value(object(None)).unwrap();
        echoed["status"] = status.clone();
        call.ok(echoed);
        let written = api.finish(task).await;
        assert_eq!(written.len(), 1);
        // Nothing changed: the round after sends nothing.
        let task = round(written, t(10));
        let written = api.finish(task).await;
        assert_eq!(written.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn the_keeper_creates_with_an_owner_and_writes_the_first_status_at_a_version() {
    within(async {
        let (client, mut api) = mock_api::pair();
        let rv_api: Api<ReplicatedVolume> = Api::all(client);
        let create = ObjectAction::Create(Box::new(object_for(&replicated_pv()).unwrap()));
        let task = {
            let rv_api = rv_api.clone();
            tokio::spawn(async move { apply_object_action(&rv_api, &create).await })
        };
        let call = api
            .expect(
                Method::POST,
                "/apis/warren.csi.dev/v1alpha1/replicatedvolumes",
            )
            .await;
        assert_eq!(
            call.body["metadata"]["ownerReferences"][0]["uid"],
            json!("uid-1")
        );
        assert_eq!(call.body["spec"]["replicasWanted"], json!(3));
        // Another keeper made it first: fine.
        call.conflict();
        api.finish(task).await.unwrap();

        let first = ObjectAction::FirstStatus {
            name: "pvc-1".into(),
            resource_version: "5".into(),
            status: detached_status(&object(None).spec, None, t(0)),
        };
        let task = tokio::spawn(async move { apply_object_action(&rv_api, &first).await });
        let call = api.expect(Method::PATCH, STATUS_PATH).await;
        assert_eq!(call.body["metadata"]["resourceVersion"], json!("5"));
        assert_eq!(call.body["status"]["state"], json!(DETACHED));
        assert_eq!(call.body["status"]["engineNode"], json!(null), "cleared");
        // An engine's node wrote first: its status stands.
        call.conflict();
        api.finish(task).await.unwrap();
    })
    .await;
}

#[test]
fn the_crd_is_cluster_scoped_with_a_status_and_the_columns_kubectl_shows() {
    let crd = serde_json::to_value(ReplicatedVolume::crd()).unwrap();
    assert_eq!(
        crd["metadata"]["name"],
        json!("replicatedvolumes.warren.csi.dev")
    );
    assert_eq!(crd["spec"]["scope"], json!("Cluster"));
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["wrv"]));
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["subresources"]["status"], json!({}));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        ["Claim", "Size", "Replicas", "In Sync", "Engine", "State", "Age"]
    );
}

#[test]
fn the_chart_ships_the_crd_the_code_defines() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/helm/warren/files/replicatedvolumes-crd.yaml"
    );
    let generated = crd_yaml();
    if std::env::var_os("WARREN_WRITE_CRD").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let shipped = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        shipped == generated,
        "{path} differs from the CRD of kube/src/replicated_view/resource.rs; write it again with \
         WARREN_WRITE_CRD=1 cargo test -p warren-kube the_chart_ships_the_crd, then deploy/render.sh"
    );
}

#[test]
fn the_yaml_of_a_value_is_block_style_with_quoted_strings() {
    let yaml = {
        let mut out = String::new();
        super::crd_yaml::write_for_test(
            &mut out,
            &json!({"a": {"b": ["x", {"c": 1, "d": true}], "e": [], "on": "yes"}}),
        );
        out
    };
    assert_eq!(
        yaml,
        "a:\n  b:\n    - \"x\"\n    - c: 1\n      d: true\n  e: []\n  \"on\": \"yes\"\n"
    );
}
