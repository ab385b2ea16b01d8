//! A minimal CSI Node client for tests that run where no Kubernetes does (kernel-lab
//! guests): stage and publish a volume the way the kubelet would, or undo it.
//!
//!   csi_node SOCKET publish   VOLUME_ID STAGING TARGET [KEY=VALUE context...]
//!   csi_node SOCKET unpublish VOLUME_ID STAGING TARGET
//!
//! The capability is a ReadWriteMany file system. Prints `OK` or the gRPC status.

use std::collections::HashMap;
use std::process::ExitCode;

use csi_proto::v1::node_client::NodeClient;
use csi_proto::v1::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
use csi_proto::v1::*;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!("usage: csi_node SOCKET publish|unpublish VOLUME_ID STAGING TARGET [K=V...]");
        return ExitCode::from(2);
    }
    let channel = warren_core::endpoint::connect_unix(std::path::Path::new(&args[1]))
        .await
        .expect("connect");
    let mut node = NodeClient::new(channel);
    let (volume_id, staging, target) = (args[3].clone(), args[4].clone(), args[5].clone());
    let context: HashMap<String, String> = args[6..]
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let cap = VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeMultiWriter as i32,
        }),
    };
    let result = match args[2].as_str() {
        "publish" => {
            let staged = node
                .node_stage_volume(NodeStageVolumeRequest {
                    volume_id: volume_id.clone(),
                    staging_target_path: staging.clone(),
                    volume_capability: Some(cap.clone()),
                    volume_context: context.clone(),
                    ..Default::default()
                })
                .await;
            match staged {
                Err(e) => Err(e),
                Ok(_) => node
                    .node_publish_volume(NodePublishVolumeRequest {
                        volume_id,
                        staging_target_path: staging,
                        target_path: target,
                        volume_capability: Some(cap),
                        volume_context: context,
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            }
        }
        "unpublish" => {
            let unpublished = node
                .node_unpublish_volume(NodeUnpublishVolumeRequest {
                    volume_id: volume_id.clone(),
                    target_path: target,
                })
                .await;
            match unpublished {
                Err(e) => Err(e),
                Ok(_) => node
                    .node_unstage_volume(NodeUnstageVolumeRequest {
                        volume_id,
                        staging_target_path: staging,
                    })
                    .await
                    .map(drop),
            }
        }
        other => {
            eprintln!("unknown command {other}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => {
            println!("OK");
            ExitCode::SUCCESS
        }
        Err(status) => {
            println!("ERROR {:?}: {}", status.code(), status.message());
            ExitCode::FAILURE
        }
    }
}
