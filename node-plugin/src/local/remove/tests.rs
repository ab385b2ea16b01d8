use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use tonic::Code;

use super::*;

/// A mount made for a test, undone when dropped (even when an assertion failed).
struct Mounted(PathBuf);

impl Mounted {
    fn tmpfs(at: &Path) -> Mounted {
        mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
        Mounted(at.to_path_buf())
    }

    fn bind(from: &Path, at: &Path) -> Mounted {
        mount(Some(from), at, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
        Mounted(at.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
    }
}

/// A temporary directory by its resolved path, as mountinfo and refusals name paths.
struct Temp {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

fn tempdir() -> Temp {
    let dir = tempfile::tempdir().unwrap();
    Temp {
        path: fs::canonicalize(dir.path()).unwrap(),
        _dir: dir,
    }
}

fn refusal(err: Error, mount_point: &Path) {
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("mounted inside it at {}", mount_point.display())),
        "{msg}"
    );
}

#[test]
fn removes_a_tree_and_only_the_symlinks_pointing_out_of_it() {
    let dir = tempdir();
    let outside = dir.path.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("keep"), b"x").unwrap();
    let obj = dir.path.join("obj");
    fs::create_dir_all(obj.join("data/a/b/c")).unwrap();
    fs::write(obj.join("data/a/b/c/file"), b"1").unwrap();
    fs::write(obj.join("meta.json"), b"{}").unwrap();
    symlink(&outside, obj.join("data/a/to-dir")).unwrap();
    symlink(outside.join("keep"), obj.join("data/to-file")).unwrap();
    symlink("/nonexistent", obj.join("data/dangling")).unwrap();
    nix::unistd::mkfifo(&obj.join("data/fifo"), Mode::from_bits_truncate(0o600)).unwrap();

    remove_object_dir(&obj).unwrap();
    assert!(!obj.exists());
    assert_eq!(fs::read(outside.join("keep")).unwrap(), b"x");
    // Gone already, or its parent gone: nothing to do.
    remove_object_dir(&obj).unwrap();
    remove_object_dir(&dir.path.join("no/such/obj")).unwrap();
}

#[test]
fn a_symlink_as_the_object_is_removed_not_followed() {
    let dir = tempdir();
    let target = dir.path.join("target");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("keep"), b"x").unwrap();
    let obj = dir.path.join("obj");
    symlink(&target, &obj).unwrap();
    remove_object_dir(&obj).unwrap();
    assert!(fs::symlink_metadata(&obj).is_err());
    assert_eq!(fs::read(target.join("keep")).unwrap(), b"x");
}

#[test]
fn a_file_system_mounted_inside_is_refused_and_nothing_is_removed() {
    let dir = tempdir();
    let obj = dir.path.join("obj");
    let mnt = obj.join("data/deep/mnt");
    fs::create_dir_all(&mnt).unwrap();
    fs::write(obj.join("data/beside"), b"b").unwrap();
    let _tmpfs = Mounted::tmpfs(&mnt);
    fs::write(mnt.join("theirs"), b"t").unwrap();

    refusal(check_nothing_mounted_inside(&obj).unwrap_err(), &mnt);
    let err = remove_object_dir(&obj).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("at {} (tmpfs tmpfs)", mnt.display())),
        "{msg}"
    );
    refusal(err, &mnt);
    // The mounted content survives, and, refused before the walk, so does the rest.
    assert_eq!(fs::read(mnt.join("theirs")).unwrap(), b"t");
    assert_eq!(fs::read(obj.join("data/beside")).unwrap(), b"b");
}

#[test]
fn the_object_itself_being_a_mount_point_is_refused() {
    let dir = tempdir();
    let obj = dir.path.join("obj");
    fs::create_dir(&obj).unwrap();
    let _tmpfs = Mounted::tmpfs(&obj);
    fs::write(obj.join("theirs"), b"t").unwrap();
    refusal(remove_object_dir(&obj).unwrap_err(), &obj);
    assert_eq!(fs::read(obj.join("theirs")).unwrap(), b"t");
}

/// The walk itself, without the mountinfo check in front of it (a mount made after
/// that check): the kernel stops it at the mount point, even at a bind mount of a
/// directory on the same file system, where `st_dev` alone would not tell.
#[test]
fn the_walk_never_enters_a_mount_even_a_bind_mount_of_the_same_file_system() {
    let dir = tempdir();
    let elsewhere = dir.path.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::write(elsewhere.join("theirs"), b"t").unwrap();
    let obj = dir.path.join("obj");
    let bound = obj.join("data/bound");
    fs::create_dir_all(&bound).unwrap();
    let _bind = Mounted::bind(&elsewhere, &bound);
    assert_eq!(
        fs::metadata(&bound).unwrap().dev(),
        fs::metadata(&obj).unwrap().dev(),
        "a bind mount of the same file system"
    );

    refusal(remove_tree(&obj).unwrap_err(), &bound);
    assert_eq!(fs::read(elsewhere.join("theirs")).unwrap(), b"t");
    assert_eq!(fs::read(bound.join("theirs")).unwrap(), b"t");

    let tmpfs_at = obj.join("tmp");
    fs::create_dir_all(&tmpfs_at).unwrap();
    let _tmpfs = Mounted::tmpfs(&tmpfs_at);
    fs::write(tmpfs_at.join("theirs"), b"t").unwrap();
    drop(_bind);
    refusal(remove_tree(&obj).unwrap_err(), &tmpfs_at);
    assert_eq!(fs::read(tmpfs_at.join("theirs")).unwrap(), b"t");
}

#[test]
fn mount_inside_compares_whole_components() {
    let text = "\
22 1 0:21 / / rw - ext4 /dev/sda1 rw
30 22 0:40 / /s/volumes/k/data/sub rw - tmpfs tmpfs rw
31 22 0:41 / /s/volumes/kk rw - tmpfs tmpfs rw
";
    let mounts = mountinfo::parse(text);
    let found = |dir: &str| mount_inside(&mounts, Path::new(dir)).map(|m| m.mount_id);
    assert_eq!(found("/s/volumes/k"), Some(30));
    assert_eq!(found("/s/volumes/k/data/sub"), Some(30));
    assert_eq!(found("/s/volumes/kk"), Some(31));
    assert_eq!(found("/s/volumes/k/meta"), None);
    assert_eq!(found("/s/volumes/kkk"), None);
}
