//! The csi-sanity harness: starts the real `warren` binary (`all`, or `controller` +
//! `node`), runs the official csi-sanity v5.5.0 against it, and always cleans up the
//! processes, mounts and loop devices it made.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use warren_test_support::skip;

/// csi-sanity's `--ginkgo.skip` patterns. Empty: csi-sanity already skips, by itself, every
/// spec for a capability Warren does not advertise (see sanity-tests/README.md), and
/// nothing else is skipped.
pub const GINKGO_SKIP: &[&str] = &[];

pub const CSI_SANITY_VERSION: &str = "v5.5.0";

/// How the driver runs for a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processes {
    /// `warren all`: one process, one socket.
    All,
    /// `warren controller` + `warren node` joined by the node agent.
    Split,
    /// `warren controller` + this many `warren node`s, each hosting a replica service
    /// (replicated volumes); csi-sanity's node calls go to the first node.
    SplitReplicated(usize),
}

/// The target directory the test binary runs from (`target/debug/deps/..`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub fn warren_binary() -> PathBuf {
    let bin = target_dir().join("warren");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p warren`, which scripts/test does)",
        bin.display()
    );
    bin
}

/// Finds csi-sanity on PATH or in the Go bin directory.
pub fn csi_sanity() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(out) = Command::new("go").args(["env", "GOPATH"]).output() {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join("go/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("csi-sanity"))
        .find(|p| p.is_file())
}

struct Cleanup {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in &mut self.children {
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Mounts left under this cell's directory, deepest first.
        if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut points: Vec<&str> = text
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|p| Path::new(p).starts_with(&self.dir))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        // Loop devices whose image lives here.
        if let Ok(entries) = std::fs::read_dir("/sys/block") {
            for e in entries.flatten() {
                let backing =
                    std::fs::read_to_string(e.path().join("loop/backing_file")).unwrap_or_default();
                if Path::new(backing.trim()).starts_with(&self.dir) {
                    let _ = Command::new("losetup")
                        .arg("-d")
                        .arg(Path::new("/dev").join(e.file_name()))
                        .status();
                }
            }
        }
    }
}

fn wait_for_socket(path: &Path, child: &mut Child, log: &Path) {
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "warren exited ({status}) before serving:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "warren did not serve {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(args: &[String], log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(warren_binary())
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start warren")
}

/// Runs one csi-sanity cell; panics with csi-sanity's summary on failure, or when fewer
/// than `min_specs` specs ran (a run that executes nothing must not pass: a flag that
/// skips too much, or a capability lost by mistake, shows up here).
pub fn run_cell(
    name: &str,
    processes: Processes,
    parameters: &str,
    access: &str,
    min_specs: usize,
) {
    let Some(sanity) = csi_sanity() else {
        return skip(
            "WARREN_REQUIRE_SANITY",
            &format!("csi-sanity is not installed (go install github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@{CSI_SANITY_VERSION})"),
        );
    };
    // A real disk directory, not tmpfs: thick images use fallocate.
    let base = target_dir().join("sanity");
    std::fs::create_dir_all(&base).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(&base)
        .unwrap();
    let dir = tmp.path().to_path_buf();
    let kubelet = dir.join("kubelet");
    std::fs::create_dir_all(kubelet.join("pods")).unwrap();
    std::fs::create_dir_all(kubelet.join("plugins")).unwrap();
    let params = dir.join("params.yaml");
    std::fs::write(&params, parameters).unwrap();
    let mut cleanup = Cleanup {
        dir: dir.clone(),
        children: Vec::new(),
    };

    let (node_sock, ctl_sock) = match processes {
        Processes::All => {
            let sock = dir.join("csi.sock");
            let mut args = vec![
                "all".to_string(),
                format!("--state-dir={}", dir.join("state").display()),
            ];
            args.extend(node_flags(&dir, &kubelet, &sock, "sanity-node", "storage"));
            let log = dir.join("warren.log");
            let mut child = spawn(&args, &log);
            wait_for_socket(&sock, &mut child, &log);
            cleanup.children.push(child);
            (sock.clone(), sock)
        }
        Processes::Split => split(&dir, &kubelet, &mut cleanup, 1),
        Processes::SplitReplicated(nodes) => split(&dir, &kubelet, &mut cleanup, nodes),
    };

    // mkfs.xfs refuses file systems under 300 MiB.
    let size: u64 = if parameters.contains("fsType: xfs") {
        320 << 20
    } else {
        64 << 20
    };
    let mut cmd = Command::new(&sanity);
    cmd.arg(format!("--csi.endpoint={}", node_sock.display()))
        .arg(format!("--csi.controllerendpoint={}", ctl_sock.display()))
        .arg(format!(
            "--csi.mountdir={}",
            kubelet.join("pods/target").display()
        ))
        .arg(format!(
            "--csi.stagingdir={}",
            kubelet.join("plugins/staging").display()
        ))
        .arg(format!("--csi.testvolumeparameters={}", params.display()))
        .arg(format!("--csi.testvolumeaccesstype={access}"))
        .arg(format!("--csi.testvolumesize={size}"))
        .arg(format!("--csi.testvolumeexpandsize={}", size * 2))
        .arg("--ginkgo.no-color")
        .arg("--ginkgo.v")
        .arg("--ginkgo.timeout=10m");
    if !GINKGO_SKIP.is_empty() {
        cmd.arg(format!("--ginkgo.skip={}", GINKGO_SKIP.join("|")));
    }
    let out = cmd.output().expect("run csi-sanity");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = base.join(format!("{name}.out"));
    std::fs::write(&report, &text).unwrap();
    let summary: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("Ran ") || l.contains("Passed |") || l.trim_start().starts_with("[FAIL]")
        })
        .collect();
    println!("csi-sanity {name}: {}", summary.join("\n  "));
    if !out.status.success() {
        let logs: String = [
            "warren.log",
            "node.log",
            "node-2.log",
            "node-3.log",
            "controller.log",
        ]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .map(|l| {
            l.lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
        let tail: String = text
            .lines()
            .rev()
            .take(80)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        panic!("csi-sanity failed for {name} (full output: {}):\n{tail}\n--- warren log tail ---\n{logs}", report.display());
    }
    let ran = specs_ran(&text);
    assert!(
        ran.is_some_and(|n| n >= min_specs),
        "csi-sanity {name} ran {ran:?} specs, expected at least {min_specs} (full output: {})",
        report.display()
    );
    drop(cleanup);
    drop(tmp);
}

fn node_flags(dir: &Path, kubelet: &Path, sock: &Path, node: &str, storage: &str) -> Vec<String> {
    vec![
        format!("--endpoint=unix://{}", sock.display()),
        format!("--node-id={node}"),
        format!("--storage-root={}", dir.join(storage).display()),
        format!("--kubelet-dir={}", kubelet.display()),
    ]
}

fn random_token(path: &Path) {
    let mut random = [0u8; 16];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").unwrap(),
        &mut random,
    )
    .unwrap();
    let secret: String = random.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(path, secret).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// `warren controller` and `nodes` × `warren node` (the first is csi-sanity's node). With
/// more than one node, every node hosts a replica service, all sharing one token.
fn split(dir: &Path, kubelet: &Path, cleanup: &mut Cleanup, nodes: usize) -> (PathBuf, PathBuf) {
    let ctl_sock = dir.join("controller.sock");
    let token = dir.join("agent-token");
    random_token(&token);
    let mut agents = Vec::new();
    let mut first_sock = None;
    for n in 1..=nodes {
        let (id, suffix) = match n {
            1 => ("sanity-node".to_string(), String::new()),
            n => (format!("sanity-node-{n}"), format!("-{n}")),
        };
        let sock = dir.join(format!("node{suffix}.sock"));
        let port = free_port();
        let mut args = vec![
            "node".to_string(),
            format!(
                "--state-dir={}",
                dir.join(format!("node{suffix}-state")).display()
            ),
        ];
        let node_kubelet = if n == 1 {
            kubelet.to_path_buf()
        } else {
            dir.join(format!("kubelet{suffix}"))
        };
        std::fs::create_dir_all(&node_kubelet).unwrap();
        args.extend(node_flags(
            dir,
            &node_kubelet,
            &sock,
            &id,
            &format!("storage{suffix}"),
        ));
        args.push(format!("--agent-listen=127.0.0.1:{port}"));
        args.push(format!("--agent-token-file={}", token.display()));
        if nodes > 1 {
            args.push(format!("--replica-listen=127.0.0.1:{}", free_port()));
            args.push(format!("--replica-token-file={}", token.display()));
        }
        let log = dir.join(format!("node{suffix}.log"));
        let mut child = spawn(&args, &log);
        wait_for_socket(&sock, &mut child, &log);
        cleanup.children.push(child);
        agents.push(format!("--node-agent={id}=http://127.0.0.1:{port}"));
        first_sock.get_or_insert(sock);
    }
    let mut args = vec![
        "controller".to_string(),
        format!("--endpoint=unix://{}", ctl_sock.display()),
        format!("--state-dir={}", dir.join("controller-state").display()),
        format!("--agent-token-file={}", token.display()),
    ];
    args.extend(agents);
    let log = dir.join("controller.log");
    let mut child = spawn(&args, &log);
    wait_for_socket(&ctl_sock, &mut child, &log);
    cleanup.children.push(child);
    (first_sock.unwrap(), ctl_sock)
}

/// N from csi-sanity's (ginkgo's) `Ran N of M Specs in ...` line.
pub fn specs_ran(output: &str) -> Option<usize> {
    output
        .lines()
        .find_map(|l| l.strip_prefix("Ran ")?.split(' ').next()?.parse().ok())
}
