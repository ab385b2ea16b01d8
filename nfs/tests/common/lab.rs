//! The kernel lab (lab/run-guest.sh: QEMU/TCG guests with Debian's kernels) for tests that
//! need what this host's kernel lacks (an NFS client): whether it can run here, and the
//! example binaries a guest runs. Shared by the NFS tests of several crates (`#[path]`).
#![allow(dead_code)] // each test binary uses part of it

use std::path::{Path, PathBuf};
use std::process::Command;

/// lab/run-guest.sh (every crate using this sits one level below the workspace root).
pub fn run_guest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../lab/run-guest.sh")
}

/// Why the lab cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    if !run_guest().is_file() {
        return Some("lab/run-guest.sh is missing".into());
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("qemu-system-x86_64 is not installed (run lab/install.sh)".into());
    }
    let has_61 = std::fs::read_dir("/boot").is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("vmlinuz-6.1.") && name.ends_with("-cloud-amd64")
        })
    });
    (!has_61).then(|| "no 6.1 cloud kernel in /boot (run lab/install.sh)".into())
}

/// Whether a lab test can run; if not, it says why, or fails when
/// WARREN_REQUIRE_KERNEL_LAB=1 (CI), so a missing lab never passes silently.
pub fn available() -> bool {
    let Some(why) = missing() else {
        return true;
    };
    warren_test_support::skip(
        "WARREN_REQUIRE_KERNEL_LAB",
        &format!("the kernel lab is unavailable: {why}"),
    );
    false
}

/// Builds example `name` of `package` in the running test's profile; its path.
pub fn example(package: &str, name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", package, "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    assert!(cmd.status().unwrap().success(), "building {name} failed");
    let path = profile_dir.join("examples").join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}
