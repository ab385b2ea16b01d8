//! Command line: `warren all | controller | node`. Every flag can also be set through a
//! `WARREN_*` environment variable (what a DaemonSet or a systemd unit usually does).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "warren",
    version,
    about = "Warren: a Kubernetes CSI driver for local volumes (warren.csi.dev)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub mode: Mode,
}

#[derive(Subcommand, Debug)]
pub enum Mode {
    /// Controller and node in one process: single-node clusters, edge nodes, standalone use.
    All(AllArgs),
    /// The CSI Controller service; reaches nodes through their agents.
    Controller(ControllerArgs),
    /// The CSI Node service and this node's storage agent.
    Node(NodeArgs),
    /// Sidecar-free node for K3s and edge clusters: controller and node in one process,
    /// plus kubelet plugin registration and a built-in provisioner, resizer, deleter and
    /// snapshotter that talk to the Kubernetes API (run as a DaemonSet).
    Edge(EdgeArgs),
    /// The replica service: keeps this node's replicas of replicated volumes.
    Replica(ReplicaArgs),
    /// The engine of one replicated volume, exposed through a frontend until SIGTERM.
    Volume(VolumeArgs),
}

#[derive(Args, Debug)]
pub struct ReplicaArgs {
    /// This replica service's id (normally the node name).
    #[arg(long, env = "WARREN_NODE_ID")]
    pub node_id: String,
    /// Address to listen on, HOST:PORT.
    #[arg(long, env = "WARREN_REPLICA_LISTEN", default_value = "0.0.0.0:7460")]
    pub listen: String,
    /// Directory holding this node's replicas.
    #[arg(
        long,
        env = "WARREN_REPLICA_ROOT",
        default_value = "/var/lib/warren/replicas"
    )]
    pub root: PathBuf,
    /// File holding the shared replication token (at least 16 bytes).
    #[arg(long, env = "WARREN_REPLICA_TOKEN_FILE")]
    pub token_file: PathBuf,
    #[arg(long, env = "WARREN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Args, Debug)]
pub struct VolumeArgs {
    /// The volume's name.
    #[arg(long)]
    pub volume: String,
    /// Size in bytes (a multiple of 4096).
    #[arg(long)]
    pub size: u64,
    /// A replica of the volume, ID=HOST:PORT; repeat per replica.
    #[arg(long = "replica", required = true)]
    pub replicas: Vec<String>,
    /// The replica on this node: reads go there first.
    #[arg(long)]
    pub local: Option<String>,
    /// Create the volume (every replica must be reachable).
    #[arg(long)]
    pub create: bool,
    /// Keep the local replica (`--local`) in this process, under this directory, instead
    /// of reaching a `warren replica` over TCP: its writes skip the network. This process
    /// then also serves that replica to other engines on its `--replica` address.
    #[arg(long, requires = "local", value_name = "DIR")]
    pub local_root: Option<PathBuf>,
    #[arg(long, env = "WARREN_REPLICA_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// Rebuild copy rate limit in MiB/s (0: unlimited).
    #[arg(long, default_value_t = 0)]
    pub rebuild_rate_mib: u64,
    /// A replica that does not answer within this many milliseconds is cut out.
    #[arg(long, default_value_t = 5000)]
    pub io_timeout_ms: u64,
    /// Serve the volume over NBD on this Unix socket.
    #[arg(long)]
    pub nbd_socket: Option<PathBuf>,
    /// Kernel block device to create: auto (ublk, then NBD, then FUSE + loop), ublk, nbd,
    /// fuse, or none.
    #[arg(long, default_value = "none")]
    pub frontend: String,
    /// Where the fuse frontend mounts the file holding the volume.
    #[arg(long, default_value = "/run/warren/fuse")]
    pub fuse_dir: PathBuf,
    /// Make this path a symlink to the kernel block device.
    #[arg(long)]
    pub device_link: Option<PathBuf>,
    /// Write the engine's status as JSON to this file whenever it changes.
    #[arg(long)]
    pub status_file: Option<PathBuf>,
    #[arg(long, env = "WARREN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// CSI endpoint: unix:///path/csi.sock (or tcp://host:port for debugging).
    #[arg(
        long,
        env = "WARREN_ENDPOINT",
        default_value = "unix:///run/warren/csi.sock"
    )]
    pub endpoint: String,
    /// Where Warren keeps its own durable state.
    #[arg(long, env = "WARREN_STATE_DIR", default_value = "/var/lib/warren")]
    pub state_dir: PathBuf,
    #[arg(long, env = "WARREN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Serve Prometheus metrics (/metrics) and a health check (/healthz) over HTTP on
    /// HOST:PORT; off when unset.
    #[arg(long, env = "WARREN_METRICS_ADDRESS", value_name = "HOST:PORT")]
    pub metrics_address: Option<String>,
    #[command(flatten)]
    pub nfs: NfsArgs,
}

/// Deadlines of NFS volumes' work: a server that does not answer fails the call at its
/// deadline instead of hanging it.
#[derive(Args, Debug, Clone)]
pub struct NfsArgs {
    /// Seconds for one controller operation on an NFS server (make, archive, remove a
    /// directory; free space).
    #[arg(long, env = "WARREN_NFS_TIMEOUT", default_value_t = 30)]
    pub nfs_timeout: u64,
    /// Seconds for one copy on an NFS server (snapshot, restore, clone).
    #[arg(long, env = "WARREN_NFS_COPY_TIMEOUT", default_value_t = 600)]
    pub nfs_copy_timeout: u64,
    /// Seconds for one kernel NFS mount on a node.
    #[arg(long, env = "WARREN_NFS_MOUNT_TIMEOUT", default_value_t = 60)]
    pub nfs_mount_timeout: u64,
    /// Seconds a node waits for an NFS server's answer when it checks a mount's health
    /// (NodeGetVolumeStats, a retried stage or publish) or unmounts.
    #[arg(long, env = "WARREN_NFS_PROBE_TIMEOUT", default_value_t = 5)]
    pub nfs_probe_timeout: u64,
}

impl NfsArgs {
    pub fn export_options(&self) -> warren_nfs::dirops::ExportOptions {
        warren_nfs::dirops::ExportOptions {
            deadline: Duration::from_secs(self.nfs_timeout),
            copy_deadline: Duration::from_secs(self.nfs_copy_timeout),
            // A reserved source port where the process may bind one (Linux knfsd's
            // default `secure` exports want it); otherwise any port.
            privileged_port: warren_nfs::dirops::may_bind_privileged_port(),
            ..Default::default()
        }
    }

    pub fn node_deadlines(&self) -> warren_node::nfs::Deadlines {
        warren_node::nfs::Deadlines {
            mount: Duration::from_secs(self.nfs_mount_timeout),
            probe: Duration::from_secs(self.nfs_probe_timeout),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct NodeSide {
    /// This node's name (the Kubernetes node name).
    #[arg(long, env = "WARREN_NODE_ID")]
    pub node_id: String,
    /// Directory that holds this node's volumes and snapshots.
    #[arg(
        long,
        env = "WARREN_STORAGE_ROOT",
        default_value = "/var/lib/warren/storage"
    )]
    pub storage_root: PathBuf,
    /// The kubelet's root directory; every staging and target path must lie below it.
    #[arg(long, env = "WARREN_KUBELET_DIR", default_value = "/var/lib/kubelet")]
    pub kubelet_dir: PathBuf,
    /// Serve this node's `backend: share` volumes over NFSv3 on HOST:PORT (one port for
    /// MOUNT and NFS); off when unset, and such volumes are then refused here.
    #[arg(long, env = "WARREN_SHARE_LISTEN", value_name = "HOST:PORT")]
    pub share_listen: Option<String>,
    /// The address other nodes reach this node's share at (its InternalIP); by default
    /// the --share-listen host, which must then not be 0.0.0.0.
    #[arg(long, env = "WARREN_SHARE_ADDRESS", value_name = "IP")]
    pub share_address: Option<String>,
    #[command(flatten)]
    pub replicas: ReplicaHostArgs,
}

/// This node's replica service, kept in the node process: it holds the node's replicas
/// of `backend: replicated` volumes, and engines of volumes staged here reach it in
/// process. Off when --replica-listen is unset (then such volumes are refused here).
#[derive(Args, Debug, Clone)]
pub struct ReplicaHostArgs {
    /// Serve this node's replicas on HOST:PORT (engines on other nodes connect here).
    #[arg(long, env = "WARREN_REPLICA_LISTEN", value_name = "HOST:PORT")]
    pub replica_listen: Option<String>,
    /// The IP other nodes reach the replica service at (its InternalIP); by default the
    /// --replica-listen host, which must then not be 0.0.0.0.
    #[arg(long, env = "WARREN_REPLICA_ADDRESS", value_name = "IP")]
    pub replica_address: Option<String>,
    /// File holding the cluster's replication token (at least 16 bytes), the same on
    /// every node: node-to-node replication traffic is refused without it. The edge mode
    /// may take it from --cluster-token-secret instead.
    #[arg(long, env = "WARREN_REPLICA_TOKEN_FILE", requires = "replica_listen")]
    pub replica_token_file: Option<PathBuf>,
    /// Directory holding this node's replicas [default: <storage-root>/replicas].
    #[arg(long, env = "WARREN_REPLICA_ROOT")]
    pub replica_root: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct AllArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub node: NodeSide,
}

#[derive(Args, Debug)]
pub struct EdgeArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub node: NodeSide,
    /// Namespace of the Lease that elects the node placing Immediate-binding claims
    /// (Warren's own namespace).
    #[arg(long, env = "WARREN_NAMESPACE", default_value = "kube-system")]
    pub namespace: String,
    /// The kubelet's plugin registration directory [default: <kubelet-dir>/plugins_registry].
    #[arg(long, env = "WARREN_REGISTRATION_DIR")]
    pub registration_dir: Option<PathBuf>,
    /// Serve this node's storage agent on HOST:PORT to the other nodes' Warren, and reach
    /// theirs (found from the Node objects, at their InternalIP and this port): what a
    /// replicated volume's provisioning needs to create replicas on other nodes.
    /// Needs the cluster token (--cluster-token-secret or --agent-token-file). Off when
    /// unset: replicated volumes then have replicas on this node only.
    #[arg(long, env = "WARREN_AGENT_LISTEN")]
    pub agent_listen: Option<String>,
    /// File holding the cluster's agent token.
    #[arg(
        long,
        env = "WARREN_AGENT_TOKEN_FILE",
        conflicts_with = "cluster_token_secret"
    )]
    pub agent_token_file: Option<PathBuf>,
    /// Secret (in --namespace, key `token`) holding the cluster token that node agents and
    /// replication traffic carry; created with a random token when missing.
    #[arg(long, env = "WARREN_CLUSTER_TOKEN_SECRET")]
    pub cluster_token_secret: Option<String>,
}

#[derive(Args, Debug)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub common: Common,
    /// A node and its agent address, NODE=http://HOST:PORT; repeat per node.
    #[arg(
        long = "node-agent",
        env = "WARREN_NODE_AGENTS",
        value_delimiter = ',',
        required_unless_present = "discover_nodes"
    )]
    pub node_agents: Vec<String>,
    /// In a cluster: find the nodes' agents from the Node objects (those labelled with
    /// Warren's topology key, at their InternalIP and --agent-port) and follow changes.
    #[arg(long, env = "WARREN_DISCOVER_NODES")]
    pub discover_nodes: bool,
    /// Port of the node agents found by --discover-nodes.
    #[arg(long, env = "WARREN_AGENT_PORT", default_value_t = 7461)]
    pub agent_port: u16,
    /// File holding the shared agent token.
    #[arg(long, env = "WARREN_AGENT_TOKEN_FILE")]
    pub agent_token_file: PathBuf,
}

#[derive(Args, Debug)]
pub struct NodeArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub node: NodeSide,
    /// Address the storage agent listens on for the controller, HOST:PORT.
    #[arg(long, env = "WARREN_AGENT_LISTEN")]
    pub agent_listen: String,
    /// Register with the kubelet itself (instead of the node-driver-registrar sidecar),
    /// telling it the CSI socket is at this path as the kubelet sees it, e.g.
    /// /var/lib/kubelet/plugins/warren.csi.dev/csi.sock.
    #[arg(long, env = "WARREN_REGISTER_WITH_KUBELET")]
    pub register_with_kubelet: Option<PathBuf>,
    /// The kubelet's plugin registration directory [default: <kubelet-dir>/plugins_registry].
    #[arg(long, env = "WARREN_REGISTRATION_DIR")]
    pub registration_dir: Option<PathBuf>,
    /// File holding the shared agent token.
    #[arg(long, env = "WARREN_AGENT_TOKEN_FILE")]
    pub agent_token_file: PathBuf,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}
