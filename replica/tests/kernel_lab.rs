//! Kernel block-device frontends in the QEMU kernel lab (lab/run-guest.sh): the
//! `frontend_check` example runs inside a TCG guest, as root, against
//! - ublk (`frontend/ublk/`) on the bookworm-backports 6.12 kernel (`ublk_drv`);
//! - NBD (`frontend/nbd/kernel.rs`, `attach_kernel`) on the Debian 6.1 kernel (`nbd`).
//!
//! Each guest attaches a `FileTarget` and then a two-replica `Engine`, runs concurrent
//! O_DIRECT I/O, mkfs.ext4 + mount + write + read back (mkfs.ext4 and its libraries are
//! copied in from the host), cuts one replica mid-write, and detaches.
//!
//! When the lab is not installed (no qemu-system-x86_64, no lab/run-guest.sh, or a kernel
//! missing; `lab/install.sh` installs them) the tests print why and pass, unless
//! `WARREN_REQUIRE_KERNEL_LAB=1`, which turns that into a failure. `WARREN_FRONTEND_CHECK`
//! may name a prebuilt `frontend_check` binary; otherwise it is built with cargo.
//! Guest runs are serialised (TCG is CPU-bound) and each prints its wall time.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

fn lab_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../lab")
}

fn lab_cache() -> PathBuf {
    std::env::var_os("LAB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/warren-lab"))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// A `vmlinuz-PREFIX*-cloud-amd64` in `boot`, as run-guest.sh looks for it.
fn has_kernel(boot: &Path, prefix: &str) -> bool {
    std::fs::read_dir(boot)
        .map(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("vmlinuz-")
                    .and_then(|v| v.strip_prefix(prefix))
                    .is_some_and(|rest| rest.starts_with('.') && rest.ends_with("-cloud-amd64"))
            })
        })
        .unwrap_or(false)
}

/// Why the lab cannot run this kernel here, if it cannot.
fn missing(kernel: &str) -> Option<String> {
    let run_guest = lab_dir().join("run-guest.sh");
    if !run_guest.is_file() {
        return Some(format!("{} is missing", run_guest.display()));
    }
    for tool in [
        "qemu-system-x86_64",
        "cpio",
        "busybox",
        "depmod",
        "modprobe",
    ] {
        if !on_path(tool) {
            return Some(format!(
                "{tool} is not installed (run lab/install.sh as root)"
            ));
        }
    }
    let boot = match kernel {
        "6.1" => PathBuf::from("/boot"),
        _ => lab_cache().join("k/6.12/boot"),
    };
    if !has_kernel(&boot, kernel) {
        return Some(format!(
            "no {kernel} cloud kernel in {} (run lab/install.sh as root)",
            boot.display()
        ));
    }
    None
}

/// Writes to stderr directly: unlike `eprintln!`, not captured by the test harness, so skips
/// and guest timings show in every `cargo test` run.
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Prints why the test is skipped, or fails if the lab is required.
fn skip(why: &str) {
    warren_test_support::skip(
        "WARREN_REQUIRE_KERNEL_LAB",
        &format!("the kernel lab is unavailable: {why}"),
    );
}

/// The `frontend_check` binary: `WARREN_FRONTEND_CHECK`, or built now with cargo (once per
/// test process) next to this test's own profile directory.
fn frontend_check() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("WARREN_FRONTEND_CHECK") {
                return PathBuf::from(path);
            }
            // target/<profile>/deps/kernel_lab-HASH -> target/<profile>/examples/.
            let exe = std::env::current_exe().unwrap();
            let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
            let release = profile_dir.file_name().is_some_and(|n| n == "release");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args([
                "build",
                "-p",
                "warren-replica",
                "--example",
                "frontend_check",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
            if release {
                cmd.arg("--release");
            }
            let t = Instant::now();
            let status = cmd
                .status()
                .expect("run cargo build --example frontend_check");
            assert!(status.success(), "building frontend_check failed: {status}");
            say(&format!(
                "kernel_lab: built frontend_check in {:.1}s",
                t.elapsed().as_secs_f64()
            ));
            let path = profile_dir.join("examples/frontend_check");
            assert!(path.is_file(), "{} was not built", path.display());
            path
        })
        .clone()
}

/// Boots `kernel` with `modules`, runs `frontend_check` with each argument list in turn,
/// and checks every run passed.
fn run_in_guest(kernel: &str, modules: &str, runs: &[&str]) {
    if let Some(why) = missing(kernel) {
        skip(&why);
        return;
    }
    // One guest at a time: TCG is CPU-bound and the machine has 2 cores.
    static GUEST: Mutex<()> = Mutex::new(());
    let binary = frontend_check();
    let _one = GUEST.lock().unwrap_or_else(|e| e.into_inner());

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.sh");
    let mut text = String::from("rc=0\n");
    for args in runs {
        text.push_str(&format!(
            "echo \"=== frontend_check {args}\"\n/opt/fc/frontend_check {args} || rc=1\n"
        ));
    }
    text.push_str("exit $rc\n");
    std::fs::write(&script, text).unwrap();
    let log = dir.path().join("console.log");

    let mut cmd = Command::new(lab_dir().join("run-guest.sh"));
    cmd.args(["--kernel", kernel, "--modules", modules, "--timeout", "600"])
        .arg("--copy")
        .arg(format!("{}:/opt/fc/frontend_check", binary.display()))
        .arg("--script")
        .arg(&script)
        .arg("--log")
        .arg(&log);
    let mkfs = Path::new("/sbin/mkfs.ext4");
    if mkfs.exists() {
        cmd.arg("--copy").arg("/sbin/mkfs.ext4:/sbin/mkfs.ext4");
    } else {
        say("kernel_lab: no /sbin/mkfs.ext4 on the host: the ext4 checks are skipped");
    }
    let t = Instant::now();
    let output = cmd.output().expect("run lab/run-guest.sh");
    let secs = t.elapsed().as_secs_f64();
    let console = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .replace('\r', "");
    let interesting: Vec<&str> = console
        .lines()
        .filter(|l| {
            l.starts_with("PASS ")
                || l.starts_with("FAIL ")
                || l.starts_with("info: ")
                || l.starts_with("=== ")
                || l.starts_with("run-guest:")
                || l.contains(" passed, ")
        })
        .collect();
    say(&format!(
        "kernel_lab: {modules} on {kernel}: guest run took {secs:.1}s, {}\n  {}",
        output.status,
        interesting.join("\n  ")
    ));
    if !output.status.success() {
        let tail: Vec<&str> = console.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{modules} on {kernel}: guest run failed ({}); stderr: {}\nconsole tail:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            tail.join("\n")
        );
    }
    let finished = console.matches(" passed, 0 failed").count();
    assert_eq!(
        finished,
        runs.len(),
        "expected {} clean frontend_check summaries",
        runs.len()
    );
    assert!(!console.contains("\nFAIL "), "a check failed");
}

#[test]
fn ublk_frontend_on_linux_6_12() {
    run_in_guest(
        "6.12",
        "ublk_drv",
        &[
            "--frontend ublk --backing /tmp/fc --size-mib 32 --queues 2 --depth 16",
            "--frontend ublk --backing /tmp/fc512 --mode file --size-mib 8 --block-size 512 --queues 1 --depth 4 --mkfs none",
        ],
    );
}

#[test]
fn nbd_kernel_client_on_linux_6_1() {
    run_in_guest(
        "6.1",
        "nbd",
        &["--frontend nbd --backing /tmp/fc --size-mib 32"],
    );
}
