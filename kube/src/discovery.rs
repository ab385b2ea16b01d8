//! Standard mode: the controller finds the nodes' storage agents from the Node objects.
//! A node runs Warren once the kubelet has labelled it with Warren's topology key (the
//! kubelet copies NodeGetInfo's topology into node labels when Warren's node plugin
//! registers); the label's value is Warren's node id. The agent listens on the node's
//! InternalIP (host network) at the agent port every node plugin is given.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::error::Result;
use crate::TOPOLOGY_KEY;

/// A node running Warren, as its Node object says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredNode {
    /// Its agent's URL.
    pub agent: String,
    /// The Node's labels (zones and the like: what replicated volumes spread over).
    pub labels: BTreeMap<String, String>,
}

/// Warren node id -> its agent and labels, for every node that runs Warren and has an
/// address.
pub fn agents<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    port: u16,
) -> BTreeMap<String, DiscoveredNode> {
    let mut agents = BTreeMap::new();
    for node in nodes {
        let Some(id) = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(TOPOLOGY_KEY))
            .filter(|id| !id.is_empty())
        else {
            continue;
        };
        let Some(ip) = internal_ip(node) else {
            tracing::warn!(node = %id, "node runs Warren but has no InternalIP; its volumes are unreachable");
            continue;
        };
        let host = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        let labels = node.metadata.labels.clone().unwrap_or_default();
        agents.insert(
            id.clone(),
            DiscoveredNode {
                agent: format!("http://{host}:{port}"),
                labels,
            },
        );
    }
    agents
}

fn internal_ip(node: &Node) -> Option<IpAddr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

/// Watches the Node objects and calls `changed` with the full agent map after every
/// change to them (the caller compares it with what it has), until `stop`. Fails only when there is no Kubernetes API to
/// talk to (no in-cluster configuration or kubeconfig).
pub async fn run(
    port: u16,
    mut changed: impl FnMut(&BTreeMap<String, DiscoveredNode>),
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let client = Client::try_default().await?;
    let api: Api<Node> = Api::all(client);
    let (store, writer) = reflector::store::<Node>();
    let config = watcher::Config::default().labels(TOPOLOGY_KEY);
    let mut events =
        std::pin::pin!(reflector::reflector(writer, watcher(api, config)).default_backoff());
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        match event {
            None => return Ok(()),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "watching nodes failed; retrying");
                continue;
            }
            // A (re)list in progress: the store is whole again at InitDone. (Waiting for
            // the store here instead would stall it: it only fills while this loop polls.)
            Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => continue,
            Some(Ok(_)) => {}
        }
        let nodes = store.state();
        changed(&agents(nodes.iter().map(|n| n.as_ref()), port));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, label: Option<&str>, addresses: serde_json::Value) -> Node {
        let mut labels = serde_json::Map::new();
        if let Some(id) = label {
            labels.insert(TOPOLOGY_KEY.into(), json!(id));
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "status": {"addresses": addresses}
        }))
        .unwrap()
    }

    #[test]
    fn nodes_running_warren_map_to_their_internal_ip() {
        let nodes = [
            node(
                "a",
                Some("a"),
                json!([{"type": "Hostname", "address": "a"}, {"type": "InternalIP", "address": "10.0.0.1"}]),
            ),
            node(
                "b",
                None,
                json!([{"type": "InternalIP", "address": "10.0.0.2"}]),
            ),
            node(
                "c",
                Some("c"),
                json!([{"type": "InternalIP", "address": "fd00::3"}]),
            ),
            node(
                "d",
                Some("d"),
                json!([{"type": "ExternalIP", "address": "1.2.3.4"}]),
            ),
            node(
                "e",
                Some(""),
                json!([{"type": "InternalIP", "address": "10.0.0.5"}]),
            ),
        ];
        let got = agents(&nodes, 7461);
        let urls: BTreeMap<&str, &str> = got
            .iter()
            .map(|(k, v)| (k.as_str(), v.agent.as_str()))
            .collect();
        assert_eq!(
            urls,
            BTreeMap::from([
                ("a", "http://10.0.0.1:7461"),
                ("c", "http://[fd00::3]:7461")
            ])
        );
        // The labels come along (the topology key among them).
        assert_eq!(
            got["a"].labels.get(TOPOLOGY_KEY).map(String::as_str),
            Some("a")
        );
    }
}
