//! The controller's directory work against a real NFS server: NFS-Ganesha (Debian's
//! nfs-ganesha + nfs-ganesha-vfs) exporting a temporary directory, run as root in its own
//! network namespace (it listens on every address it has; the namespace keeps it off the
//! host's). The client side runs on a thread that joined that namespace. What the server
//! did is checked on the exported directory itself.
//!
//! Needs root, ganesha.nfsd and rpcbind; skipped with the reason otherwise, unless
//! WARREN_REQUIRE_GANESHA=1 (CI), which turns a missing piece into a failure.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warren_nfs::dirops::{Export, ExportOptions};

const NFS_PORT: u16 = 20490;
const MOUNT_PORT: u16 = 20048;

fn missing(what: &str) -> bool {
    if std::env::var("WARREN_REQUIRE_GANESHA").as_deref() == Ok("1") {
        panic!("WARREN_REQUIRE_GANESHA=1 but {what}");
    }
    eprintln!("SKIPPED: {what}");
    true
}

fn found(program: &str) -> bool {
    ["/usr/bin", "/usr/sbin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(program).exists())
}

/// A network namespace with Ganesha (and rpcbind, which it registers with) in it.
struct Server {
    netns: String,
    ganesha: Child,
    rpcbind: Child,
    export: tempfile::TempDir,
    _work: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let netns = format!("wrn-nfs-{}", std::process::id());
        let ip = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().map(|s| s.success());
            assert!(matches!(ok, Ok(true)), "ip {args:?} failed");
        };
        ip(&["netns", "add", &netns]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        // Ganesha finds no address for 127.0.0.1 (getaddrinfo with AI_ADDRCONFIG) when
        // loopback is the only address there is.
        ip(&["-n", &netns, "addr", "add", "127.0.0.2/8", "dev", "lo"]);
        // Not /tmp: Ganesha's VFS layer needs file handles (name_to_handle_at) of a real
        // file system.
        let export = tempfile::tempdir_in("/var/tmp").unwrap();
        let work = tempfile::tempdir_in("/var/tmp").unwrap();
        let config = work.path().join("ganesha.conf");
        std::fs::write(
            &config,
            format!(
                "NFS_CORE_PARAM {{ NFS_Port = {NFS_PORT}; MNT_Port = {MOUNT_PORT}; \
                 Protocols = 3, 4; Enable_NLM = false; Enable_RQUOTA = false; }}\n\
                 NFSv4 {{ Graceless = true; RecoveryRoot = {recovery}; Only_Numeric_Owners = true; }}\n\
                 EXPORT_DEFAULTS {{ Access_Type = RW; Squash = No_Root_Squash; SecType = sys; }}\n\
                 EXPORT {{ Export_Id = 1; Path = {export}; Pseudo = /export; Protocols = 3, 4; \
                 Transports = TCP; FSAL {{ Name = VFS; }} }}\n",
                recovery = work.path().join("recovery").display(),
                export = export.path().display(),
            ),
        )
        .unwrap();
        let in_netns = |program: &str| {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &netns, program]);
            c
        };
        let rpcbind = in_netns("rpcbind")
            .args(["-f", "-w"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rpcbind");
        let ganesha = in_netns("ganesha.nfsd")
            .arg("-F")
            .arg("-f")
            .arg(&config)
            .arg("-L")
            .arg(work.path().join("ganesha.log"))
            .arg("-p")
            .arg(work.path().join("ganesha.pid"))
            .args(["-N", "NIV_EVENT"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ganesha.nfsd");
        Server {
            netns,
            ganesha,
            rpcbind,
            export,
            _work: work,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._work.path().join("ganesha.log")).unwrap_or_default()
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.export.path().join(relative)
    }

    /// Runs `work` on a thread inside the server's network namespace.
    fn client<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let netns = format!("/run/netns/{}", self.netns);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&netns).unwrap();
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            work()
        })
        .join()
        .expect("client thread")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.ganesha.kill();
        let _ = self.ganesha.wait();
        let _ = self.rpcbind.kill();
        let _ = self.rpcbind.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn directories_on_a_real_nfs_server() {
    if !nix::unistd::Uid::effective().is_root() {
        missing("needs root (network namespace, Ganesha)");
        return;
    }
    if !found("ganesha.nfsd") || !found("rpcbind") {
        missing("ganesha.nfsd or rpcbind not installed (apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind)");
        return;
    }
    let server = Server::start();
    let share = server.export.path().display().to_string();
    let options = ExportOptions {
        deadline: Duration::from_secs(20),
        privileged_port: true,
        mount_port: Some(MOUNT_PORT),
        nfs_port: Some(NFS_PORT),
        ..Default::default()
    };

    // Up once the MOUNT service answers (Ganesha takes a moment to start its exports).
    let ready = {
        let share = share.clone();
        let options = options.clone();
        server.client(move || {
            let export = Export::new("127.0.0.1", &share, options);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30) {
                if block_on(export.exists("probe")).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            false
        })
    };
    assert!(
        ready,
        "Ganesha did not serve the export within 30 s; its log:\n{}",
        server.log()
    );

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
