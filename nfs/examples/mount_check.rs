//! Runs inside a kernel-lab guest (nfs/tests/kernel_mount.rs): one NFS mount through
//! `warren_nfs::mount`, with the outcome the test expects, and checks that no mount is
//! left behind whatever happened. Prints `PASS <name> (<time>)` or `FAIL <name>: <why>`.
//!
//!   mount_check NAME ok|timeout|refused SOURCE DATA [DEADLINE_MS]

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use warren_nfs::mount::{is_mount_point, mount, unmount};
use warren_nfs::mount_options::{Flags, MountRequest};
use warren_nfs::Error;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: mount_check NAME ok|timeout|refused SOURCE DATA [DEADLINE_MS]");
        return ExitCode::from(2);
    }
    let (name, expect) = (&args[1], args[2].as_str());
    let deadline =
        Duration::from_millis(args.get(5).and_then(|d| d.parse().ok()).unwrap_or(20_000));
    let request = MountRequest {
        source: args[3].clone(),
        fs_type: "nfs",
        flags: Flags::default(),
        data: args[4].clone(),
    };
    let target = Path::new("/mnt").join(name);
    std::fs::create_dir_all(&target).unwrap();
    let started = Instant::now();
    let result = mount(&request, &target, deadline);
    let took = started.elapsed();
    let verdict = check(expect, result, &target, deadline, took);
    // Whatever the outcome, nothing may stay mounted.
    let verdict = verdict.and_then(|()| {
        if is_mount_point(&target) {
            Err("a mount was left behind".into())
        } else {
            Ok(())
        }
    });
    match verdict {
        Ok(()) => {
            println!("PASS {name} ({took:.1?})");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("FAIL {name}: {why} (after {took:.1?})");
            ExitCode::FAILURE
        }
    }
}

fn check(
    expect: &str,
    result: Result<(), Error>,
    target: &Path,
    deadline: Duration,
    took: Duration,
) -> Result<(), String> {
    match (expect, result) {
        ("ok", Ok(())) => {
            let file = target.join("written-by-the-guest");
            std::fs::write(&file, b"through warren_nfs::mount").map_err(|e| e.to_string())?;
            let back = std::fs::read(&file).map_err(|e| e.to_string())?;
            if back != b"through warren_nfs::mount" {
                return Err("read back something else".into());
            }
            match unmount(target, Duration::from_secs(10)) {
                Ok(false) => Ok(()),
                Ok(true) => Err("a live server's mount needed a forced unmount".into()),
                Err(e) => Err(format!("unmount: {e}")),
            }
        }
        ("timeout", Err(e @ Error::Timeout { .. })) => {
            if took > deadline + Duration::from_secs(3) {
                Err(format!("{e}, but only after {took:.1?}"))
            } else {
                Ok(())
            }
        }
        ("refused", Err(e @ Error::Mount { .. })) if e.code() == tonic::Code::Unavailable => Ok(()),
        (_, Ok(())) => {
            let _ = unmount(target, Duration::from_secs(5));
            Err(format!("mounted, expected {expect}"))
        }
        (_, Err(e)) => Err(format!("expected {expect}, got: {e} ({:?})", e.code())),
    }
}
