use std::collections::HashMap;

use csi_proto::v1::Topology;
use warren_core::TOPOLOGY_KEY;

use super::*;

const GIB: u64 = 1 << 30;

fn node(name: &str, free_gib: u64) -> NodeFacts {
    NodeFacts {
        name: name.into(),
        labels: BTreeMap::new(),
        seen: Seen::Answered {
            available_bytes: free_gib * GIB,
            replica_endpoint: Some(format!("{name}:7460")),
        },
    }
}

fn labelled(name: &str, free_gib: u64, zone: &str) -> NodeFacts {
    let mut n = node(name, free_gib);
    n.labels.insert("zone".into(), zone.into());
    n
}

fn no_service(name: &str) -> NodeFacts {
    NodeFacts {
        seen: Seen::Answered {
            available_bytes: 100 * GIB,
            replica_endpoint: None,
        },
        ..node(name, 0)
    }
}

fn unreachable(name: &str) -> NodeFacts {
    NodeFacts {
        seen: Seen::Unreachable("no answer within 3s".into()),
        ..node(name, 0)
    }
}

fn topo(node: &str) -> Topology {
    Topology {
        segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node.to_string())]),
    }
}

fn request(replicas: usize) -> ReplicaRequest<'static> {
    ReplicaRequest {
        replicas,
        size_bytes: GIB,
        topology: None,
        locality: DataLocality::BestEffort,
        spread: None,
    }
}

fn names(placed: &[ReplicaEndpoint]) -> Vec<&str> {
    placed.iter().map(|p| p.node.as_str()).collect()
}

fn exhausted(req: &ReplicaRequest, nodes: &[NodeFacts]) -> String {
    let err = place_replicas(req, nodes).unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    err.to_string()
}

#[test]
fn most_free_first_ties_by_name_and_endpoints_come_along() {
    let nodes = [node("c", 5), node("a", 5), node("b", 9), node("d", 1)];
    let placed = place_replicas(&request(3), &nodes).unwrap();
    assert_eq!(names(&placed), ["b", "a", "c"]);
    assert_eq!(placed[0].endpoint, "b:7460");
}

#[test]
fn nodes_without_service_room_or_answer_are_not_eligible() {
    let nodes = [
        node("n1", 2),
        node("n2", 3),
        no_service("n3"),
        node("small", 0),
        unreachable("gone"),
    ];
    assert_eq!(
        names(&place_replicas(&request(2), &nodes).unwrap()),
        ["n2", "n1"]
    );
    let msg = exhausted(&request(3), &nodes);
    assert_eq!(
        msg,
        "replicated volume needs 3 nodes, 2 eligible (n1, n2); \
         gone: unreachable (no answer within 3s); n3: no replica service; \
         small: 0 bytes free, needs 1073741824"
    );
}

#[test]
fn exactly_the_volume_size_is_room_enough() {
    let mut req = request(1);
    req.size_bytes = 2 * GIB;
    assert_eq!(
        names(&place_replicas(&req, &[node("a", 1), node("b", 2)]).unwrap()),
        ["b"]
    );
}

#[test]
fn no_nodes_at_all_says_so() {
    assert_eq!(
        exhausted(&request(2), &[]),
        "replicated volume needs 2 nodes, 0 eligible; the controller knows no nodes"
    );
}

#[test]
fn locality_puts_the_first_consumer_first_unless_disabled() {
    let nodes = [node("big", 9), node("mid", 5), node("consumer", 2)];
    let topology = TopologyRequirement {
        requisite: vec![],
        preferred: vec![topo("consumer"), topo("mid")],
    };
    let mut req = request(2);
    req.topology = Some(&topology);
    assert_eq!(
        names(&place_replicas(&req, &nodes).unwrap()),
        ["consumer", "big"]
    );
    req.locality = DataLocality::Strict;
    assert_eq!(
        names(&place_replicas(&req, &nodes).unwrap()),
        ["consumer", "big"]
    );
    // Only preferred[0] is the consumer; later preferred entries are no reason to move.
    req.locality = DataLocality::Disabled;
    assert_eq!(
        names(&place_replicas(&req, &nodes).unwrap()),
        ["big", "mid"]
    );
}

#[test]
fn locality_skips_a_consumer_node_that_cannot_hold_a_replica() {
    let topology = TopologyRequirement {
        requisite: vec![],
        preferred: vec![topo("consumer")],
    };
    let mut req = request(2);
    req.topology = Some(&topology);
    for consumer in [node("consumer", 0), no_service("consumer")] {
        let nodes = [node("a", 3), node("b", 2), consumer];
        assert_eq!(names(&place_replicas(&req, &nodes).unwrap()), ["a", "b"]);
    }
}

#[test]
fn requisite_restricts_to_the_nodes_it_names() {
    let nodes = [node("a", 9), node("b", 5), node("c", 1)];
    let topology = TopologyRequirement {
        requisite: vec![topo("b"), topo("c")],
        preferred: vec![],
    };
    let mut req = request(2);
    req.topology = Some(&topology);
    assert_eq!(names(&place_replicas(&req, &nodes).unwrap()), ["b", "c"]);
    req.replicas = 3;
    let msg = exhausted(&req, &nodes);
    assert!(
        msg.ends_with("a: not in the volume's requisite topology"),
        "{msg}"
    );
}

#[test]
fn soft_spread_prefers_new_values_then_takes_any() {
    let nodes = [
        labelled("a1", 9, "a"),
        labelled("a2", 8, "a"),
        labelled("b1", 1, "b"),
    ];
    let spread = Spread {
        key: "zone".into(),
        required: false,
    };
    let mut req = request(2);
    req.spread = Some(&spread);
    assert_eq!(names(&place_replicas(&req, &nodes).unwrap()), ["a1", "b1"]);
    req.replicas = 3;
    assert_eq!(
        names(&place_replicas(&req, &nodes).unwrap()),
        ["a1", "b1", "a2"]
    );
}

#[test]
fn soft_spread_without_labels_is_free_space_order() {
    // The controller passes no labels yet: spreading must then change nothing.
    let spread = Spread {
        key: "zone".into(),
        required: false,
    };
    let mut req = request(3);
    req.spread = Some(&spread);
    let nodes = [node("x", 1), node("y", 3), node("z", 2)];
    assert_eq!(
        names(&place_replicas(&req, &nodes).unwrap()),
        ["y", "z", "x"]
    );
    // A node without the label is of unknown value: no clash with a labelled one.
    let nodes = [labelled("a1", 9, "a"), labelled("a2", 8, "a"), node("u", 1)];
    req.replicas = 2;
    assert_eq!(names(&place_replicas(&req, &nodes).unwrap()), ["a1", "u"]);
}

#[test]
fn required_spread_never_puts_two_under_one_value() {
    let spread = Spread {
        key: "zone".into(),
        required: true,
    };
    let mut req = request(2);
    req.spread = Some(&spread);
    let nodes = [
        labelled("a1", 9, "a"),
        labelled("a2", 8, "a"),
        labelled("b1", 1, "b"),
        node("bare", 50),
    ];
    assert_eq!(names(&place_replicas(&req, &nodes).unwrap()), ["a1", "b1"]);
    req.replicas = 3;
    assert_eq!(
        exhausted(&req, &nodes),
        "replicated volume needs 3 nodes, 3 eligible (a1, a2, b1) but spreadRequired \
         over \"zone\" allows only 2 (a: a1, a2; b: b1); \
         bare: no label \"zone\" to spread over (spreadRequired)"
    );
}

#[test]
fn required_spread_counts_the_consumer_nodes_value() {
    let spread = Spread {
        key: "zone".into(),
        required: true,
    };
    let topology = TopologyRequirement {
        requisite: vec![],
        preferred: vec![topo("a2")],
    };
    let mut req = request(2);
    req.spread = Some(&spread);
    req.topology = Some(&topology);
    let nodes = [
        labelled("a1", 9, "a"),
        labelled("a2", 1, "a"),
        labelled("b1", 2, "b"),
    ];
    assert_eq!(names(&place_replicas(&req, &nodes).unwrap()), ["a2", "b1"]);
}
