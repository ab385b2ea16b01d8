//! Local volumes end to end on this machine's real kernel: loop devices, ext4/xfs, mounts.
//! Needs root (the node plugin always runs privileged). Each test uses its own storage
//! root and kubelet directory and cleans up its mounts and loop devices, even on failure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use csi_proto::v1::node_server::Node;
use csi_proto::v1::volume_capability::{
    access_mode::Mode, AccessMode, AccessType, BlockVolume, MountVolume,
};
use csi_proto::v1::*;
use tonic::{Code, Request};
use warren_core::ids::{Key, Layout, SnapshotId, VolumeId};
use warren_core::storage::{Allocation, ContentSource, NodeStorage, VolumeSpec};
use warren_node::local::LocalStore;
use warren_node::loopdev::{BlockDevices, LoopDevices};
use warren_node::mounter::SystemMounter;
use warren_node::service::NodeService;

const MIB: u64 = 1 << 20;
const NODE: &str = "test-node";

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    kubelet: PathBuf,
    store: LocalStore,
    node: NodeService,
}

impl Fixture {
    fn new() -> Fixture {
        // A real disk directory, not tmpfs: thick images use fallocate and reflink copies.
        let base = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("warren-node-")
            .tempdir_in(base)
            .unwrap();
        let root = dir.path().join("storage");
        let kubelet = dir.path().join("kubelet");
        std::fs::create_dir_all(&kubelet).unwrap();
        let store = LocalStore::open(NODE, &root, Arc::new(LoopDevices)).unwrap();
        let node = NodeService::new(
            store.clone(),
            Arc::new(SystemMounter),
            kubelet.clone(),
            Default::default(),
        );
        Fixture {
            _dir: dir,
            root,
            kubelet,
            store,
            node,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.kubelet.join(rel)
    }

    async fn create(&self, layout: Layout, bytes: u64, source: Option<ContentSource>) -> VolumeId {
        let id = VolumeId::new(layout, NODE, Key::random());
        self.store
            .create_volume(VolumeSpec {
                id: id.clone(),
                name: format!("pvc-{}", id.key),
                capacity_bytes: bytes,
                allocation: Allocation::Thick,
                source,
                shared: false,
                fs_type: None,
            })
            .await
            .unwrap();
        id
    }

    async fn stage(
        &self,
        id: &VolumeId,
        staging: &Path,
        cap: VolumeCapability,
    ) -> Result<(), tonic::Status> {
        self.node
            .node_stage_volume(Request::new(NodeStageVolumeRequest {
                volume_id: id.to_string(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(cap),
                ..Default::default()
            }))
            .await
            .map(drop)
    }

    async fn publish(
        &self,
        id: &VolumeId,
        staging: &Path,
        target: &Path,
        cap: VolumeCapability,
        readonly: bool,
    ) -> Result<(), tonic::Status> {
        self.node
            .node_publish_volume(Request::new(NodePublishVolumeRequest {
                volume_id: id.to_string(),
                staging_target_path: staging.display().to_string(),
                target_path: target.display().to_string(),
                volume_capability: Some(cap),
                readonly,
                ..Default::default()
            }))
            .await
            .map(drop)
    }

    async fn unpublish(&self, id: &VolumeId, target: &Path) {
        self.node
            .node_unpublish_volume(Request::new(NodeUnpublishVolumeRequest {
                volume_id: id.to_string(),
                target_path: target.display().to_string(),
            }))
            .await
            .unwrap();
    }

    async fn unstage(&self, id: &VolumeId, staging: &Path) {
        self.node
            .node_unstage_volume(Request::new(NodeUnstageVolumeRequest {
                volume_id: id.to_string(),
                staging_target_path: staging.display().to_string(),
            }))
            .await
            .unwrap();
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Unmount anything left below the kubelet dir (deepest first), detach loops.
        if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut points: Vec<PathBuf> = warren_node::mountinfo::parse(&text)
                .into_iter()
                .map(|m| m.mount_point)
                .filter(|p| p.starts_with(&self.kubelet))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for p in points {
                let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.root.join("volumes")) {
            for e in entries.flatten() {
                let _ = LoopDevices.detach(&e.path().join("disk.img"));
            }
        }
    }
}

fn mount_cap(fs: &str) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

/// Writes until the file system says no; returns bytes written and the final error.
fn fill(dir: &Path) -> (u64, std::io::Error) {
    let mut f = std::fs::File::create(dir.join("fill")).unwrap();
    let chunk = vec![0xA5u8; MIB as usize];
    let mut written = 0u64;
    loop {
        match f.write_all(&chunk).and_then(|()| f.sync_data()) {
            Ok(()) => written += MIB,
            Err(e) => return (written, e),
        }
    }
}

#[tokio::test]
async fn image_volume_enforces_its_capacity() {
    let fx = Fixture::new();
    let id = fx.create(Layout::Image, 64 * MIB, None).await;
    let (staging, target) = (fx.path("staging/v1"), fx.path("pods/p1/mount"));
    fx.stage(&id, &staging, mount_cap("ext4")).await.unwrap();
    fx.publish(&id, &staging, &target, mount_cap("ext4"), false)
        .await
        .unwrap();

    let (written, err) = fill(&target);
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOSPC),
        "expected ENOSPC, got {err}"
    );
    assert!(
        written <= 64 * MIB,
        "wrote {written} bytes into a 64 MiB volume"
    );
    assert!(
        written >= 40 * MIB,
        "only {written} bytes fit into a 64 MiB volume"
    );
    // The node's own file system was not what filled up: the image file is still 64 MiB.
    let image = fx
        .root
        .join("volumes")
        .join(id.key.as_str())
        .join("disk.img");
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 64 * MIB);

    // Stats report the volume's size, not the node's.
    let stats = fx
        .node
        .node_get_volume_stats(Request::new(NodeGetVolumeStatsRequest {
            volume_id: id.to_string(),
            volume_path: target.display().to_string(),
            staging_target_path: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let bytes = &stats.usage[0];
    assert!(
        bytes.total as u64 <= 64 * MIB && bytes.total as u64 > 40 * MIB,
        "{stats:?}"
    );
    assert!(bytes.used as u64 >= written - MIB, "{stats:?}");
    assert!(!stats.volume_condition.unwrap().abnormal);

    fx.unpublish(&id, &target).await;
    assert!(!target.exists(), "unpublish must remove the target");
    fx.unstage(&id, &staging).await;
    fx.store.delete_volume(id.clone()).await.unwrap();
    assert!(!image.exists());
}

#[tokio::test]
async fn stage_and_publish_are_idempotent_and_detect_conflicts() {
    let fx = Fixture::new();
    let a = fx.create(Layout::Image, 32 * MIB, None).await;
    let b = fx.create(Layout::Image, 32 * MIB, None).await;
    let (staging, target) = (fx.path("staging/a"), fx.path("pods/p/mount"));
    for _ in 0..2 {
        fx.stage(&a, &staging, mount_cap("")).await.unwrap();
        fx.publish(&a, &staging, &target, mount_cap(""), false)
            .await
            .unwrap();
    }
    // Same target, read-only this time: incompatible.
    let err = fx
        .publish(&a, &staging, &target, mount_cap(""), true)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    // Another volume on a staging path that is in use: incompatible.
    let err = fx.stage(&b, &staging, mount_cap("")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    // Deleting a staged volume is refused and changes nothing.
    let err = fx.store.delete_volume(a.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    std::fs::write(target.join("still-here"), b"yes").unwrap();
    for _ in 0..2 {
        fx.unpublish(&a, &target).await;
        fx.unstage(&a, &staging).await;
    }
    assert!(LoopDevices
        .find(
            &fx.root
                .join("volumes")
                .join(a.key.as_str())
                .join("disk.img")
        )
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn read_only_publish_refuses_writes() {
    let fx = Fixture::new();
    let id = fx.create(Layout::Image, 32 * MIB, None).await;
    let (staging, target) = (fx.path("staging/ro"), fx.path("pods/ro/mount"));
    fx.stage(&id, &staging, mount_cap("")).await.unwrap();
    fx.publish(&id, &staging, &target, mount_cap(""), true)
        .await
        .unwrap();
    let err = std::fs::write(target.join("x"), b"no").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    fx.unpublish(&id, &target).await;
    fx.unstage(&id, &staging).await;
}

#[tokio::test]
async fn snapshot_restore_and_clone_carry_the_data_and_grow() {
    let fx = Fixture::new();
    let id = fx.create(Layout::Image, 32 * MIB, None).await;
    let (staging, target) = (fx.path("staging/src"), fx.path("pods/src/mount"));
    fx.stage(&id, &staging, mount_cap("ext4")).await.unwrap();
    fx.publish(&id, &staging, &target, mount_cap("ext4"), false)
        .await
        .unwrap();
    std::fs::write(target.join("hello.txt"), b"before snapshot").unwrap();

    // Snapshot while mounted (the file system is frozen for the copy).
    let snap = SnapshotId::new(Layout::Image, NODE, Key::random());
    let info = fx
        .store
        .create_snapshot(snap.clone(), "snap-1".into(), id.clone())
        .await
        .unwrap();
    assert_eq!(info.size_bytes, 32 * MIB);
    // Idempotent.
    fx.store
        .create_snapshot(snap.clone(), "snap-1".into(), id.clone())
        .await
        .unwrap();
    std::fs::write(target.join("hello.txt"), b"after snapshot").unwrap();

    // Restore into a larger volume: the data is the snapshot's, the file system grows.
    let restored = fx
        .create(
            Layout::Image,
            64 * MIB,
            Some(ContentSource::Snapshot(snap.clone())),
        )
        .await;
    let (rs, rt) = (fx.path("staging/restored"), fx.path("pods/restored/mount"));
    fx.stage(&restored, &rs, mount_cap("")).await.unwrap();
    fx.publish(&restored, &rs, &rt, mount_cap(""), false)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(rt.join("hello.txt")).unwrap(),
        b"before snapshot"
    );
    let st = nix::sys::statvfs::statvfs(&rt).unwrap();
    let total = st.blocks() as u64 * st.fragment_size() as u64;
    assert!(
        total > 48 * MIB,
        "restored file system was not grown: {total} bytes"
    );

    // Clone of the live volume.
    let clone = fx
        .create(
            Layout::Image,
            32 * MIB,
            Some(ContentSource::Volume(id.clone())),
        )
        .await;
    let (cs, ct) = (fx.path("staging/clone"), fx.path("pods/clone/mount"));
    fx.stage(&clone, &cs, mount_cap("")).await.unwrap();
    fx.publish(&clone, &cs, &ct, mount_cap(""), false)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(ct.join("hello.txt")).unwrap(),
        b"after snapshot"
    );

    // A smaller restore is refused.
    let too_small = VolumeId::new(Layout::Image, NODE, Key::random());
    let err = fx
        .store
        .create_volume(VolumeSpec {
            id: too_small,
            name: "small".into(),
            capacity_bytes: 16 * MIB,
            allocation: Allocation::Thin,
            source: Some(ContentSource::Snapshot(snap.clone())),
            shared: false,
            fs_type: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);

    for (v, s, t) in [
        (&id, &staging, &target),
        (&restored, &rs, &rt),
        (&clone, &cs, &ct),
    ] {
        fx.unpublish(v, t).await;
        fx.unstage(v, s).await;
    }
    fx.store.delete_snapshot(snap.clone()).await.unwrap();
    fx.store.delete_snapshot(snap).await.unwrap();
}

/// Issue 20: a clone or a restored snapshot of an xfs volume carries its source's file
/// system UUID, and xfs refused to mount it while the source was mounted on the same node
/// ("Filesystem has duplicate UUID"). Both must be usable side by side.
#[tokio::test]
async fn an_xfs_clone_and_restore_mount_beside_their_mounted_source() {
    let fx = Fixture::new();
    let id = fx.create(Layout::Image, 320 * MIB, None).await;
    let (staging, target) = (fx.path("staging/src"), fx.path("pods/src/mount"));
    fx.stage(&id, &staging, mount_cap("xfs")).await.unwrap();
    fx.publish(&id, &staging, &target, mount_cap("xfs"), false)
        .await
        .unwrap();
    std::fs::write(target.join("token"), b"source data").unwrap();
    nix::unistd::sync();

    let clone = fx
        .create(
            Layout::Image,
            320 * MIB,
            Some(ContentSource::Volume(id.clone())),
        )
        .await;
    let snap = SnapshotId::new(Layout::Image, NODE, Key::random());
    fx.store
        .create_snapshot(snap.clone(), "snap-xfs".into(), id.clone())
        .await
        .unwrap();
    let restored = fx
        .create(
            Layout::Image,
            320 * MIB,
            Some(ContentSource::Snapshot(snap.clone())),
        )
        .await;
    let mut mounted = Vec::new();
    for (copy, name) in [(&clone, "clone"), (&restored, "restored")] {
        let (cs, ct) = (
            fx.path(&format!("staging/{name}")),
            fx.path(&format!("pods/{name}/mount")),
        );
        fx.stage(copy, &cs, mount_cap("xfs"))
            .await
            .unwrap_or_else(|e| {
                panic!("the {name} xfs volume does not mount beside its source: {e}")
            });
        fx.publish(copy, &cs, &ct, mount_cap("xfs"), false)
            .await
            .unwrap();
        assert_eq!(std::fs::read(ct.join("token")).unwrap(), b"source data");
        // Writes stay in the copy.
        std::fs::write(ct.join("token"), name.as_bytes()).unwrap();
        mounted.push((copy.clone(), cs, ct));
    }
    assert_eq!(std::fs::read(target.join("token")).unwrap(), b"source data");
    for (copy, cs, ct) in mounted {
        fx.unpublish(&copy, &ct).await;
        fx.unstage(&copy, &cs).await;
    }
    fx.unpublish(&id, &target).await;
    fx.unstage(&id, &staging).await;
    fx.store.delete_snapshot(snap).await.unwrap();
}

#[tokio::test]
async fn online_expansion_of_xfs() {
    let fx = Fixture::new();
    let id = fx.create(Layout::Image, 320 * MIB, None).await;
    let (staging, target) = (fx.path("staging/x"), fx.path("pods/x/mount"));
    fx.stage(&id, &staging, mount_cap("xfs")).await.unwrap();
    fx.publish(&id, &staging, &target, mount_cap("xfs"), false)
        .await
        .unwrap();
    let before = nix::sys::statvfs::statvfs(&target).unwrap().blocks();

    assert_eq!(
        fx.store.expand_volume(id.clone(), 512 * MIB).await.unwrap(),
        512 * MIB
    );
    let resp = fx
        .node
        .node_expand_volume(Request::new(NodeExpandVolumeRequest {
            volume_id: id.to_string(),
            volume_path: target.display().to_string(),
            capacity_range: Some(CapacityRange {
                required_bytes: 512 * MIB as i64,
                limit_bytes: 0,
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.capacity_bytes as u64, 512 * MIB);
    let after = nix::sys::statvfs::statvfs(&target).unwrap().blocks();
    assert!(
        after > before + before / 3,
        "file system did not grow: {before} -> {after} blocks"
    );
    fx.unpublish(&id, &target).await;
    fx.unstage(&id, &staging).await;
}

#[tokio::test]
async fn raw_block_volume_is_published_as_a_device() {
    let fx = Fixture::new();
    let id = fx.create(Layout::Image, 32 * MIB, None).await;
    let (staging, target) = (fx.path("staging/blk"), fx.path("pods/blk/dev"));
    fx.stage(&id, &staging, block_cap()).await.unwrap();
    fx.publish(&id, &staging, &target, block_cap(), false)
        .await
        .unwrap();
    fx.publish(&id, &staging, &target, block_cap(), false)
        .await
        .unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&target)
        .unwrap()
        .file_type()
        .is_block_device());
    assert_eq!(
        warren_node::loopdev::block_device_size(&target).unwrap(),
        32 * MIB
    );
    // Data written through the device lands in the image.
    {
        use std::os::unix::fs::FileExt;
        let dev = std::fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .unwrap();
        dev.write_all_at(b"WARRENBLOCK", 4096).unwrap();
        dev.sync_all().unwrap();
    }
    let image = fx
        .root
        .join("volumes")
        .join(id.key.as_str())
        .join("disk.img");
    let bytes = std::fs::read(&image).unwrap();
    assert_eq!(&bytes[4096..4107], b"WARRENBLOCK");
    fx.unpublish(&id, &target).await;
    fx.unstage(&id, &staging).await;
}

#[tokio::test]
async fn dir_layout_publishes_a_directory_and_refuses_block() {
    let fx = Fixture::new();
    let id = fx.create(Layout::Dir, MIB, None).await;
    let (staging, target) = (fx.path("staging/d"), fx.path("pods/d/mount"));
    fx.stage(&id, &staging, mount_cap("")).await.unwrap();
    fx.stage(&id, &staging, mount_cap("")).await.unwrap();
    fx.publish(&id, &staging, &target, mount_cap(""), false)
        .await
        .unwrap();
    std::fs::write(target.join("f"), b"dir data").unwrap();
    let data = fx.root.join("volumes").join(id.key.as_str()).join("data/f");
    assert_eq!(std::fs::read(data).unwrap(), b"dir data");
    let err = fx
        .stage(&id, &fx.path("staging/d2"), block_cap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A snapshot of a directory volume and a restore.
    let snap = SnapshotId::new(Layout::Dir, NODE, Key::random());
    fx.store
        .create_snapshot(snap.clone(), "s".into(), id.clone())
        .await
        .unwrap();
    let restored = fx
        .create(Layout::Dir, MIB, Some(ContentSource::Snapshot(snap)))
        .await;
    let restored_file = fx
        .root
        .join("volumes")
        .join(restored.key.as_str())
        .join("data/f");
    assert_eq!(std::fs::read(restored_file).unwrap(), b"dir data");
    fx.unpublish(&id, &target).await;
    fx.unstage(&id, &staging).await;
}

#[tokio::test]
async fn paths_outside_the_kubelet_dir_are_refused_without_side_effects() {
    let fx = Fixture::new();
    let id = fx.create(Layout::Image, 32 * MIB, None).await;
    let outside = fx._dir.path().join("outside/stage");
    let err = fx.stage(&id, &outside, mount_cap("")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        !outside.exists(),
        "a refused request created {}",
        outside.display()
    );
    let traversal = PathBuf::from(format!("{}/pods/../../outside/x", fx.kubelet.display()));
    let err = fx.stage(&id, &traversal, mount_cap("")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Nothing was attached for the refused requests.
    let image = fx
        .root
        .join("volumes")
        .join(id.key.as_str())
        .join("disk.img");
    assert!(LoopDevices.find(&image).unwrap().is_none());
    // Malformed and foreign ids.
    for bad in [
        "local#image#test-node#../../../etc",
        "nope",
        "local#image#other-node#0123456789abcdef0123456789abcdef",
    ] {
        let err = fx
            .node
            .node_stage_volume(Request::new(NodeStageVolumeRequest {
                volume_id: bad.into(),
                staging_target_path: fx.path("staging/bad").display().to_string(),
                volume_capability: Some(mount_cap("")),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{bad}");
    }
    // Multi-node modes are refused.
    let mut cap = mount_cap("");
    cap.access_mode = Some(AccessMode {
        mode: Mode::MultiNodeMultiWriter as i32,
    });
    assert_eq!(
        fx.stage(&id, &fx.path("staging/mm"), cap)
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn startup_removes_half_built_objects_and_keeps_whole_ones() {
    let fx = Fixture::new();
    let kept = fx.create(Layout::Dir, MIB, None).await;
    // What a kill -9 in the middle of CreateVolume / DeleteVolume leaves behind.
    std::fs::create_dir_all(
        fx.root
            .join(".creating/0123456789abcdef0123456789abcdef/data"),
    )
    .unwrap();
    std::fs::create_dir_all(
        fx.root
            .join(".trash/fedcba9876543210fedcba9876543210-1/data"),
    )
    .unwrap();
    let reopened = LocalStore::open(NODE, &fx.root, Arc::new(LoopDevices)).unwrap();
    assert_eq!(
        std::fs::read_dir(fx.root.join(".creating"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(fx.root.join(".trash")).unwrap().count(),
        0
    );
    let listed = reopened.list_volumes().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, kept);
    // Creating the same id again is idempotent; another size is ALREADY_EXISTS.
    let err = reopened
        .create_volume(VolumeSpec {
            id: kept.clone(),
            name: format!("pvc-{}", kept.key),
            capacity_bytes: 2 * MIB,
            allocation: Allocation::Thick,
            source: None,
            shared: false,
            fs_type: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn missing_backing_store_is_an_abnormal_condition() {
    let fx = Fixture::new();
    let id = fx.create(Layout::Image, 32 * MIB, None).await;
    let image = fx
        .root
        .join("volumes")
        .join(id.key.as_str())
        .join("disk.img");
    std::fs::remove_file(&image).unwrap();
    let info = fx.store.get_volume(id).await.unwrap();
    assert!(info.condition.abnormal);
    assert!(
        info.condition.message.contains("missing"),
        "{}",
        info.condition.message
    );
}

#[tokio::test]
async fn delete_refuses_a_volume_with_a_file_system_mounted_inside() {
    let fx = Fixture::new();
    let id = fx.create(Layout::Dir, MIB, None).await;
    let data = fx.root.join("volumes").join(id.key.as_str()).join("data");
    let inside = std::fs::canonicalize(&data).unwrap().join("inside");
    std::fs::create_dir(&inside).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &inside,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    std::fs::write(inside.join("theirs"), b"t").unwrap();

    let err = fx.store.delete_volume(id.clone()).await.unwrap_err();
    let survived = std::fs::read(inside.join("theirs"));
    let _ = nix::mount::umount2(&inside, nix::mount::MntFlags::MNT_DETACH);
    assert_eq!(survived.unwrap(), b"t");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("mounted inside it at {}", inside.display())),
        "{err}"
    );
    // Refused before anything moved: the volume is whole, and deletes once unmounted.
    fx.store.get_volume(id.clone()).await.unwrap();
    assert!(inside.is_dir());
    fx.store.delete_volume(id.clone()).await.unwrap();
    assert_eq!(
        fx.store.get_volume(id).await.unwrap_err().code(),
        Code::NotFound
    );
}
