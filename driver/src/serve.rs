//! Builds the services for a mode and serves them until SIGTERM or Ctrl-C.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use csi_proto::v1::controller_server::ControllerServer;
use csi_proto::v1::identity_server::IdentityServer;
use csi_proto::v1::node_server::NodeServer;
use tokio::sync::watch;
use tonic::transport::Server;
use warren_controller::{ControllerService, NfsVolumes, Nodes, Records};
use warren_core::endpoint::{bind_unix, grpc_connections, Endpoint};
use warren_core::identity::IdentityService;
use warren_core::validate::validate_node_id;
use warren_core::{agent, Error, Result};
use warren_node::local::LocalStore;
use warren_node::loopdev::LoopDevices;
use warren_node::mounter::SystemMounter;
use warren_node::service::NodeService;

use crate::calls::Observed;
use crate::cli::{Common, Mode, NodeSide};
use crate::http;
use crate::metrics::Metrics;
use crate::node_side::{self, discover_nodes, read_token, serve_agent};
use warren_kube::edge::EdgeConfig;

/// How often the controller retries records a node could not settle at startup.
const RECONCILE_EVERY: Duration = Duration::from_secs(60);

pub async fn run(mode: Mode) -> Result<()> {
    crate::allocator::limit_retention();
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
    });

    match mode {
        Mode::All(args) => {
            serve_all(&args.common, &args.node, None, None, None, ready, stop_rx).await
        }
        Mode::Edge(args) => {
            let Endpoint::Unix(csi_socket) = Endpoint::parse(&args.common.endpoint)? else {
                return Err(Error::InvalidArgument(
                    "warren edge serves the kubelet: --endpoint must be unix:///path".into(),
                ));
            };
            let edge = EdgeConfig {
                node: args.node.node_id.clone(),
                namespace: args.namespace.clone(),
                csi_socket,
                registration_dir: args
                    .registration_dir
                    .clone()
                    .unwrap_or_else(|| args.node.kubelet_dir.join("plugins_registry")),
            };
            let cluster_token = match (&args.agent_token_file, &args.cluster_token_secret) {
                (Some(file), _) => Some(read_token(file)?),
                (None, Some(secret)) => Some(edge_cluster_token(&args.namespace, secret).await?),
                (None, None) => None,
            };
            let peers = match (&args.agent_listen, cluster_token) {
                (Some(listen), Some(token)) => Some(node_side::Peers {
                    listen: listen.clone(),
                    token,
                }),
                (Some(_), None) => {
                    return Err(Error::InvalidArgument(
                        "--agent-listen needs the cluster token: --cluster-token-secret or \
                         --agent-token-file"
                            .into(),
                    ))
                }
                (None, token) => {
                    // No peers: the replica host may still use the token.
                    return serve_all(
                        &args.common,
                        &args.node,
                        Some(edge),
                        None,
                        token,
                        ready,
                        stop_rx,
                    )
                    .await;
                }
            };
            serve_all(
                &args.common,
                &args.node,
                Some(edge),
                peers,
                None,
                ready,
                stop_rx,
            )
            .await
        }
        Mode::Controller(args) => {
            let token = read_token(&args.agent_token_file)?;
            let metrics = observability(&args.common, None, &ready, &stop_rx).await?;
            let nodes = Nodes::default();
            if args.discover_nodes {
                tokio::spawn(discover_nodes(
                    nodes.clone(),
                    None,
                    args.agent_port,
                    token.clone(),
                    stop_rx.clone(),
                ));
                crate::replicated_view::spawn_object_keeper(None, stop_rx.clone());
            }
            for entry in &args.node_agents {
                let (name, address) = entry.split_once('=').ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "--node-agent {entry:?}: expected NODE=http://HOST:PORT"
                    ))
                })?;
                validate_node_id(name)?;
                nodes.add(
                    name,
                    Arc::new(agent::RemoteNodeStorage::new(name, address, &token)?),
                );
            }
            let controller = start_controller(&args.common, nodes, stop_rx.clone()).await?;
            let identity = IdentityService::new(true, ready.clone());
            let router = Server::builder()
                .add_service(IdentityServer::new(Observed::new(
                    identity,
                    metrics.clone(),
                )))
                .add_service(ControllerServer::new(Observed::from_arc(
                    controller, metrics,
                )));
            serve_csi(router, &args.common.endpoint, ready, stop_rx).await
        }
        Mode::Replica(args) => crate::replication::run_replica(args, stop_rx).await,
        Mode::Volume(args) => crate::replication::run_volume(args, stop_rx).await,
        Mode::Node(args) => {
            let token = read_token(&args.agent_token_file)?;
            let store = open_store(&args.node)?;
            let metrics = observability(&args.common, Some(&store), &ready, &stop_rx).await?;
            let stack = node_side::build(&args.node, &store, None).await?;
            let agent_task = serve_agent(&args.agent_listen, stack.storage.clone(), &token).await?;
            let registration_task = args.register_with_kubelet.as_ref().map(|csi_socket| {
                let dir = args
                    .registration_dir
                    .clone()
                    .unwrap_or_else(|| args.node.kubelet_dir.join("plugins_registry"));
                warren_kube::registration::spawn(&dir, csi_socket, stop_rx.clone())
            });
            if let (Some(metrics), Some(host)) = (&metrics, &stack.replicas) {
                metrics.watch_replicas(host.clone());
            }
            if let Some(host) = &stack.replicas {
                let node = args.node.node_id.clone();
                crate::replicated_view::spawn_status_writer(host.clone(), node, stop_rx.clone());
            }
            let node = node_service(store, &args.node, &args.common, stack.replicas);
            let identity = IdentityService::new(false, ready.clone());
            let router = Server::builder()
                .add_service(IdentityServer::new(Observed::new(
                    identity,
                    metrics.clone(),
                )))
                .add_service(NodeServer::new(Observed::new(node, metrics)));
            let served = serve_csi(router, &args.common.endpoint, ready, stop_rx).await;
            drop(agent_task);
            if let Some(task) = registration_task {
                // It removes its socket on the stop signal; give it a moment to.
                let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
            }
            served
        }
    }
}

/// Controller and node in one process (`warren all`), and in the edge mode also the
/// Kubernetes side (`warren_kube::edge`), which calls the same controller in-process.
async fn serve_all(
    common: &Common,
    node_side: &NodeSide,
    edge: Option<EdgeConfig>,
    peers: Option<node_side::Peers>,
    // The cluster token when there are no peers (with peers, theirs).
    token: Option<String>,
    ready: Arc<AtomicBool>,
    stop_rx: watch::Receiver<bool>,
) -> Result<()> {
    let store = open_store(node_side)?;
    let metrics = observability(common, Some(&store), &ready, &stop_rx).await?;
    let token = peers.as_ref().map(|p| p.token.clone()).or(token);
    let stack = node_side::build(node_side, &store, token.as_deref()).await?;
    let nodes = Nodes::default();
    nodes.add(&node_side.node_id, stack.storage.clone());
    // The edge mode reaches the other nodes' storage through their agents (replicas
    // are placed on several nodes); `all` is one node.
    let mut _agent_task = None;
    if let Some(peers) = &peers {
        let token = peers.token.clone();
        _agent_task = Some(serve_agent(&peers.listen, stack.storage.clone(), &token).await?);
        let port = node_side::port_of(&peers.listen)?;
        tokio::spawn(discover_nodes(
            nodes.clone(),
            Some(node_side.node_id.clone()),
            port,
            token,
            stop_rx.clone(),
        ));
    }
    let controller = start_controller(common, nodes, stop_rx.clone()).await?;
    let controller = Arc::new(Observed::from_arc(controller, metrics.clone()));
    if let (Some(metrics), Some(host)) = (&metrics, &stack.replicas) {
        metrics.watch_replicas(host.clone());
    }
    if let (Some(_), Some(host)) = (&edge, &stack.replicas) {
        let node = node_side.node_id.clone();
        crate::replicated_view::spawn_status_writer(host.clone(), node.clone(), stop_rx.clone());
        crate::replicated_view::spawn_object_keeper(Some(node), stop_rx.clone());
    }
    let node = node_service(store, node_side, common, stack.replicas);
    let identity = IdentityService::new(true, ready.clone());
    let router = Server::builder()
        .add_service(IdentityServer::new(Observed::new(
            identity,
            metrics.clone(),
        )))
        .add_service(ControllerServer::from_arc(controller.clone()))
        .add_service(NodeServer::new(Observed::new(node, metrics)));
    let Some(edge) = edge else {
        return serve_csi(router, &common.endpoint, ready, stop_rx).await;
    };
    let kubernetes = warren_kube::edge::run(edge, controller, stop_rx.clone());
    tokio::pin!(kubernetes);
    let served = serve_csi(router, &common.endpoint, ready, stop_rx);
    tokio::pin!(served);
    tokio::select! {
        result = &mut served => {
            // The CSI side stopped (SIGTERM or an error): the reconcilers stop on the
            // same signal; give them a moment to release the lease.
            let _ = tokio::time::timeout(Duration::from_secs(2), kubernetes).await;
            result
        }
        result = &mut kubernetes => match result {
            // Without the Kubernetes API the edge mode cannot do its job: exit, loudly,
            // and let the DaemonSet restart us.
            Err(e) => Err(Error::Unavailable(format!("Kubernetes API: {e}"))),
            Ok(()) => served.await,
        },
    }
}

/// `--metrics-address`: bound before the slow parts of startup, so a taken port fails at
/// once; `/healthz` answers 503 until `serve_csi` marks the server ready. `node`: the
/// store whose volumes get per-volume gauges (none on a controller alone).
async fn observability(
    common: &Common,
    node: Option<&LocalStore>,
    ready: &Arc<AtomicBool>,
    stop: &watch::Receiver<bool>,
) -> Result<Option<Arc<Metrics>>> {
    let Some(address) = &common.metrics_address else {
        return Ok(None);
    };
    let listener = http::bind(address).await?;
    let metrics = Arc::new(Metrics::new(node.cloned()));
    http::spawn(listener, metrics.clone(), ready.clone(), stop.clone());
    Ok(Some(metrics))
}

/// The edge mode's cluster token, from its Secret (created when missing).
async fn edge_cluster_token(namespace: &str, secret: &str) -> Result<String> {
    warren_kube::cluster_token::ensure_in_cluster(namespace, secret)
        .await
        .map_err(|e| Error::Unavailable(format!("cluster token Secret {secret:?}: {e}")))
}

fn node_service(
    store: LocalStore,
    node_side: &NodeSide,
    common: &Common,
    replicas: Option<Arc<warren_node::replicated::ReplicaHost>>,
) -> NodeService {
    let service = NodeService::new(
        store,
        Arc::new(SystemMounter),
        node_side.kubelet_dir.clone(),
        common.nfs.node_deadlines(),
    );
    match replicas {
        Some(host) => service.with_replicas(host),
        None => service,
    }
}

fn open_store(node: &NodeSide) -> Result<LocalStore> {
    validate_node_id(&node.node_id)?;
    LocalStore::open(&node.node_id, &node.storage_root, Arc::new(LoopDevices)).map_err(Into::into)
}

/// Opens the records, settles what a crash left half done, and keeps retrying what an
/// unreachable node left pending.
async fn start_controller(
    common: &Common,
    nodes: Nodes,
    mut stop: watch::Receiver<bool>,
) -> Result<Arc<ControllerService>> {
    let records = Arc::new(Records::open(&common.state_dir)?);
    let nfs = NfsVolumes::open(&common.state_dir, common.nfs.export_options())?;
    let controller = Arc::new(ControllerService::new(records, nodes, nfs));
    controller.reconcile().await;
    let background = controller.clone();
    tokio::spawn(async move {
        loop {
            let stopped = tokio::select! {
                _ = tokio::time::sleep(RECONCILE_EVERY) => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            if stopped {
                break;
            }
            background.reconcile().await;
        }
    });
    Ok(controller)
}

/// How long in-flight calls get to finish after SIGTERM. Kubelet and the sidecars keep
/// their connections open forever, so waiting for them to close would never end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Serves until stopped. `ready` (what Probe and /healthz report) turns true once the
/// endpoint is bound, and false again when shutdown begins.
async fn serve_csi(
    router: tonic::transport::server::Router,
    endpoint: &str,
    ready: Arc<AtomicBool>,
    stop: watch::Receiver<bool>,
) -> Result<()> {
    let mut grace_stop = stop.clone();
    let grace = async move {
        let _ = grace_stop.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let mut stop = stop;
    let draining = ready.clone();
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
        draining.store(false, Ordering::Release);
        tracing::info!("shutting down");
    };
    tokio::select! {
        result = serve_until(router, endpoint, &ready, shutdown) => result,
        () = grace => {
            tracing::info!("clients still connected after the grace period; exiting");
            if let Ok(Endpoint::Unix(path)) = Endpoint::parse(endpoint) {
                let _ = std::fs::remove_file(path);
            }
            Ok(())
        }
    }
}

async fn serve_until(
    router: tonic::transport::server::Router,
    endpoint: &str,
    ready: &AtomicBool,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let result = match Endpoint::parse(endpoint)? {
        Endpoint::Unix(path) => {
            let listener = bind_unix(&path)?;
            ready.store(true, Ordering::Release);
            tracing::info!(
                endpoint,
                version = warren_core::identity::VERSION,
                "serving CSI"
            );
            let served = router
                .serve_with_incoming_shutdown(grpc_connections(listener), shutdown)
                .await;
            let _ = std::fs::remove_file(&path);
            served
        }
        Endpoint::Tcp(addr) => {
            let addr = addr
                .parse()
                .map_err(|e| Error::InvalidArgument(format!("endpoint {endpoint:?}: {e}")))?;
            tracing::info!(endpoint, "serving CSI over TCP (for debugging only)");
            ready.store(true, Ordering::Release);
            router.serve_with_shutdown(addr, shutdown).await
        }
    };
    result.map_err(|e| Error::Internal(format!("gRPC server: {e}")))
}

/// Returns on SIGTERM or SIGINT. Without a SIGTERM handler (it cannot normally fail to
/// install) only SIGINT stops Warren gracefully; SIGTERM's default still ends the process.
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGTERM; waiting for SIGINT only");
            if tokio::signal::ctrl_c().await.is_err() {
                // No signal can be waited for: serve until killed rather than stop now.
                std::future::pending::<()>().await;
            }
        }
    }
}
