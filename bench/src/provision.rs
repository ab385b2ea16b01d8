//! CreateVolume + NodeStageVolume + NodePublishVolume for N volumes against a running
//! `warren all`, one volume at a time, and the latency distribution of the three calls
//! together. Then everything is torn down again (not timed).
//!
//! usage: provision-bench SOCKET KUBELET_DIR LAYOUT [COUNT] [SIZE_MIB] [FSTYPE]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::node_client::NodeClient;
use csi_proto::v1::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
use csi_proto::v1::*;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!(
            "usage: {} SOCKET KUBELET_DIR LAYOUT [COUNT] [SIZE_MIB] [FSTYPE]",
            args[0]
        );
        std::process::exit(2);
    }
    let socket = PathBuf::from(&args[1]);
    let kubelet = PathBuf::from(&args[2]);
    let layout = args[3].clone();
    let count: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(100);
    let size_mib: i64 = args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let fs_type = args.get(6).cloned().unwrap_or_default();

    let channel = warren_core::endpoint::connect_unix(&socket).await?;
    let mut ctl = ControllerClient::new(channel.clone());
    let mut node = NodeClient::new(channel);
    let cap = VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type,
            ..Default::default()
        })),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    };

    let run = std::process::id();
    let mut samples = Vec::with_capacity(count);
    let mut made = Vec::with_capacity(count);
    for i in 0..count {
        let staging = kubelet.join(format!("plugins/bench/{run}-{i}/globalmount"));
        let target = kubelet.join(format!("pods/bench-{run}-{i}/volumes/mount"));
        let start = Instant::now();
        let vol = ctl
            .create_volume(CreateVolumeRequest {
                name: format!("bench-{run}-{layout}-{i}"),
                capacity_range: Some(CapacityRange {
                    required_bytes: size_mib << 20,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![cap.clone()],
                parameters: [("layout".to_string(), layout.clone())].into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .volume
            .ok_or("no volume")?;
        node.node_stage_volume(NodeStageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await?;
        node.node_publish_volume(NodePublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await?;
        samples.push(start.elapsed());
        made.push((vol.volume_id, staging, target));
    }
    for (id, staging, target) in made {
        node.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: target.display().to_string(),
        })
        .await?;
        node.node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await?;
        ctl.delete_volume(DeleteVolumeRequest {
            volume_id: id,
            ..Default::default()
        })
        .await?;
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "layout={layout} fs={} size={size_mib}MiB n={count} p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
        if args.get(6).is_some_and(|s| !s.is_empty()) { args[6].as_str() } else { "ext4" },
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.90)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap()),
    );
    Ok(())
}
