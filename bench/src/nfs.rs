//! Provisioning latency of `backend: nfs` volumes over CSI against a running `warren all`
//! and a real NFS server: CreateVolume (a MKDIR over NFSv3 from user space, plus the
//! MOUNT, portmapper lookups and connection it takes), DeleteVolume (a recursive remove),
//! one at a time; then a snapshot of a volume holding DATA_MIB of data (a server-side
//! copy through the client), in MiB/s. A benchmark: bench/nfs.sh runs it.
//!
//! usage: nfs-bench SOCKET SERVER SHARE [COUNT] [DATA_MIB]
//! (the snapshot's source is the volume `bench-data`, which bench/nfs.sh fills first)

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
use csi_proto::v1::*;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn line(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what}: n={} p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
        samples.len(),
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.90)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap()),
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: nfs-bench SOCKET SERVER SHARE [COUNT] [DATA_MIB]");
        std::process::exit(2);
    }
    let socket = PathBuf::from(&args[1]);
    let count: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(100);
    let data_mib: f64 = args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(0.0);
    let channel = warren_core::endpoint::connect_unix(&socket).await?;
    let mut ctl = ControllerClient::new(channel);
    let parameters = HashMap::from([
        ("backend".to_string(), "nfs".to_string()),
        ("server".to_string(), args[2].clone()),
        ("share".to_string(), args[3].clone()),
    ]);
    let request = |name: String| CreateVolumeRequest {
        name,
        capacity_range: Some(CapacityRange {
            required_bytes: 1 << 30,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: Mode::MultiNodeMultiWriter as i32,
            }),
        }],
        parameters: parameters.clone(),
        ..Default::default()
    };
    let run = std::process::id();
    let (mut created, mut deleted, mut ids) = (vec![], vec![], vec![]);
    for i in 0..count {
        let started = Instant::now();
        let volume = ctl
            .create_volume(request(format!("bench-{run}-{i}")))
            .await?
            .into_inner()
            .volume
            .ok_or("no volume")?;
        created.push(started.elapsed());
        ids.push(volume.volume_id);
    }
    for id in ids {
        let started = Instant::now();
        ctl.delete_volume(DeleteVolumeRequest {
            volume_id: id,
            ..Default::default()
        })
        .await?;
        deleted.push(started.elapsed());
    }
    line("nfs CreateVolume", created);
    line("nfs DeleteVolume", deleted);
    if data_mib > 0.0 {
        let source = ctl
            .create_volume(request("bench-data".into()))
            .await?
            .into_inner()
            .volume
            .ok_or("no volume")?;
        let started = Instant::now();
        let snapshot = ctl
            .create_snapshot(CreateSnapshotRequest {
                source_volume_id: source.volume_id,
                name: format!("bench-snap-{run}"),
                ..Default::default()
            })
            .await?
            .into_inner()
            .snapshot
            .ok_or("no snapshot")?;
        let took = started.elapsed();
        println!(
            "nfs CreateSnapshot (server-side copy of {data_mib:.0} MiB through the client): {:.2}s = {:.0} MiB/s",
            took.as_secs_f64(),
            data_mib / took.as_secs_f64()
        );
        ctl.delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: snapshot.snapshot_id,
            ..Default::default()
        })
        .await?;
    }
    Ok(())
}
