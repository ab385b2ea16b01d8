//! Replicated volumes through the node service, on real parts: two "nodes" in one process,
//! each with its own replica service on localhost TCP, its own storage root and kubelet
//! dir; engines with the node's own replica in process; the FUSE + loop frontend (this
//! host has neither ublk nor nbd); real mkfs and mounts. Needs root and /dev/fuse, else
//! each test says it was skipped. Every test cleans up its mounts and loop devices, even
//! when it fails (`Cluster`'s Drop).

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
use tonic::{Code, Request};
use warren_core::ids::{Key, Layout, ReplicatedVolumeId};
use warren_core::params::{ReplicaEndpoint, ReplicatedContext};
use warren_core::storage::{NodeStorage, ReplicaSpec};
use warren_node::local::LocalStore;
use warren_node::loopdev::{BlockDevices, LoopDevices};
use warren_node::mounter::SystemMounter;
use warren_node::replicated::{ReplicaHost, ReplicatingStore};
use warren_node::service::NodeService;
use warren_replica::auth::Token;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 64 * MIB;

/// Whether this machine can stage replicated volumes; says why not.
fn can_run() -> bool {
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

fn token() -> Token {
    Token::new(b"replicated-node-test-token-0123".to_vec()).unwrap()
}

struct TestNode {
    name: String,
    kubelet: PathBuf,
    replicas: PathBuf,
    host: Arc<ReplicaHost>,
    store: ReplicatingStore,
    service: NodeService,
}

impl TestNode {
    async fn start(base: &Path, name: &str) -> TestNode {
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
        let store = ReplicatingStore::new(Arc::new(local.clone()), Some(host.clone()));
        let service = NodeService::new(
            local,
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
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.kubelet.join(rel)
    }

    async fn stage(
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

    async fn unstage(&self, id: &str, staging: &Path) {
        self.service
            .node_unstage_volume(Request::new(NodeUnstageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: staging.display().to_string(),
            }))
            .await
            .unwrap();
    }

    async fn publish(&self, id: &str, staging: &Path, target: &Path, cap: VolumeCapability) {
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

    async fn unpublish(&self, id: &str, target: &Path) {
        self.service
            .node_unpublish_volume(Request::new(NodeUnpublishVolumeRequest {
                volume_id: id.into(),
                target_path: target.display().to_string(),
            }))
            .await
            .unwrap();
    }

    async fn stats(
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
struct Cluster {
    base: PathBuf,
    a: TestNode,
    b: TestNode,
    id: ReplicatedVolumeId,
    context: HashMap<String, String>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn new() -> Cluster {
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
            size_bytes: SIZE,
            rebuild_rate: 0,
        }
        .write(&mut context);
        Cluster {
            base,
            a,
            b,
            id,
            context,
            _dir: dir,
        }
    }

    async fn create_replicas(&self) {
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
                    size_bytes: SIZE,
                    members: vec!["a".into(), "b".into()],
                })
                .await
                .unwrap();
            assert_eq!((info.gen, info.in_sync, info.size_bytes), (1, true, SIZE));
            assert_eq!(
                (info.node.as_str(), info.endpoint.as_str()),
                (node.name.as_str(), node.host.endpoint())
            );
        }
    }

    fn replica_data(&self, node: &TestNode) -> PathBuf {
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

fn cap(access: AccessType) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(access),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

fn mount_cap() -> VolumeCapability {
    cap(AccessType::Mount(MountVolume::default()))
}

fn block_cap() -> VolumeCapability {
    cap(AccessType::Block(BlockVolume {}))
}

/// Self-describing contents: every 8 bytes hold their offset mixed with a seed.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len / 8)
        .flat_map(|i| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed).to_le_bytes())
        .collect()
}

/// FNV-1a: a checksum that needs no crate.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes at `offset` of a block device (or a file) and makes it durable: the error of the
/// write or of the flush, if any.
async fn write_durably(path: &Path, offset: u64, data: Vec<u8>) -> std::io::Result<()> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let f = std::fs::OpenOptions::new().write(true).open(&path)?;
        f.write_all_at(&data, offset)?;
        f.sync_all()
    })
    .await
    .unwrap()
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_written_on_one_node_is_read_on_the_other() {
    if !can_run() {
        return;
    }
    let c = Cluster::new().await;
    c.create_replicas().await;
    let id = c.id.to_string();
    let (staging_a, pod_a) = (c.a.path("staging/v"), c.a.path("pods/p1/vol"));
    c.a.stage(&id, &staging_a, mount_cap(), &c.context)
        .await
        .unwrap();
    // A retried stage finds it staged.
    c.a.stage(&id, &staging_a, mount_cap(), &c.context)
        .await
        .unwrap();
    c.a.publish(&id, &staging_a, &pod_a, mount_cap()).await;
    let data = pattern(7, 4 * MIB as usize);
    let sum = checksum(&data);
    let file = pod_a.join("file");
    tokio::task::spawn_blocking(move || {
        std::fs::write(&file, &data).unwrap();
        std::fs::File::open(&file).unwrap().sync_all().unwrap();
    })
    .await
    .unwrap();
    let stats = c.a.stats(&id, &pod_a).await.unwrap();
    let condition = stats.volume_condition.unwrap();
    assert!(!condition.abnormal, "{}", condition.message);
    assert!(stats.usage[0].used >= 4 * MIB as i64, "{:?}", stats.usage);
    c.a.unpublish(&id, &pod_a).await;
    c.a.unstage(&id, &staging_a).await;
    c.a.unstage(&id, &staging_a).await; // unstaged already: OK

    let staging_b = c.b.path("staging/v");
    c.b.stage(&id, &staging_b, mount_cap(), &c.context)
        .await
        .unwrap();
    let file = staging_b.join("file");
    let read = tokio::task::spawn_blocking(move || std::fs::read(file).unwrap())
        .await
        .unwrap();
    assert_eq!(checksum(&read), sum);

    // Neither replica can be deleted while b's engine has them open (a's over TCP).
    for node in [&c.a, &c.b] {
        let err = node.store.delete_replica(c.id.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{}: {err}", node.name);
        assert!(c.replica_data(node).exists());
    }
    c.b.unstage(&id, &staging_b).await;
    for node in [&c.a, &c.b] {
        node.store.delete_replica(c.id.clone()).await.unwrap();
        assert!(
            !c.replica_data(node).parent().unwrap().exists(),
            "{}",
            node.name
        );
        let err = node.store.get_replica(c.id.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        node.store.delete_replica(c.id.clone()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_raw_block_volume_is_written_through_its_published_device() {
    if !can_run() {
        return;
    }
    let c = Cluster::new().await;
    c.create_replicas().await;
    let id = c.id.to_string();
    let (staging, target) = (c.a.path("staging/b"), c.a.path("pods/p2/dev"));
    c.a.stage(&id, &staging, block_cap(), &c.context)
        .await
        .unwrap();
    c.a.publish(&id, &staging, &target, block_cap()).await;
    let data = pattern(3, MIB as usize);
    write_durably(&target, 5 * MIB, data.clone()).await.unwrap();
    let back = {
        let target = target.clone();
        tokio::task::spawn_blocking(move || read_at(&target, 5 * MIB, MIB as usize))
            .await
            .unwrap()
    };
    assert_eq!(back, data);
    let stats = c.a.stats(&id, &target).await.unwrap();
    assert_eq!(stats.usage[0].total, SIZE as i64);
    c.a.unpublish(&id, &target).await;
    assert!(!target.exists());
    c.a.unstage(&id, &staging).await;
    // Both replicas hold it, byte for byte.
    for node in [&c.a, &c.b] {
        assert_eq!(
            read_at(&c.replica_data(node), 5 * MIB, MIB as usize),
            data,
            "{}",
            node.name
        );
    }
    assert!(c.a.stats(&id, &target).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_node_fences_the_first() {
    if !can_run() {
        return;
    }
    let c = Cluster::new().await;
    c.create_replicas().await;
    let id = c.id.to_string();
    let (staging_a, staging_b) = (c.a.path("staging/f"), c.b.path("staging/f"));
    let (dev_a, dev_b) = (c.a.path("pods/pa/dev"), c.b.path("pods/pb/dev"));
    c.a.stage(&id, &staging_a, block_cap(), &c.context)
        .await
        .unwrap();
    c.a.publish(&id, &staging_a, &dev_a, block_cap()).await;
    write_durably(&dev_a, 0, pattern(1, 64 * 1024))
        .await
        .unwrap();
    // The volume moves to b while a still has it staged (a's node presumed gone).
    c.b.stage(&id, &staging_b, block_cap(), &c.context)
        .await
        .unwrap();
    c.b.publish(&id, &staging_b, &dev_b, block_cap()).await;
    let from_b = pattern(2, 64 * 1024);
    write_durably(&dev_b, 0, from_b.clone()).await.unwrap();
    // a's next write cannot land: its engine is fenced on every replica.
    let err = write_durably(&dev_a, 0, pattern(9, 64 * 1024))
        .await
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let condition =
        c.a.stats(&id, &dev_a)
            .await
            .unwrap()
            .volume_condition
            .unwrap();
    assert!(
        condition.abnormal && condition.message.contains("fenced"),
        "{}",
        condition.message
    );
    let condition =
        c.b.stats(&id, &dev_b)
            .await
            .unwrap()
            .volume_condition
            .unwrap();
    assert!(!condition.abnormal, "{}", condition.message);
    c.a.unpublish(&id, &dev_a).await;
    c.a.unstage(&id, &staging_a).await; // a fenced engine still unstages
                                        // b's data is intact: through b's device, and on both replicas once b closed.
    let back = tokio::task::spawn_blocking({
        let dev_b = dev_b.clone();
        move || read_at(&dev_b, 0, 64 * 1024)
    })
    .await
    .unwrap();
    assert_eq!(back, from_b);
    c.b.unpublish(&id, &dev_b).await;
    c.b.unstage(&id, &staging_b).await;
    for node in [&c.a, &c.b] {
        assert_eq!(
            read_at(&c.replica_data(node), 0, 64 * 1024),
            from_b,
            "{}",
            node.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_nothing_touched() {
    let c = Cluster::new().await;
    c.create_replicas().await;
    let id = c.id.to_string();
    let staging = c.a.path("staging/bad");
    let with = |key: &str, value: &str| {
        let mut context = c.context.clone();
        context.insert(key.into(), value.into());
        context
    };
    let mut no_size = c.context.clone();
    no_size.remove("warren.csi.dev/size");
    let bad_contexts = [
        with("warren.csi.dev/replicas", "../x=127.0.0.1:1"),
        with("warren.csi.dev/replicas", "a=127.0.0.1"),
        with("warren.csi.dev/size", "4097"),
        no_size,
    ];
    for context in &bad_contexts {
        let err =
            c.a.stage(&id, &staging, mount_cap(), context)
                .await
                .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{context:?}: {err}");
    }
    let bad_fs = cap(AccessType::Mount(MountVolume {
        fs_type: "ntfs".into(),
        ..Default::default()
    }));
    let multi_node = VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeMultiWriter as i32,
        }),
        ..block_cap()
    };
    for cap in [bad_fs, multi_node] {
        let err = c.a.stage(&id, &staging, cap, &c.context).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    }
    // A malformed replicated ID cannot name a volume: NOT_FOUND, as for every kind
    // (docs/design.md, "Bad input").
    let err =
        c.a.stage("replicated#../x", &staging, mount_cap(), &c.context)
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let err =
        c.a.stage(&id, Path::new("/tmp/outside"), mount_cap(), &c.context)
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    // Nothing was started, attached or made.
    assert!(!staging.exists());
    assert!(!c.a.replicas.join(".fuse").exists());
    assert_eq!(
        c.a.stats(&id, &staging).await.unwrap_err().code(),
        Code::NotFound
    );
    let info = c.a.store.get_replica(c.id.clone()).await.unwrap();
    assert_eq!((info.gen, info.members.len()), (1, 2));

    // A replica of another size is ALREADY_EXISTS; members without this node, bad.
    let err =
        c.a.store
            .create_replica(ReplicaSpec {
                volume: c.id.clone(),
                size_bytes: 2 * SIZE,
                members: vec!["a".into(), "b".into()],
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    let err =
        c.a.store
            .create_replica(ReplicaSpec {
                volume: ReplicatedVolumeId::new(Key::random()),
                size_bytes: SIZE,
                members: vec!["b".into(), "c".into()],
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_replica_service_refuses_replicated_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalStore::open("n", &dir.path().join("storage"), Arc::new(LoopDevices)).unwrap();
    let kubelet = dir.path().join("kubelet");
    std::fs::create_dir_all(&kubelet).unwrap();
    let service = NodeService::new(
        local.clone(),
        Arc::new(SystemMounter),
        kubelet.clone(),
        Default::default(),
    );
    let id = ReplicatedVolumeId::new(Key::random());
    let mut context = HashMap::new();
    ReplicatedContext {
        replicas: vec![ReplicaEndpoint {
            node: "n".into(),
            endpoint: "127.0.0.1:1".into(),
        }],
        size_bytes: SIZE,
        rebuild_rate: 0,
    }
    .write(&mut context);
    let err = service
        .node_stage_volume(Request::new(NodeStageVolumeRequest {
            volume_id: id.to_string(),
            staging_target_path: kubelet.join("s").display().to_string(),
            volume_capability: Some(mount_cap()),
            volume_context: context,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("no replica service"), "{err}");
    let store = ReplicatingStore::new(Arc::new(local), None);
    assert_eq!(
        store
            .capacity(Layout::Image)
            .await
            .unwrap()
            .replica_endpoint,
        None
    );
    let err = store
        .create_replica(ReplicaSpec {
            volume: id,
            size_bytes: SIZE,
            members: vec!["n".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
}
