//! The harness of the replicated-volume tests (`replicated.rs`, `replicated_expand.rs`):
//! two "nodes" in one process, each with its own replica service on localhost TCP, its
//! own storage root and kubelet dir. Not every test file uses every helper.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use csi_proto::v1::node_server::Node;
use csi_proto::v1::volume_capability::{
    access_mode::Mode, AccessMode, AccessType, BlockVolume, MountVolume,
};
use csi_proto::v1::*;
use tonic::Request;
use warren_core::ids::{Key, Layout, ReplicatedVolumeId};
use warren_core::params::{ReplicaEndpoint, ReplicatedContext};
use warren_core::storage::{NodeStorage, ReplicaSpec};
use warren_node::local::LocalStore;
use warren_node::loopdev::{BlockDevices, LoopDevices};
use warren_node::mounter::SystemMounter;
use warren_node::replicated::{ReplicaHost, ReplicatingStore};
use warren_node::service::NodeService;
use warren_replica::auth::Token;

pub const MIB: u64 = 1 << 20;
pub const SIZE: u64 = 64 * MIB;

/// Whether this machine can stage replicated volumes; says why not.
pub fn can_run() -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        Some("not root".to_string())
    } else if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Some(format!("cannot open /dev/fuse: {e}"))
    } else if !Path::new("/usr/sbin/mkfs.ext4").exists() && !Path::new("/sbin/mkfs.ext4").exists() {
        Some("mkfs.ext4 not found".to_string())
    } else {
        None
    };
    match why {
        None => true,
        Some(why) => {
            warren_test_support::skip("WARREN_REQUIRE_FUSE", &why);
            false
        }
    }
}

pub fn token() -> Token {
    Token::new(b"replicated-node-test-token-0123".to_vec()).unwrap()
}

pub struct TestNode {
    pub name: String,
    pub kubelet: PathBuf,
    pub replicas: PathBuf,
    pub host: Arc<ReplicaHost>,
    pub store: ReplicatingStore,
    pub service: NodeService,
    /// The node's local volumes (what its store seeds replicated volumes from).
    pub local: LocalStore,
}

impl TestNode {
    pub async fn start(base: &Path, name: &str) -> TestNode {
        let dir = base.join(name);
        let kubelet = dir.join("kubelet");
        std::fs::create_dir_all(&kubelet).unwrap();
        let local = LocalStore::open(name, &dir.join("storage"), Arc::new(LoopDevices)).unwrap();
        let replicas = dir.join("replicas");
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let host = ReplicaHost::start(
            name,
            replicas.clone(),
            listen,
            "127.0.0.1:0".into(),
            token(),
        )
        .await
        .unwrap();
        let store = ReplicatingStore::new(Arc::new(local.clone()), Some(host.clone()))
            .with_local(local.clone());
        let service = NodeService::new(
            local.clone(),
            Arc::new(SystemMounter),
            kubelet.clone(),
            Default::default(),
        )
        .with_replicas(host.clone());
        TestNode {
            name: name.into(),
            kubelet,
            replicas,
            host,
            store,
            service,
            local,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.kubelet.join(rel)
    }

    pub async fn stage(
        &self,
        id: &str,
        staging: &Path,
        cap: VolumeCapability,
        context: &HashMap<String, String>,
    ) -> Result<(), tonic::Status> {
        self.service
            .node_stage_volume(Request::new(NodeStageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(cap),
                volume_context: context.clone(),
                ..Default::default()
            }))
            .await
            .map(drop)
    }

    pub async fn unstage(&self, id: &str, staging: &Path) {
        self.service
            .node_unstage_volume(Request::new(NodeUnstageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: staging.display().to_string(),
            }))
            .await
            .unwrap();
    }

    pub async fn publish(&self, id: &str, staging: &Path, target: &Path, cap: VolumeCapability) {
        self.service
            .node_publish_volume(Request::new(NodePublishVolumeRequest {
                volume_id: id.into(),
                staging_target_path: staging.display().to_string(),
                target_path: target.display().to_string(),
                volume_capability: Some(cap),
                ..Default::default()
            }))
            .await
            .unwrap();
    }

    pub async fn unpublish(&self, id: &str, target: &Path) {
        self.service
            .node_unpublish_volume(Request::new(NodeUnpublishVolumeRequest {
                volume_id: id.into(),
                target_path: target.display().to_string(),
            }))
            .await
            .unwrap();
    }

    /// NodeExpandVolume of the volume at `path`; the size it answers.
    pub async fn expand(&self, id: &str, path: &Path, required: u64) -> Result<u64, tonic::Status> {
        self.service
            .node_expand_volume(Request::new(NodeExpandVolumeRequest {
                volume_id: id.into(),
                volume_path: path.display().to_string(),
                capacity_range: Some(CapacityRange {
                    required_bytes: required as i64,
                    limit_bytes: 0,
                }),
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner().capacity_bytes as u64)
    }

    pub async fn stats(
        &self,
        id: &str,
        path: &Path,
    ) -> Result<NodeGetVolumeStatsResponse, tonic::Status> {
        self.service
            .node_get_volume_stats(Request::new(NodeGetVolumeStatsRequest {
                volume_id: id.into(),
                volume_path: path.display().to_string(),
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner())
    }
}

/// Two nodes, a and b, and one replicated volume with a replica on each.
pub struct Cluster {
    pub base: PathBuf,
    pub a: TestNode,
    pub b: TestNode,
    pub id: ReplicatedVolumeId,
    pub context: HashMap<String, String>,
    /// The size at creation (the volume context's).
    pub size: u64,
    pub _dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn new() -> Cluster {
        Cluster::with_size(SIZE).await
    }

    /// A cluster whose volume has `size` bytes (xfs needs at least 300 MiB).
    pub async fn with_size(size: u64) -> Cluster {
        let tmp = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("warren-replicated-")
            .tempdir_in(tmp)
            .unwrap();
        let base = dir.path().to_path_buf();
        let (a, b) = (
            TestNode::start(&base, "a").await,
            TestNode::start(&base, "b").await,
        );
        let id = ReplicatedVolumeId::new(Key::random());
        let mut context = HashMap::new();
        ReplicatedContext {
            replicas: [&a, &b]
                .iter()
                .map(|n| ReplicaEndpoint {
                    node: n.name.clone(),
                    endpoint: n.host.endpoint().to_string(),
                })
                .collect(),
            size_bytes: size,
            rebuild_rate: 0,
        }
        .write(&mut context);
        Cluster {
            base,
            a,
            b,
            id,
            context,
            size,
            _dir: dir,
        }
    }

    pub async fn create_replicas(&self) {
        for node in [&self.a, &self.b] {
            // What the controller learns of the node, and then of its replica.
            let capacity = node.store.capacity(Layout::Image).await.unwrap();
            assert_eq!(
                capacity.replica_endpoint.as_deref(),
                Some(node.host.endpoint())
            );
            assert!(!node.host.endpoint().ends_with(":0"));
            let info = node
                .store
                .create_replica(ReplicaSpec {
                    volume: self.id.clone(),
                    size_bytes: self.size,
                    members: vec!["a".into(), "b".into()],
                })
                .await
                .unwrap();
            assert_eq!(
                (info.gen, info.in_sync, info.size_bytes),
                (1, true, self.size)
            );
            assert_eq!(
                (info.node.as_str(), info.endpoint.as_str()),
                (node.name.as_str(), node.host.endpoint())
            );
        }
    }

    pub fn replica_data(&self, node: &TestNode) -> PathBuf {
        node.replicas.join(self.id.replica_name()).join("data")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Whatever a failed test left: mounts below the test dir (deepest first; the FUSE
        // mounts last), then loop devices on files below it.
        if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut points: Vec<PathBuf> = warren_node::mountinfo::parse(&text)
                .into_iter()
                .map(|m| m.mount_point)
                .filter(|p| {
                    p.starts_with(&self.base) && !p.components().any(|c| c.as_os_str() == ".fuse")
                })
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for p in points {
                let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        if let Ok(attached) = LoopDevices.attached() {
            let base = self.base.display().to_string();
            for dev in attached
                .iter()
                .filter(|d| d.backing_path.starts_with(&base))
            {
                let _ = LoopDevices.detach_device(&dev.device);
            }
        }
        if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") {
            for m in warren_node::mountinfo::parse(&text) {
                if m.mount_point.starts_with(&self.base) {
                    let _ = nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
    }
}

pub fn cap(access: AccessType) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(access),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

pub fn mount_cap() -> VolumeCapability {
    cap(AccessType::Mount(MountVolume::default()))
}

pub fn block_cap() -> VolumeCapability {
    cap(AccessType::Block(BlockVolume {}))
}

/// Self-describing contents: every 8 bytes hold their offset mixed with a seed.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len / 8)
        .flat_map(|i| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed).to_le_bytes())
        .collect()
}

/// FNV-1a: a checksum that needs no crate.
pub fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes at `offset` of a block device (or a file) and makes it durable: the error of the
/// write or of the flush, if any.
pub async fn write_durably(path: &Path, offset: u64, data: Vec<u8>) -> std::io::Result<()> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let f = std::fs::OpenOptions::new().write(true).open(&path)?;
        f.write_all_at(&data, offset)?;
        f.sync_all()
    })
    .await
    .unwrap()
}

pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}
