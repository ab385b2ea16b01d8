//! Builds the services for a mode and serves them until SIGTERM or Ctrl-C.

use std::collections::BTreeMap;
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
use warren_node::share::{ShareHost, SharingStore};
use warren_node::stage::Stager;

use crate::calls::Observed;
use crate::cli::{Common, Mode, NodeSide};
use crate::http;
use crate::metrics::Metrics;
use warren_kube::edge::EdgeConfig;

/// How often the controller retries records a node could not settle at startup.
const RECONCILE_EVERY: Duration = Duration::from_secs(60);

pub async fn run(mode: Mode) -> Result<()> {
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
    });

    match mode {
        Mode::All(args) => serve_all(&args.common, &args.node, None, ready, stop_rx).await,
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
            serve_all(&args.common, &args.node, Some(edge), ready, stop_rx).await
        }
        Mode::Controller(args) => {
            let token = read_token(&args.agent_token_file)?;
            let metrics = observability(&args.common, None, &ready, &stop_rx).await?;
            let nodes = Nodes::default();
            if args.discover_nodes {
                tokio::spawn(discover_nodes(
                    nodes.clone(),
                    args.agent_port,
                    token.clone(),
                    stop_rx.clone(),
                ));
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
            let agent_addr: std::net::SocketAddr = args.agent_listen.parse().map_err(|e| {
                Error::InvalidArgument(format!("--agent-listen {:?}: {e}", args.agent_listen))
            })?;
            let storage = sharing_store(&args.node, &store).await?;
            let agent_service = agent::server(storage, &token)?;
            // Bind now, so a taken port fails startup instead of a background task.
            let agent_listener = tokio::net::TcpListener::bind(agent_addr)
                .await
                .map_err(Error::io(format!("bind agent {agent_addr}")))?;
            let agent_addr = agent_listener
                .local_addr()
                .map_err(Error::io("agent address"))?;
            let agent_task = tokio::spawn(
                Server::builder()
                    .add_service(agent_service)
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                        agent_listener,
                    )),
            );
            tracing::info!(address = %agent_addr, "node agent listening");
            let registration_task = args.register_with_kubelet.as_ref().map(|csi_socket| {
                let dir = args
                    .registration_dir
                    .clone()
                    .unwrap_or_else(|| args.node.kubelet_dir.join("plugins_registry"));
                warren_kube::registration::spawn(&dir, csi_socket, stop_rx.clone())
            });
            let node = NodeService::new(
                store,
                Arc::new(SystemMounter),
                args.node.kubelet_dir.clone(),
                args.common.nfs.node_deadlines(),
            );
            let identity = IdentityService::new(false, ready.clone());
            let router = Server::builder()
                .add_service(IdentityServer::new(Observed::new(
                    identity,
                    metrics.clone(),
                )))
                .add_service(NodeServer::new(Observed::new(node, metrics)));
            let served = serve_csi(router, &args.common.endpoint, ready, stop_rx).await;
            // The CSI side has had its grace period; the agent's calls are covered by the
            // controller's retries and records.
            agent_task.abort();
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
    ready: Arc<AtomicBool>,
    stop_rx: watch::Receiver<bool>,
) -> Result<()> {
    let store = open_store(node_side)?;
    let metrics = observability(common, Some(&store), &ready, &stop_rx).await?;
    let nodes = Nodes::default();
    nodes.add(&node_side.node_id, sharing_store(node_side, &store).await?);
    let controller = start_controller(common, nodes, stop_rx.clone()).await?;
    let controller = Arc::new(Observed::from_arc(controller, metrics.clone()));
    let node = NodeService::new(
        store,
        Arc::new(SystemMounter),
        node_side.kubelet_dir.clone(),
        common.nfs.node_deadlines(),
    );
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

fn open_store(node: &NodeSide) -> Result<LocalStore> {
    validate_node_id(&node.node_id)?;
    LocalStore::open(&node.node_id, &node.storage_root, Arc::new(LoopDevices)).map_err(Into::into)
}

/// The node's storage as the controller reaches it, with the built-in share started
/// when `--share-listen` asks for it (which serves again what was shared before).
async fn sharing_store(node: &NodeSide, store: &LocalStore) -> Result<Arc<SharingStore>> {
    let Some(listen) = &node.share_listen else {
        return Ok(Arc::new(SharingStore::new(store.clone(), None)));
    };
    let listen: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| Error::InvalidArgument(format!("--share-listen {listen:?}: {e}")))?;
    let advertise: std::net::IpAddr = match &node.share_address {
        Some(a) => a
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("--share-address {a:?}: {e}")))?,
        None if !listen.ip().is_unspecified() => listen.ip(),
        None => {
            return Err(Error::InvalidArgument(
                "--share-listen on 0.0.0.0 needs --share-address (the IP other nodes reach)".into(),
            ))
        }
    };
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

fn read_token(path: &std::path::Path) -> Result<String> {
    let token = std::fs::read_to_string(path)
        .map_err(Error::io(format!("read agent token {}", path.display())))?;
    let token = token.trim().to_string();
    agent::validate_token(&token)?;
    Ok(token)
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

/// Keeps `nodes` equal to the agents the Node objects name (standard mode). Without a
/// Kubernetes API the process exits: --discover-nodes is only given in a cluster.
async fn discover_nodes(nodes: Nodes, port: u16, token: String, stop: watch::Receiver<bool>) {
    let mut known: BTreeMap<String, String> = BTreeMap::new();
    let update = |agents: &BTreeMap<String, String>| {
        for gone in known.keys().filter(|n| !agents.contains_key(*n)) {
            nodes.remove(gone);
            tracing::info!(node = %gone, "node left");
        }
        for (name, address) in agents {
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
        known = agents.clone();
    };
    if let Err(e) = warren_kube::discovery::run(port, update, stop).await {
        tracing::error!(error = %e, "--discover-nodes needs the Kubernetes API");
        std::process::exit(1);
    }
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
