//! A real NFS server for the tests: NFS-Ganesha (Debian's nfs-ganesha + nfs-ganesha-vfs)
//! exporting a temporary directory, run as root in its own network namespace (it listens
//! on every address it has; the namespace keeps it off the host's).
#![allow(dead_code)] // each test binary uses part of it

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warren_nfs::dirops::{Export, ExportOptions};

pub const NFS_PORT: u16 = 20490;
pub const MOUNT_PORT: u16 = 20048;

/// Says why a test cannot run here; panics instead when WARREN_REQUIRE_GANESHA=1.
pub fn missing(what: &str) -> bool {
    warren_test_support::skip("WARREN_REQUIRE_GANESHA", what);
    true
}

pub fn found(program: &str) -> bool {
    ["/usr/bin", "/usr/sbin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(program).exists())
}

/// Where NFSv4 clients find the export.
pub enum Pseudo {
    /// `/export`.
    Export,
    /// The export's real path, as v3 clients see it too: one `share` parameter serves
    /// both versions.
    SameAsPath,
}

/// A network namespace with Ganesha (and rpcbind, which it registers with) in it.
pub struct Server {
    pub netns: String,
    pub nfs_port: u16,
    _turn: nix::fcntl::Flock<std::fs::File>,
    ganesha: Child,
    rpcbind: Child,
    pub export: tempfile::TempDir,
    _work: tempfile::TempDir,
}

impl Server {
    /// Ganesha with its export at the pseudo path /export for NFSv4 (the real path for
    /// v3's MOUNT).
    pub fn start() -> Server {
        Self::start_with(Pseudo::Export, NFS_PORT)
    }

    /// `nfs_port`: 2049 lets a kernel client mount NFSv4 without a `port=` option.
    pub fn start_with(pseudo: Pseudo, nfs_port: u16) -> Server {
        // One server at a time on this machine: rpcbind's lock file and Unix socket
        // (/run/rpcbind.*) are not in the network namespace, so two would share them and
        // Ganesha would register with the wrong one. Tests (threads of one binary, or two
        // test processes) queue on an flock, which is per open file: threads queue too.
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/warren-ganesha-test.lock")
            .expect("open the test server lock");
        let turn = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("flock the test server lock");
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
                "NFS_CORE_PARAM {{ NFS_Port = {nfs_port}; MNT_Port = {MOUNT_PORT}; \
                 Protocols = 3, 4; Enable_NLM = false; Enable_RQUOTA = false; }}\n\
                 NFSv4 {{ Graceless = true; RecoveryRoot = {recovery}; Only_Numeric_Owners = true; }}\n\
                 EXPORT_DEFAULTS {{ Access_Type = RW; Squash = No_Root_Squash; SecType = sys; }}\n\
                 EXPORT {{ Export_Id = 1; Path = {export}; Pseudo = {pseudo}; Protocols = 3, 4; \
                 Transports = TCP; FSAL {{ Name = VFS; }} }}\n",
                recovery = work.path().join("recovery").display(),
                export = export.path().display(),
                pseudo = match pseudo {
                    Pseudo::Export => "/export".to_string(),
                    Pseudo::SameAsPath => export.path().display().to_string(),
                },
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
        // Ganesha registers its services with rpcbind once, at startup: rpcbind must be
        // listening first, or the portmapper never learns the ports.
        let ns_path = format!("/run/netns/{netns}");
        let rpcbind_up = std::thread::spawn(move || {
            let fd = std::fs::File::open(&ns_path).unwrap();
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) {
                if std::net::TcpStream::connect(("127.0.0.1", 111)).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        })
        .join()
        .unwrap();
        assert!(rpcbind_up, "rpcbind did not listen within 20 s");
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
            _turn: turn,
            nfs_port,
            netns,
            ganesha,
            rpcbind,
            export,
            _work: work,
        }
    }

    /// Ganesha's process (`ip netns exec` execs it, so the child is Ganesha itself).
    pub fn ganesha_pid(&self) -> u32 {
        self.ganesha.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._work.path().join("ganesha.log")).unwrap_or_default()
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.export.path().join(relative)
    }

    /// Runs `work` on a thread inside the server's network namespace.
    pub fn client<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
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

pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Whether this machine can run Ganesha for a test (root, ganesha.nfsd, rpcbind); says why
/// not otherwise.
pub fn can_run() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        return !missing("needs root (network namespace, Ganesha)");
    }
    if !found("ganesha.nfsd") || !found("rpcbind") {
        return !missing(
            "ganesha.nfsd or rpcbind not installed (apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind)",
        );
    }
    true
}

/// Client options for the test server's fixed ports.
pub fn options() -> ExportOptions {
    ExportOptions {
        deadline: Duration::from_secs(20),
        privileged_port: true,
        mount_port: Some(MOUNT_PORT),
        nfs_port: Some(NFS_PORT),
        ..Default::default()
    }
}

impl Server {
    /// Waits until the MOUNT service answers (Ganesha takes a moment to start exports),
    /// at its fixed port and through the portmapper (it registers with rpcbind a moment
    /// after it listens).
    pub fn wait_ready(&self) {
        let share = self.export.path().display().to_string();
        let nfs_port = self.nfs_port;
        let ready = self.client(move || {
            let fixed_options = ExportOptions {
                nfs_port: Some(nfs_port),
                ..options()
            };
            let fixed = Export::new("127.0.0.1", &share, fixed_options);
            let mapped_options = ExportOptions {
                mount_port: None,
                nfs_port: None,
                ..options()
            };
            let mapped = Export::new("127.0.0.1", &share, mapped_options);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30) {
                if block_on(fixed.exists("probe")).is_ok()
                    && block_on(mapped.exists("probe")).is_ok()
                {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            false
        });
        assert!(
            ready,
            "Ganesha did not serve the export within 30 s; its log:\n{}",
            self.log()
        );
    }
}
