//! What every node process (`all`, `edge`, `node`) builds around its local store: the
//! built-in share, the replica service, the storage agent other processes reach it by,
//! and, in the edge mode, the other nodes' agents. Wiring only.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;
use tonic::transport::Server;
use warren_controller::Nodes;
use warren_core::storage::NodeStorage;
use warren_core::{agent, Error, Result};
use warren_node::local::LocalStore;
use warren_node::mounter::SystemMounter;
use warren_node::replicated::{ReplicaHost, ReplicatingStore};
use warren_node::share::{ShareHost, SharingStore};
use warren_node::stage::Stager;

use crate::cli::{NodeSide, ReplicaHostArgs};

/// This node's storage as a controller reaches it, and its replica service if it hosts one.
pub struct NodeStorageStack {
    pub storage: Arc<dyn NodeStorage>,
    pub replicas: Option<Arc<ReplicaHost>>,
}

/// `cluster_token`: the edge mode's token from its Secret, used when no token file is given.
pub async fn build(
    node: &NodeSide,
    store: &LocalStore,
    cluster_token: Option<&str>,
) -> Result<NodeStorageStack> {
    let sharing: Arc<dyn NodeStorage> = sharing_store(node, store).await?;
    let replicas = replica_host(node, cluster_token).await?;
    // Local image volumes and their snapshots can be copied into replicated volumes
    // (restore or clone across kinds): the seed reads them from this store.
    let storage =
        Arc::new(ReplicatingStore::new(sharing, replicas.clone()).with_local(store.clone()));
    Ok(NodeStorageStack { storage, replicas })
}

/// The address other nodes reach a service of this node at: `--*-address`, or the
/// listen address's host when that is not 0.0.0.0 / ::.
fn advertised_ip(
    flag: &str,
    listen: &std::net::SocketAddr,
    address: Option<&str>,
) -> Result<std::net::IpAddr> {
    match address {
        Some(a) => a
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("--{flag}-address {a:?}: {e}"))),
        None if !listen.ip().is_unspecified() => Ok(listen.ip()),
        None => Err(Error::InvalidArgument(format!(
            "--{flag}-listen on 0.0.0.0 needs --{flag}-address (the IP other nodes reach)"
        ))),
    }
}

fn parse_listen(flag: &str, listen: &str) -> Result<std::net::SocketAddr> {
    listen
        .parse()
        .map_err(|e| Error::InvalidArgument(format!("--{flag}-listen {listen:?}: {e}")))
}

/// The node's replica service (`--replica-listen`), started before the node serves CSI
/// so that a volume staged here finds its local replica in process.
async fn replica_host(
    node: &NodeSide,
    cluster_token: Option<&str>,
) -> Result<Option<Arc<ReplicaHost>>> {
    let ReplicaHostArgs {
        replica_listen: Some(listen),
        replica_address,
        replica_token_file,
        replica_root,
    } = &node.replicas
    else {
        return Ok(None);
    };
    let listen = parse_listen("replica", listen)?;
    let ip = advertised_ip("replica", &listen, replica_address.as_deref())?;
    let token = match (replica_token_file, cluster_token) {
        (Some(file), _) => warren_replica::auth::Token::from_file(file),
        (None, Some(token)) => warren_replica::auth::Token::new(token.as_bytes().to_vec()),
        (None, None) => {
            return Err(Error::InvalidArgument(
                "--replica-listen needs --replica-token-file (or, in the edge mode, \
                 --cluster-token-secret): replication traffic is never accepted without \
                 the cluster's token"
                    .into(),
            ))
        }
    }
    .map_err(|e| Error::InvalidArgument(format!("replication token: {e}")))?;
    let root = replica_root
        .clone()
        .unwrap_or_else(|| node.storage_root.join("replicas"));
    let advertise = std::net::SocketAddr::new(ip, listen.port()).to_string();
    let host = ReplicaHost::start(&node.node_id, root, listen, advertise, token)
        .await
        .map_err(Error::from)?;
    tracing::info!(endpoint = %host.endpoint(), "replica service serving");
    Ok(Some(host))
}

/// The node's storage as the controller reaches it, with the built-in share started
/// when `--share-listen` asks for it (which serves again what was shared before).
async fn sharing_store(node: &NodeSide, store: &LocalStore) -> Result<Arc<SharingStore>> {
    let Some(listen) = &node.share_listen else {
        return Ok(Arc::new(SharingStore::new(store.clone(), None)));
    };
    let listen = parse_listen("share", listen)?;
    let advertise = advertised_ip("share", &listen, node.share_address.as_deref())?;
    let for_share = store.clone();
    let stager = Arc::new(Stager::new(store.clone(), Arc::new(SystemMounter)));
    let host =
        tokio::task::spawn_blocking(move || ShareHost::start(listen, advertise, for_share, stager))
            .await
            .map_err(|e| Error::Internal(format!("share start: {e}")))??;
    tracing::info!(endpoint = %host.endpoint(), "built-in NFS share serving");
    Ok(Arc::new(SharingStore::new(
        store.clone(),
        Some(Arc::new(host)),
    )))
}

/// The edge mode's link to the other nodes: its agent's listen address (whose port is
/// also the other nodes' agent port).
pub struct Peers {
    pub listen: String,
    pub token: String,
}

pub fn port_of(listen: &str) -> Result<u16> {
    Ok(parse_listen("agent", listen)?.port())
}

pub fn read_token(path: &std::path::Path) -> Result<String> {
    let token = std::fs::read_to_string(path)
        .map_err(Error::io(format!("read agent token {}", path.display())))?;
    let token = token.trim().to_string();
    agent::validate_token(&token)?;
    Ok(token)
}

/// Serves `storage` as this node's agent on `listen` (bound now, so a taken port fails
/// startup instead of a background task).
pub async fn serve_agent(
    listen: &str,
    storage: Arc<dyn NodeStorage>,
    token: &str,
) -> Result<AgentTask> {
    let addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| Error::InvalidArgument(format!("--agent-listen {listen:?}: {e}")))?;
    let service = agent::server(storage, token)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(Error::io(format!("bind agent {addr}")))?;
    let addr = listener.local_addr().map_err(Error::io("agent address"))?;
    tracing::info!(address = %addr, "node agent listening");
    Ok(AgentTask(tokio::spawn(async move {
        let served = Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "node agent stopped");
        }
    })))
}

/// The agent's server task, stopped when the node process lets go of it: after the CSI
/// side's grace period, the agent's calls are covered by the controller's retries and
/// records.
pub struct AgentTask(tokio::task::JoinHandle<()>);

impl Drop for AgentTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps `nodes` equal to the agents the Node objects name, except `own` (a node process
/// reaches its own storage in process). Without a Kubernetes API the process exits:
/// discovery is only asked for in a cluster.
pub async fn discover_nodes(
    nodes: Nodes,
    own: Option<String>,
    port: u16,
    token: String,
    stop: watch::Receiver<bool>,
) {
    let mut known: BTreeMap<String, String> = BTreeMap::new();
    let update = |found: &BTreeMap<String, warren_kube::discovery::DiscoveredNode>| {
        for (name, node) in found {
            nodes.set_labels(name, node.labels.clone());
        }
        let mut agents: BTreeMap<String, String> = found
            .iter()
            .map(|(name, node)| (name.clone(), node.agent.clone()))
            .collect();
        if let Some(own) = &own {
            agents.remove(own);
        }
        for gone in known.keys().filter(|n| !agents.contains_key(*n)) {
            nodes.remove(gone);
            tracing::info!(node = %gone, "node left");
        }
        for (name, address) in &agents {
            if known.get(name) == Some(address) {
                continue;
            }
            match agent::RemoteNodeStorage::new(name, address, &token) {
                Ok(storage) => {
                    nodes.add(name, Arc::new(storage));
                    tracing::info!(node = %name, %address, "node agent found");
                }
                Err(e) => {
                    tracing::warn!(node = %name, %address, error = %e, "bad node agent address")
                }
            }
        }
        known = agents;
    };
    if let Err(e) = warren_kube::discovery::run(port, update, stop).await {
        tracing::error!(error = %e, "node discovery needs the Kubernetes API");
        std::process::exit(1);
    }
}
