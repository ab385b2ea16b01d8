//! CreateVolume of replicated volumes, against fake nodes (see `support` for why fakes).

mod support;

use std::time::{Duration, Instant};

use csi_proto::v1::volume_capability::access_mode::Mode as AccessMode;
use csi_proto::v1::*;
use support::*;
use tonic::Code;
use warren_controller::records::{State, VolumeRecord};
use warren_core::ids::{Key, Layout, ReplicatedVolumeId, VolumeId};
use warren_core::params::{ReplicatedContext, CONTEXT_FS_TYPE};
use warren_core::storage::Allocation;

#[tokio::test]
async fn placed_on_the_nodes_with_most_room_each_told_the_members() {
    let c = cluster(&[
        ("n1", 5, true),
        ("n2", 9, true),
        ("n3", 7, true),
        ("big", 100, false),
    ]);
    let req = replicated_request(
        "pvc-a",
        &[
            ("dataLocality", "disabled"),
            ("fsType", "xfs"),
            ("rebuildRateMiB", "10"),
        ],
    );
    let volume = c.create(req).await.unwrap();
    let id = ReplicatedVolumeId::parse(&volume.volume_id).unwrap();
    let ctx = ReplicatedContext::read(&volume.volume_context).unwrap();
    let placed: Vec<(&str, &str)> = ctx
        .replicas
        .iter()
        .map(|r| (r.node.as_str(), r.endpoint.as_str()))
        .collect();
    assert_eq!(placed, [("n2", "n2:7460"), ("n3", "n3:7460")]);
    assert_eq!((ctx.size_bytes, ctx.rebuild_rate), (GIB, 10 << 20));
    assert_eq!(volume.volume_context[CONTEXT_FS_TYPE], "xfs");
    assert_eq!(volume.capacity_bytes, GIB as i64);
    assert!(
        volume.accessible_topology.is_empty(),
        "usable from any node"
    );
    for node in ["n2", "n3"] {
        let replica = c.node(node).replica(id.replica_name()).unwrap();
        assert_eq!(replica.members, ["n2", "n3"]);
        assert_eq!(replica.size_bytes, GIB);
    }
    assert!(c.node("n1").replicas().is_empty());
    assert!(
        c.node("big").changes().is_empty(),
        "no replica service: never asked"
    );
    let rec = c.records().replicated(&id.key).unwrap();
    assert_eq!(rec.state, State::Ready);
}

#[tokio::test]
async fn locality_puts_a_replica_on_the_consumer_and_strict_pins_the_volume() {
    let c = cluster(&[("n1", 2, true), ("n2", 9, true), ("n3", 7, true)]);
    let mut req = replicated_request("pvc-a", &[]);
    req.accessibility_requirements = Some(TopologyRequirement {
        requisite: vec![topology("n1"), topology("n2"), topology("n3")],
        preferred: vec![topology("n1"), topology("n2")],
    });
    let volume = c.create(req.clone()).await.unwrap();
    let nodes: Vec<String> = ReplicatedContext::read(&volume.volume_context)
        .unwrap()
        .replicas
        .into_iter()
        .map(|r| r.node)
        .collect();
    assert_eq!(nodes, ["n1", "n2"]);
    assert!(volume.accessible_topology.is_empty());

    req.name = "pvc-strict".into();
    req.parameters
        .insert("dataLocality".into(), "strict".into());
    let volume = c.create(req).await.unwrap();
    assert_eq!(
        volume.accessible_topology,
        [topology("n1"), topology("n2")],
        "strict: only where a replica is"
    );
}

#[tokio::test]
async fn create_is_idempotent_by_name_and_names_are_one_namespace() {
    let c = cluster(&[("n1", 5, true), ("n2", 5, true)]);
    let req = replicated_request("pvc-a", &[]);
    let first = c.create(req.clone()).await.unwrap();
    let changes = c.node("n1").changes().len();
    let again = c.create(req.clone()).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(
        c.node("n1").changes().len(),
        changes,
        "a Ready volume asks no node"
    );

    let mut bigger = req.clone();
    bigger.capacity_range = Some(CapacityRange {
        required_bytes: 2 * GIB as i64,
        limit_bytes: 0,
    });
    let mut three = req.clone();
    three.parameters.insert("replicas".into(), "1".into());
    for other in [bigger, three] {
        let err = c.create(other).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    }

    // A local volume's name is taken for replicated volumes, and the other way round.
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
    let mut c = c;
    c.restart(); // the service reads the record written beside it
    let err = c
        .create(replicated_request("pvc-local", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("local volume"), "{err:?}");
    let mut local = replicated_request("pvc-a", &[]);
    local.parameters.clear();
    let err = c.create(local).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("replicated volume"), "{err:?}");
}

#[tokio::test]
async fn too_few_eligible_nodes_is_resource_exhausted_naming_why() {
    let c = cluster(&[
        ("n1", 5, true),
        ("n2", 5, true),
        ("n3", 50, false),
        ("n4", 5, true),
    ]);
    c.node("n4").set_mode(Mode::Down);
    let err = c
        .create(replicated_request("pvc-a", &[("replicas", "3")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(
        err.message(),
        "replicated volume needs 3 nodes, 2 eligible (n1, n2); n3: no replica service; \
         n4: unreachable (cannot reach node n4)"
    );
    assert_eq!(c.record_files(), 0);
    for fake in c.fakes.values() {
        assert!(fake.changes().is_empty());
    }
}

#[tokio::test]
async fn a_hanging_node_is_not_waited_for() {
    let c = cluster(&[("n1", 5, true), ("n2", 5, true), ("slow", 50, true)]);
    c.node("slow").set_mode(Mode::Hang);
    let started = Instant::now();
    let volume = c.create(replicated_request("pvc-a", &[])).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let ctx = ReplicatedContext::read(&volume.volume_context).unwrap();
    assert!(ctx.replicas.iter().all(|r| r.node != "slow"));
    let err = c
        .create(replicated_request("pvc-b", &[("replicas", "3")]))
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("slow: unreachable (no answer within 3s)"),
        "{err:?}"
    );
}

#[tokio::test]
async fn bad_requests_are_refused_before_any_record_or_node_call() {
    let c = cluster(&[("n1", 5, true), ("n2", 5, true), ("n3", 5, true)]);
    let mut cases = Vec::new();
    for params in [
        vec![("replicas", "9")],
        vec![("replicas", "0")],
        vec![("fsType", "btrfs")],
        vec![("dataLocality", "always")],
        vec![("spreadRequired", "true")],
        vec![("layout", "dir")],
        vec![("replicaz", "2")],
    ] {
        cases.push(replicated_request("pvc-bad", &params));
    }
    let mut multi = replicated_request("pvc-bad", &[]);
    multi.volume_capabilities = vec![mount_cap(AccessMode::MultiNodeMultiWriter)];
    cases.push(multi);
    let mut none = replicated_request("pvc-bad", &[]);
    none.volume_capabilities.clear();
    cases.push(none);
    let mut clone = replicated_request("pvc-bad", &[]);
    clone.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(
            volume_content_source::VolumeSource {
                volume_id: format!("replicated#{}", Key::random()),
            },
        )),
    });
    cases.push(replicated_request("", &[]));
    for req in cases {
        let err = c.create(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{req:?}: {err:?}");
    }
    // A source that does not exist is NOT_FOUND, as the spec asks (before the refusal of
    // copies into replicated volumes), and also touches nothing.
    let err = c.create(clone).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(c.record_files(), 0);
    for fake in c.fakes.values() {
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    }
}

#[tokio::test]
async fn a_refusing_node_undoes_the_whole_volume() {
    let c = cluster(&[("n1", 9, true), ("n2", 5, true)]);
    c.node("n2").set_mode(Mode::RefuseCreate);
    let err = c
        .create(replicated_request("pvc-a", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().starts_with("node n2: "), "{err:?}");
    assert!(
        c.node("n1").replicas().is_empty(),
        "n1's replica taken back"
    );
    assert_eq!(c.record_files(), 0);
    // The name is free again.
    c.node("n2").set_mode(Mode::Up);
    c.create(replicated_request("pvc-a", &[])).await.unwrap();
}

/// In a cluster the controller knows the Node objects' labels (`Nodes::set_labels`, from
/// node discovery): a required spread over a zone label puts the replicas in two zones,
/// even where free space alone would pick two nodes of one zone.
#[tokio::test]
async fn a_required_spread_uses_the_nodes_labels() {
    let c = cluster(&[("n1", 9, true), ("n2", 8, true), ("n3", 1, true)]);
    let zone = |z: &str| {
        std::collections::BTreeMap::from([(
            "topology.kubernetes.io/zone".to_string(),
            z.to_string(),
        )])
    };
    c.nodes.set_labels("n1", zone("a"));
    c.nodes.set_labels("n2", zone("a"));
    c.nodes.set_labels("n3", zone("b"));
    let req = replicated_request(
        "pvc-spread",
        &[
            ("dataLocality", "disabled"),
            ("spreadKey", "topology.kubernetes.io/zone"),
            ("spreadRequired", "true"),
        ],
    );
    let volume = c.create(req).await.unwrap();
    let ctx = ReplicatedContext::read(&volume.volume_context).unwrap();
    let mut placed: Vec<&str> = ctx.replicas.iter().map(|r| r.node.as_str()).collect();
    placed.sort();
    assert_eq!(
        placed,
        ["n1", "n3"],
        "one replica per zone, most room first"
    );
    // Three replicas cannot be spread over two zones when asked to be.
    let req = replicated_request(
        "pvc-spread-3",
        &[
            ("replicas", "3"),
            ("spreadKey", "topology.kubernetes.io/zone"),
            ("spreadRequired", "true"),
        ],
    );
    let err = c.create(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
}
