//! A replicated volume as a real kernel block device, end to end with real processes: two
//! `warren replica` services and `warren volume --frontend auto`, which on this CI host
//! (no ublk, no nbd module) picks FUSE + a direct-I/O loop device. ext4 is made on the
//! device, mounted, written; a replica is SIGKILLed while files are written; the volume is
//! stopped cleanly and started again, and the files read back. (The ublk and kernel NBD
//! frontends are exercised in QEMU guests: replica/tests/kernel_lab.rs.)
//!
//! Needs root and /dev/fuse; otherwise it says why and skips, unless WARREN_REQUIRE_FUSE=1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Procs(Vec<Child>, Vec<PathBuf>);

impl Drop for Procs {
    fn drop(&mut self) {
        for mount in &self.1 {
            let _ = Command::new("umount").arg("-l").arg(mount).status();
        }
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn replica(dir: &Path, id: &str, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["replica", "--node-id", id])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--root")
        .arg(dir.join(id))
        .arg("--token-file")
        .arg(dir.join("token"))
        .stderr(std::fs::File::create(dir.join(format!("{id}.log"))).unwrap())
        .spawn()
        .unwrap()
}

fn volume(dir: &Path, ports: &[u16], create: bool) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
    cmd.args([
        "volume",
        "--volume",
        "vol",
        "--size",
        &(64u64 << 20).to_string(),
    ])
    .args(["--replica", &format!("a=127.0.0.1:{}", ports[0])])
    .args(["--replica", &format!("b=127.0.0.1:{}", ports[1])])
    .args([
        "--local",
        "a",
        "--io-timeout-ms",
        "1000",
        "--frontend",
        "auto",
    ])
    .arg("--token-file")
    .arg(dir.join("token"))
    .arg("--fuse-dir")
    .arg(dir.join("fuse"))
    .arg("--device-link")
    .arg(dir.join("dev"))
    .stdout(Stdio::null())
    .stderr(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("volume.log"))
            .unwrap(),
    );
    if create {
        cmd.arg("--create");
    }
    let child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("dev").exists() {
        assert!(
            Instant::now() < deadline,
            "no block device:\n{}",
            std::fs::read_to_string(dir.join("volume.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn stop(mut child: Child, dir: &Path) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "volume exit {status}:\n{}",
        std::fs::read_to_string(dir.join("volume.log")).unwrap_or_default()
    );
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn a_replicated_volume_is_a_block_device_that_survives_a_replica_kill() {
    let unavailable = if !Path::new("/dev/fuse").exists() {
        Some("no /dev/fuse")
    } else if !nix::unistd::geteuid().is_root() {
        Some("not root")
    } else {
        None
    };
    if let Some(why) = unavailable {
        return warren_test_support::skip("WARREN_REQUIRE_FUSE", why);
    }
    let tmp = tempfile::Builder::new()
        .prefix("warren-frontend-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("token"), "frontend-test-token-0123456789").unwrap();
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let ports = [free_port(), free_port()];
    let mut procs = Procs(
        vec![replica(dir, "a", ports[0]), replica(dir, "b", ports[1])],
        vec![mnt.clone()],
    );
    std::thread::sleep(Duration::from_millis(300));

    let vol = volume(dir, &ports, true);
    let dev = std::fs::canonicalize(dir.join("dev")).unwrap();
    assert!(
        dev.to_string_lossy().starts_with("/dev/loop"),
        "auto picked {dev:?} on a host without ublk/nbd"
    );
    sh("mkfs.ext4", &["-q", dev.to_str().unwrap()]);
    sh("mount", &[dev.to_str().unwrap(), mnt.to_str().unwrap()]);
    let first = pattern(1, 6 << 20);
    std::fs::write(mnt.join("first"), &first).unwrap();
    sh("sync", &[]);
    // SIGKILL replica b; the file system keeps working on a alone.
    procs.0[1].kill().unwrap();
    procs.0[1].wait().unwrap();
    let second = pattern(2, 6 << 20);
    std::fs::write(mnt.join("second"), &second).unwrap();
    sh("sync", &[]);
    sh("umount", &[mnt.to_str().unwrap()]);
    stop(vol, dir);
    // Clean stop: the loop device and the FUSE mount are gone.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&dir.join("fuse").display().to_string()));
    assert!(!dir.join("dev").exists());

    // b comes back and is rebuilt; both files are there after a restart of the volume.
    procs.0[1] = replica(dir, "b", ports[1]);
    std::thread::sleep(Duration::from_millis(300));
    let vol = volume(dir, &ports, false);
    let dev = std::fs::canonicalize(dir.join("dev")).unwrap();
    sh("mount", &[dev.to_str().unwrap(), mnt.to_str().unwrap()]);
    assert!(std::fs::read(mnt.join("first")).unwrap() == first);
    assert!(std::fs::read(mnt.join("second")).unwrap() == second);
    sh("umount", &[mnt.to_str().unwrap()]);
    // Wait for b's rebuild (b is at a's generation and a member of it), then stop cleanly.
    let deadline = Instant::now() + Duration::from_secs(20);
    let state = |id: &str| -> serde_json::Value {
        let meta = std::fs::read_to_string(dir.join(id).join("vol/meta.json")).unwrap_or_default();
        serde_json::from_str(&meta).unwrap_or_default()
    };
    loop {
        let (a, b) = (state("a"), state("b"));
        let member = b["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|x| x == "b"));
        if member && b["rebuilding"] == false && a["gen"] == b["gen"] {
            break;
        }
        let meta = b;
        assert!(Instant::now() < deadline, "b not rebuilt: {meta}");
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(vol, dir);
    let (a, b) = (
        std::fs::read(dir.join("a/vol/data")).unwrap(),
        std::fs::read(dir.join("b/vol/data")).unwrap(),
    );
    if a != b {
        let differing: Vec<usize> = (0..a.len() / 4096)
            .filter(|&i| a[i * 4096..(i + 1) * 4096] != b[i * 4096..(i + 1) * 4096])
            .collect();
        panic!(
            "replicas differ after the rebuild in {} blocks, first {:?}\n{}",
            differing.len(),
            &differing[..differing.len().min(10)],
            std::fs::read_to_string(dir.join("volume.log")).unwrap_or_default()
        );
    }
}
