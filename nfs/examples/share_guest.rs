//! Runs inside a kernel-lab guest (nfs/tests/share.rs): a Linux NFS client mounts the
//! built-in share through `warren_nfs::mount`, writes and reads, then keeps using the
//! handles it already holds (an open file, a cached directory) while the host restarts
//! the share. Prints `PASS share-guest` or `FAIL share-guest: <why>`.
//!
//!   share_guest SOURCE DATA
//!
//! Protocol with the host: the guest creates `phase1-done` in the share when its first
//! half is done; the host restarts the share and then creates `restarted`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use warren_nfs::mount::{mount, unmount};
use warren_nfs::mount_options::{Flags, MountRequest};

const BIG: usize = 8 << 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: share_guest SOURCE DATA");
        return ExitCode::from(2);
    }
    let target = Path::new("/mnt/share");
    std::fs::create_dir_all(target).unwrap();
    let request = MountRequest {
        source: args[1].clone(),
        fs_type: "nfs",
        flags: Flags::default(),
        data: args[2].clone(),
    };
    let started = Instant::now();
    if let Err(e) = mount(&request, target, Duration::from_secs(30)) {
        println!("FAIL share-guest: mount: {e}");
        return ExitCode::FAILURE;
    }
    println!("share-guest: mounted in {:.1?}", started.elapsed());
    let result = run(target);
    let unmounted = unmount(target, Duration::from_secs(20));
    match (result, unmounted) {
        (Ok(()), Ok(false)) => {
            println!("PASS share-guest");
            ExitCode::SUCCESS
        }
        (Ok(()), other) => {
            println!("FAIL share-guest: unmount: {other:?}");
            ExitCode::FAILURE
        }
        (Err(why), _) => {
            println!("FAIL share-guest: {why}");
            ExitCode::FAILURE
        }
    }
}

fn pattern() -> Vec<u8> {
    (0..BIG).map(|i| (i % 251) as u8).collect()
}

fn run(root: &Path) -> Result<(), String> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err: std::io::Error| format!("{what}: {err}")
    };
    // Phase 1: ordinary work through the kernel client.
    let mut kept = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(root.join("from-guest"))
        .map_err(e("create from-guest"))?;
    kept.write_all(b"written by a kernel client")
        .and_then(|()| kept.sync_all())
        .map_err(e("write from-guest"))?;
    std::fs::create_dir(root.join("sub")).map_err(e("mkdir sub"))?;
    let started = Instant::now();
    let mut big = File::create(root.join("sub/big")).map_err(e("create big"))?;
    big.write_all(&pattern())
        .and_then(|()| big.sync_all())
        .map_err(e("write big"))?;
    let wrote = started.elapsed();
    drop(big);
    let started = Instant::now();
    let back = std::fs::read(root.join("sub/big")).map_err(e("read big"))?;
    println!(
        "share-guest: 8 MiB written+fsync in {wrote:.1?}, read in {:.1?} (may be cached)",
        started.elapsed()
    );
    if back != pattern() {
        return Err("sub/big read back wrong".into());
    }
    std::os::unix::fs::symlink("/etc", root.join("guest-link")).map_err(e("symlink"))?;
    let link = std::fs::read_link(root.join("guest-link")).map_err(e("readlink"))?;
    if link != Path::new("/etc") {
        return Err(format!("readlink gave {}", link.display()));
    }
    let mut names: Vec<String> = std::fs::read_dir(root)
        .map_err(e("readdir"))?
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names != ["from-guest", "guest-link", "sub"] {
        return Err(format!("readdir gave {names:?}"));
    }
    std::fs::write(root.join("phase1-done"), b"").map_err(e("phase1-done"))?;
    println!("share-guest: phase 1 done, waiting for the host to restart the share");

    // Phase 2: after the restart, with handles from before it.
    let waited = Instant::now();
    while !root.join("restarted").exists() {
        if waited.elapsed() > Duration::from_secs(120) {
            return Err("the host never restarted the share".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let len = kept.metadata().map_err(e("fstat after restart"))?.len();
    kept.write_all_at(b"|after restart", len)
        .and_then(|()| kept.sync_all())
        .map_err(e("write through the old handle after the restart"))?;
    let again = std::fs::read(root.join("sub/big")).map_err(e("read big after restart"))?;
    if again != pattern() {
        return Err("sub/big read back wrong after the restart".into());
    }
    let host = std::fs::read_to_string(root.join("restarted")).map_err(e("read restarted"))?;
    if host != "host" {
        return Err(format!("restarted holds {host:?}"));
    }
    println!("share-guest: phase 2 done after {:.1?}", waited.elapsed());
    Ok(())
}
