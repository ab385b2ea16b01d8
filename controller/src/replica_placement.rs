//! Which nodes hold the replicas of a new replicated volume: a pure function of what the
//! controller observed about each node and what the request asks, so every rule is
//! tested without a node.
//!
//! Rules, in order:
//! - a node is eligible when some `requisite` topology names it (or there is none), it
//!   answered, it hosts a replica service, it has room for the whole volume, and, under
//!   `spreadRequired`, it carries the spread label (otherwise nothing proves it is apart);
//! - data locality `best-effort` or `strict`: the first consumer's node (`preferred[0]`,
//!   which Kubernetes sets to the scheduler's choice for WaitForFirstConsumer) gets a
//!   replica when it is eligible, so the engine finds one replica in process;
//! - spread: each next replica goes under a label value not used yet while one is left;
//!   `spreadRequired` never puts two under one value (soft spread then takes any node).
//!   A node without the label is of unknown value and never counts as a clash;
//! - otherwise most free space first, ties by name (the same answer every time).
//!
//! Fewer than N nodes: RESOURCE_EXHAUSTED naming the counts and why every other node was
//! left out, so the message alone tells an operator what to fix.

use std::collections::BTreeMap;

use csi_proto::v1::TopologyRequirement;
use warren_core::params::{DataLocality, ReplicaEndpoint, Spread};
use warren_core::{Error, Result};

use crate::placement::node_of;

/// What the controller saw of one node when it asked for its capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    /// The node's labels; empty while the controller does not know them.
    pub labels: BTreeMap<String, String>,
    pub seen: Seen,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Answered {
        available_bytes: u64,
        /// Where its replica service listens; None: it hosts none.
        replica_endpoint: Option<String>,
    },
    /// It did not answer in time, or answered with an error (the reason).
    Unreachable(String),
}

/// What the new volume asks of placement.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaRequest<'a> {
    pub replicas: usize,
    pub size_bytes: u64,
    pub topology: Option<&'a TopologyRequirement>,
    pub locality: DataLocality,
    pub spread: Option<&'a Spread>,
}

/// A node that may hold a replica.
#[derive(Debug)]
struct Eligible<'a> {
    name: &'a str,
    endpoint: &'a str,
    available: u64,
    /// The node's value of the spread label, if spreading and it has one.
    value: Option<&'a str>,
}

/// Why `node` cannot hold a replica, or how it can.
fn eligibility<'a>(node: &'a NodeFacts, req: &ReplicaRequest) -> Result<Eligible<'a>, String> {
    let requisite = req.topology.map(|t| &t.requisite).filter(|r| !r.is_empty());
    if requisite.is_some_and(|r| !r.iter().any(|t| node_of(t) == Some(node.name.as_str()))) {
        return Err("not in the volume's requisite topology".into());
    }
    let (available, endpoint) = match &node.seen {
        Seen::Unreachable(why) => return Err(format!("unreachable ({why})")),
        Seen::Answered {
            available_bytes,
            replica_endpoint,
        } => (*available_bytes, replica_endpoint),
    };
    let Some(endpoint) = endpoint else {
        return Err("no replica service".into());
    };
    if available < req.size_bytes {
        return Err(format!("{available} bytes free, needs {}", req.size_bytes));
    }
    let value = req
        .spread
        .and_then(|s| node.labels.get(&s.key))
        .map(String::as_str);
    if let Some(spread) = req.spread.filter(|s| s.required && value.is_none()) {
        return Err(format!(
            "no label {:?} to spread over (spreadRequired)",
            spread.key
        ));
    }
    Ok(Eligible {
        name: &node.name,
        endpoint,
        available,
        value,
    })
}

/// The nodes for a new volume's replicas, in placement order (the locality node first).
pub fn place_replicas(req: &ReplicaRequest, nodes: &[NodeFacts]) -> Result<Vec<ReplicaEndpoint>> {
    let mut eligible = Vec::new();
    let mut refused = Vec::new();
    for node in nodes {
        match eligibility(node, req) {
            Ok(e) => eligible.push(e),
            Err(why) => refused.push((node.name.as_str(), why)),
        }
    }
    eligible.sort_by(|a, b| b.available.cmp(&a.available).then(a.name.cmp(b.name)));
    refused.sort();

    let mut chosen: Vec<&Eligible> = Vec::new();
    if req.locality != DataLocality::Disabled {
        let first_consumer = req
            .topology
            .and_then(|t| t.preferred.first())
            .and_then(node_of);
        if let Some(e) = eligible.iter().find(|e| Some(e.name) == first_consumer) {
            chosen.push(e);
        }
    }
    let required = req.spread.is_some_and(|s| s.required);
    while chosen.len() < req.replicas {
        let free = |e: &&Eligible| !chosen.iter().any(|c| c.name == e.name);
        let apart = |e: &&Eligible| {
            req.spread.is_none() || e.value.is_none() || !chosen.iter().any(|c| c.value == e.value)
        };
        let next = eligible
            .iter()
            .filter(free)
            .find(apart)
            .or_else(|| (!required).then(|| eligible.iter().find(free)).flatten());
        match next {
            Some(e) => chosen.push(e),
            None => break,
        }
    }
    if chosen.len() < req.replicas {
        return Err(Error::ResourceExhausted(shortfall(
            req, &eligible, &refused,
        )));
    }
    Ok(chosen
        .into_iter()
        .map(|e| ReplicaEndpoint {
            node: e.name.to_string(),
            endpoint: e.endpoint.to_string(),
        })
        .collect())
}

/// The RESOURCE_EXHAUSTED message: the counts, then why each other node was left out.
fn shortfall(req: &ReplicaRequest, eligible: &[Eligible], refused: &[(&str, String)]) -> String {
    let mut names: Vec<&str> = eligible.iter().map(|e| e.name).collect();
    names.sort();
    let mut msg = format!(
        "replicated volume needs {} nodes, {} eligible",
        req.replicas,
        names.len()
    );
    if !names.is_empty() {
        msg.push_str(&format!(" ({})", names.join(", ")));
    }
    if names.len() >= req.replicas {
        // Enough nodes, too few distinct values of a required spread label.
        let mut by_value: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for e in eligible {
            by_value
                .entry(e.value.unwrap_or(""))
                .or_default()
                .push(e.name);
        }
        let groups: Vec<String> = by_value
            .iter_mut()
            .map(|(value, nodes)| {
                nodes.sort();
                format!("{value}: {}", nodes.join(", "))
            })
            .collect();
        msg.push_str(&format!(
            " but spreadRequired over {:?} allows only {} ({})",
            req.spread.map(|s| s.key.as_str()).unwrap_or_default(),
            by_value.len(),
            groups.join("; ")
        ));
    }
    if refused.is_empty() && eligible.is_empty() {
        msg.push_str("; the controller knows no nodes");
    }
    for (node, why) in refused {
        msg.push_str(&format!("; {node}: {why}"));
    }
    msg
}

#[cfg(test)]
mod tests;
