//! The controller's directory work against a real NFS server (see `common`: NFS-Ganesha
//! in a network namespace). The client side runs on a thread that joined that namespace;
//! what the server did is checked on the exported directory itself.
//!
//! Needs root, ganesha.nfsd and rpcbind; skipped with the reason otherwise, unless
//! WARREN_REQUIRE_GANESHA=1 (CI), which turns a missing piece into a failure.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{block_on, options, Server};
use warren_nfs::dirops::Export;

#[test]
fn directories_on_a_real_nfs_server() {
    if !common::can_run() {
        return;
    }
    let server = Server::start();
    let share = server.export.path().display().to_string();
    let options = options();
    server.wait_ready();

    // make_dir: nested, with a mode, idempotent.
    let (s, o) = (share.clone(), options.clone());
    server.client(move || {
        let export = Export::new("127.0.0.1", &s, o);
        block_on(export.make_dir("shop/pvc-1", Some(0o777))).unwrap();
        block_on(export.make_dir("shop/pvc-1", Some(0o777))).unwrap();
        assert!(block_on(export.exists("shop/pvc-1")).unwrap());
        assert!(!block_on(export.exists("shop/nope")).unwrap());
        assert!(!block_on(export.exists("nope/deeper")).unwrap());
    });
    let made = server.path("shop/pvc-1");
    assert!(made.is_dir(), "the server made no {}", made.display());
    assert_eq!(
        std::fs::metadata(&made).unwrap().permissions().mode() & 0o7777,
        0o777
    );

    // archive_dir: renamed with its content, idempotent.
    std::fs::write(made.join("data"), b"kept").unwrap();
    let (s, o) = (share.clone(), options.clone());
    let archived = server.client(move || {
        let export = Export::new("127.0.0.1", &s, o);
        let first = block_on(export.archive_dir("shop/pvc-1")).unwrap();
        let again = block_on(export.archive_dir("shop/pvc-1")).unwrap();
        assert_eq!(first, again);
        first
    });
    assert_eq!(archived, "shop/archived-pvc-1");
    assert!(!made.exists());
    assert_eq!(
        std::fs::read(server.path("shop/archived-pvc-1/data")).unwrap(),
        b"kept"
    );

    // remove_dir: a whole tree, idempotent; a missing parent is fine too.
    let tree = server.path("pvc-2");
    std::fs::create_dir_all(tree.join("a/b/c")).unwrap();
    for f in ["top", "a/one", "a/b/two", "a/b/c/three"] {
        std::fs::write(tree.join(f), f).unwrap();
    }
    let (s, o) = (share.clone(), options.clone());
    server.client(move || {
        let export = Export::new("127.0.0.1", &s, o);
        block_on(export.remove_dir("pvc-2")).unwrap();
        block_on(export.remove_dir("pvc-2")).unwrap();
        block_on(export.remove_dir("missing/pvc-3")).unwrap();
    });
    assert!(!tree.exists(), "pvc-2 still on the server");

    // copy_dir: a tree (files bigger than one READ, nested directories, a symbolic
    // link, modes and mtimes) copied whole, published by one rename, idempotent.
    let source = server.path("pvc-5");
    std::fs::create_dir_all(source.join("deep/er")).unwrap();
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 17)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(source.join("big"), &big).unwrap();
    std::fs::write(source.join("deep/er/small"), b"small").unwrap();
    std::fs::write(source.join("empty"), b"").unwrap();
    std::fs::set_permissions(
        source.join("deep/er/small"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::symlink("deep/er/small", source.join("link")).unwrap();
    // A leftover of an interrupted copy is replaced, not merged.
    std::fs::create_dir_all(server.path("snaps/.snap-1.partial/stale")).unwrap();
    let (s, o) = (share.clone(), options.clone());
    server.client(move || {
        let export = Export::new("127.0.0.1", &s, o);
        block_on(export.copy_dir("pvc-5", "snaps/snap-1")).unwrap();
        block_on(export.copy_dir("pvc-5", "snaps/snap-1")).unwrap();
    });
    let copy = server.path("snaps/snap-1");
    assert_eq!(std::fs::read(copy.join("big")).unwrap(), big);
    assert_eq!(std::fs::read(copy.join("deep/er/small")).unwrap(), b"small");
    assert_eq!(std::fs::read(copy.join("empty")).unwrap(), b"");
    assert_eq!(
        std::fs::read_link(copy.join("link")).unwrap(),
        std::path::PathBuf::from("deep/er/small")
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&copy.join("deep/er/small")), 0o640);
    assert_eq!(
        std::fs::metadata(copy.join("big"))
            .unwrap()
            .modified()
            .unwrap(),
        std::fs::metadata(source.join("big"))
            .unwrap()
            .modified()
            .unwrap()
    );
    assert!(!server.path("snaps/.snap-1.partial").exists());
    assert!(!copy.join("stale").exists());

    // A FIFO cannot be copied over NFS: refused, and nothing published. (In a directory
    // the server has not seen yet: Ganesha caches directories, so what is made beside it
    // in one it has listed shows up only later.)
    let source = server.path("pvc-6");
    std::fs::create_dir_all(&source).unwrap();
    nix::unistd::mkfifo(
        &source.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let (s, o) = (share.clone(), options.clone());
    let err = server.client(move || {
        let export = Export::new("127.0.0.1", &s, o);
        block_on(export.copy_dir("pvc-6", "snaps/snap-2")).unwrap_err()
    });
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(!server.path("snaps/snap-2").exists());

    // A file where a directory should be: refused, nothing changed.
    std::fs::write(server.path("afile"), b"x").unwrap();
    let (s, o) = (share.clone(), options.clone());
    let err = server.client(move || {
        let export = Export::new("127.0.0.1", &s, o);
        block_on(export.make_dir("afile", None)).unwrap_err()
    });
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert_eq!(std::fs::read(server.path("afile")).unwrap(), b"x");

    // An export the server does not have: unreachable, with the server named.
    let o = options.clone();
    let err = server.client(move || {
        let export = Export::new("127.0.0.1", "/not/exported", o);
        block_on(export.make_dir("pvc-4", None)).unwrap_err()
    });
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
}
