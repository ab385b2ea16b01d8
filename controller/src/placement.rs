//! Which node gets a new local volume: a pure function of the request's topology
//! requirements and the nodes the controller knows.
//!
//! Rules (CSI spec, "accessibility_requirements"):
//! - a node is allowed if some `requisite` topology names it (or there is no requisite);
//! - among allowed nodes, `preferred` topologies are tried in order (Kubernetes puts the
//!   node the scheduler chose for a WaitForFirstConsumer pod first);
//! - a volume restored or cloned from a source must stay on the source's node;
//! - nothing allowed: RESOURCE_EXHAUSTED.

use std::collections::HashMap;

use csi_proto::v1::{Topology, TopologyRequirement};
use warren_core::{Error, Result, TOPOLOGY_KEY};

/// The node a topology segment map names, if it only uses Warren's key.
pub(crate) fn node_of(topology: &Topology) -> Option<&str> {
    let segments: &HashMap<String, String> = &topology.segments;
    match (segments.len(), segments.get(TOPOLOGY_KEY)) {
        (1, Some(node)) => Some(node.as_str()),
        _ => None,
    }
}

/// Candidate nodes, best first. `fallback` orders nodes when the request states no
/// preference (e.g. by free space); it must contain only known nodes.
pub fn candidates(
    requirements: Option<&TopologyRequirement>,
    known: &[String],
    pinned: Option<&str>,
    fallback: &[String],
) -> Result<Vec<String>> {
    let requisite: Vec<&str> = requirements
        .map(|r| r.requisite.iter().filter_map(node_of).collect())
        .unwrap_or_default();
    let has_requisite = requirements.is_some_and(|r| !r.requisite.is_empty());
    let allowed = |node: &str| {
        known.iter().any(|k| k == node)
            && (!has_requisite || requisite.contains(&node))
            && pinned.is_none_or(|p| p == node)
    };
    let mut out: Vec<String> = Vec::new();
    let mut push = |node: &str| {
        if allowed(node) && !out.iter().any(|n| n == node) {
            out.push(node.to_string());
        }
    };
    if let Some(p) = pinned {
        push(p);
    }
    if let Some(r) = requirements {
        for t in &r.preferred {
            if let Some(n) = node_of(t) {
                push(n);
            }
        }
    }
    for n in &requisite {
        push(n);
    }
    for n in fallback {
        push(n);
    }
    if out.is_empty() {
        return Err(Error::ResourceExhausted(format!(
            "no node satisfies the volume's topology requirements{} (known nodes: {})",
            pinned
                .map(|p| format!(" and its source's node {p:?}"))
                .unwrap_or_default(),
            known.join(", ")
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(node: &str) -> Topology {
        Topology {
            segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node.to_string())]),
        }
    }

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn preferred_first_within_requisite() {
        let known = nodes(&["a", "b", "c"]);
        let req = TopologyRequirement {
            requisite: vec![topo("b"), topo("c")],
            preferred: vec![topo("c"), topo("a")],
        };
        assert_eq!(
            candidates(Some(&req), &known, None, &known).unwrap(),
            nodes(&["c", "b"])
        );
    }

    #[test]
    fn no_requirements_use_fallback_order() {
        let known = nodes(&["a", "b"]);
        assert_eq!(
            candidates(None, &known, None, &nodes(&["b", "a"])).unwrap(),
            nodes(&["b", "a"])
        );
    }

    #[test]
    fn unsatisfiable_is_resource_exhausted() {
        let known = nodes(&["a"]);
        let req = TopologyRequirement {
            requisite: vec![topo("zzz")],
            preferred: vec![],
        };
        let err = candidates(Some(&req), &known, None, &known).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        // A clone must stay with its source.
        let req = TopologyRequirement {
            requisite: vec![topo("a")],
            preferred: vec![],
        };
        assert!(candidates(Some(&req), &nodes(&["a", "b"]), Some("b"), &known).is_err());
        assert_eq!(
            candidates(None, &nodes(&["a", "b"]), Some("b"), &known).unwrap(),
            nodes(&["b"])
        );
    }

    #[test]
    fn foreign_topology_keys_match_nothing() {
        let known = nodes(&["a"]);
        let req = TopologyRequirement {
            requisite: vec![Topology {
                segments: HashMap::from([("topology.kubernetes.io/zone".into(), "z1".into())]),
            }],
            preferred: vec![],
        };
        assert!(candidates(Some(&req), &known, None, &known).is_err());
    }
}
