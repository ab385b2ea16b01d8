//! Throughput of the built-in share (`warren_nfs::share::ShareServer`) against the same
//! file written and read locally: one NFSv3 client connection (`nfs3_client`) on
//! loopback, 1 MiB WRITEs and READs, sequential; the local side writes with an fdatasync
//! per MiB (what the share does for every WRITE: it answers only once data is on disk) and
//! reads through the page cache. Median of RUNS runs. A benchmark: run by hand
//! (bench/share.sh), copy the line into docs/benchmarks.md.
//!
//! usage: share-bench DIR [MIB] [RUNS]    (DIR on ext4/xfs/btrfs: handles need it)

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nfs3_client::nfs3_types::nfs3::{
    createhow3, diropargs3, filename3, nfs_fh3, post_op_fh3, sattr3, set_mode3, stable_how,
    CREATE3args, Nfs3Result, READ3args, WRITE3args,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::TokioConnector;
use nfs3_client::Nfs3ConnectionBuilder;
use warren_nfs::share::ShareServer;

const MIB: usize = 1 << 20;
const KEY: &str = "0123456789abcdef0123456789abcdef";

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(|a, b| a.total_cmp(b));
    runs[runs.len() / 2]
}

fn rate(mib: usize, took: Duration) -> f64 {
    mib as f64 / took.as_secs_f64()
}

fn local(dir: &std::path::Path, mib: usize, chunk: &[u8]) -> (f64, f64) {
    let path = dir.join("local");
    let started = Instant::now();
    let mut f = std::fs::File::create(&path).unwrap();
    for _ in 0..mib {
        f.write_all(chunk).unwrap();
        f.sync_data().unwrap();
    }
    let write = rate(mib, started.elapsed());
    let started = Instant::now();
    let back = std::fs::read(&path).unwrap();
    assert_eq!(back.len(), mib * MIB);
    let read = rate(mib, started.elapsed());
    std::fs::remove_file(&path).unwrap();
    (write, read)
}

async fn through_share(addr: SocketAddr, mib: usize, chunk: &[u8], run: usize) -> (f64, f64) {
    let auth = auth_unix {
        stamp: 1,
        machinename: Opaque::owned(b"share-bench".to_vec()),
        uid: 0,
        gid: 0,
        gids: vec![],
    };
    let mut c =
        Nfs3ConnectionBuilder::new(TokioConnector, addr.ip().to_string(), format!("/{KEY}"))
            .connect_from_privileged_port(false)
            .mount_port(addr.port())
            .nfs3_port(addr.port())
            .credential(opaque_auth::auth_unix(&auth))
            .mount()
            .await
            .expect("MOUNT");
    let root = c.root_nfs_fh3();
    let args = CREATE3args {
        where_: diropargs3 {
            dir: root,
            name: filename3(Opaque::owned(format!("run-{run}").into_bytes())),
        },
        how: createhow3::UNCHECKED(sattr3 {
            mode: set_mode3::Some(0o644),
            ..Default::default()
        }),
    };
    let file: nfs_fh3 = match c.create(&args).await.unwrap() {
        Nfs3Result::Ok(ok) => match ok.obj {
            post_op_fh3::Some(fh) => fh,
            post_op_fh3::None => panic!("CREATE gave no handle"),
        },
        Nfs3Result::Err((status, _)) => panic!("CREATE: {status:?}"),
    };
    let started = Instant::now();
    for i in 0..mib {
        let args = WRITE3args {
            file: file.clone(),
            offset: (i * MIB) as u64,
            count: MIB as u32,
            stable: stable_how::UNSTABLE,
            data: Opaque::borrowed(chunk),
        };
        match c.write(&args).await.unwrap() {
            Nfs3Result::Ok(ok) => assert_eq!(ok.count as usize, MIB),
            Nfs3Result::Err((status, _)) => panic!("WRITE: {status:?}"),
        }
    }
    let write = rate(mib, started.elapsed());
    let started = Instant::now();
    for i in 0..mib {
        let args = READ3args {
            file: file.clone(),
            offset: (i * MIB) as u64,
            count: MIB as u32,
        };
        match c.read(&args).await.unwrap() {
            Nfs3Result::Ok(ok) => assert_eq!(ok.data.as_ref(), chunk),
            Nfs3Result::Err((status, _)) => panic!("READ: {status:?}"),
        }
    }
    let read = rate(mib, started.elapsed());
    let _ = c.unmount().await;
    (write, read)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(dir) = args.get(1).map(std::path::PathBuf::from) else {
        eprintln!("usage: share-bench DIR [MIB] [RUNS]");
        std::process::exit(2);
    };
    let mib: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(256);
    let runs: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    let chunk: Vec<u8> = (0..MIB).map(|i| (i as u8).wrapping_mul(31)).collect();
    let share = ShareServer::bind("127.0.0.1:0".parse().unwrap(), 1).expect("bind the share");
    share.export(KEY, &dir).expect("export");
    let (mut lw, mut lr, mut sw, mut sr) = (vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        let (w, r) = local(&dir, mib, &chunk);
        lw.push(w);
        lr.push(r);
        let (w, r) = through_share(share.local_addr(), mib, &chunk, run).await;
        sw.push(w);
        sr.push(r);
        let _ = std::fs::remove_file(dir.join(format!("run-{run}")));
    }
    let (lw, lr, sw, sr) = (median(lw), median(lr), median(sw), median(sr));
    println!(
        "share {mib} MiB x{runs} (median): write {sw:.0} MiB/s = {:.0}% of local {lw:.0} MiB/s (fdatasync per MiB); \
         read {sr:.0} MiB/s = {:.0}% of local {lr:.0} MiB/s (page cache)",
        100.0 * sw / lw,
        100.0 * sr / lr
    );
    share.shutdown();
}
