//! The CSI calls the benchmark makes, as a pod's life would: CreateVolume on the
//! controller, NodeStage + NodePublish on the pod's node, then the way back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::node_client::NodeClient;
use csi_proto::v1::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
use csi_proto::v1::*;
use tonic::transport::Channel;

pub type BoxError = Box<dyn std::error::Error>;

/// What kind of volume a run provisions: the StorageClass parameters it stands for.
#[derive(Clone, Debug)]
pub enum Class {
    /// `layout: image`, ext4, on the pod's node (the local anchor).
    LocalImage,
    /// `backend: replicated` with this many replicas.
    Replicated(u8),
}

impl Class {
    pub fn label(&self) -> String {
        match self {
            Class::LocalImage => "local image".into(),
            Class::Replicated(n) => format!("replicated, {n} replicas"),
        }
    }

    fn parameters(&self) -> HashMap<String, String> {
        match self {
            Class::LocalImage => [("layout".to_string(), "image".to_string())].into(),
            Class::Replicated(n) => [
                ("backend".to_string(), "replicated".to_string()),
                ("replicas".to_string(), n.to_string()),
            ]
            .into(),
        }
    }

    /// A local volume must be on the pod's node (requisite); a replicated one names the
    /// pod's node as preferred only, as external-provisioner does for WaitForFirstConsumer,
    /// so `dataLocality: best-effort` puts one replica there.
    fn topology(&self, node: &str) -> TopologyRequirement {
        let here = Topology {
            segments: [(warren_core::TOPOLOGY_KEY.to_string(), node.to_string())].into(),
        };
        match self {
            Class::LocalImage => TopologyRequirement {
                requisite: vec![here.clone()],
                preferred: vec![here],
            },
            Class::Replicated(_) => TopologyRequirement {
                requisite: vec![],
                preferred: vec![here],
            },
        }
    }
}

/// A volume staged and published on the pod's node.
pub struct Mounted {
    pub id: String,
    pub staging: PathBuf,
    pub target: PathBuf,
}

pub struct Csi {
    ctl: ControllerClient<Channel>,
    node: NodeClient<Channel>,
    node_id: String,
    kubelet: PathBuf,
    run: u32,
    made: u32,
}

fn mount_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: "ext4".into(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

/// How long each step of one volume's way to a pod took.
pub struct Timings {
    pub create: Duration,
    pub stage_publish: Duration,
}

impl Csi {
    pub async fn connect(controller: &Path, node: &Path, kubelet: &Path) -> Result<Csi, BoxError> {
        let ctl = ControllerClient::new(warren_core::endpoint::connect_unix(controller).await?);
        let mut node = NodeClient::new(warren_core::endpoint::connect_unix(node).await?);
        let node_id = node
            .node_get_info(NodeGetInfoRequest {})
            .await?
            .into_inner()
            .node_id;
        Ok(Csi {
            ctl,
            node,
            node_id,
            kubelet: kubelet.to_path_buf(),
            run: std::process::id(),
            made: 0,
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub async fn create(&mut self, class: &Class, size_mib: i64) -> Result<Volume, BoxError> {
        self.made += 1;
        let name = format!("bench-{}-{}", self.run, self.made);
        self.ctl
            .create_volume(CreateVolumeRequest {
                name,
                capacity_range: Some(CapacityRange {
                    required_bytes: size_mib << 20,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![mount_cap()],
                parameters: class.parameters(),
                accessibility_requirements: Some(class.topology(&self.node_id)),
                ..Default::default()
            })
            .await?
            .into_inner()
            .volume
            .ok_or_else(|| "CreateVolume answered no volume".into())
    }

    pub async fn stage_publish(&mut self, volume: &Volume) -> Result<Mounted, BoxError> {
        let n = self.made;
        let staging = self
            .kubelet
            .join(format!("plugins/bench/{}-{n}/globalmount", self.run));
        let target = self
            .kubelet
            .join(format!("pods/bench-{}-{n}/volumes/mount", self.run));
        self.node
            .node_stage_volume(NodeStageVolumeRequest {
                volume_id: volume.volume_id.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(mount_cap()),
                volume_context: volume.volume_context.clone(),
                ..Default::default()
            })
            .await?;
        self.node
            .node_publish_volume(NodePublishVolumeRequest {
                volume_id: volume.volume_id.clone(),
                staging_target_path: staging.display().to_string(),
                target_path: target.display().to_string(),
                volume_capability: Some(mount_cap()),
                volume_context: volume.volume_context.clone(),
                ..Default::default()
            })
            .await?;
        Ok(Mounted {
            id: volume.volume_id.clone(),
            staging,
            target,
        })
    }

    /// CreateVolume, then NodeStage + NodePublish, each timed.
    pub async fn provision(
        &mut self,
        class: &Class,
        size_mib: i64,
    ) -> Result<(Mounted, Timings), BoxError> {
        let start = Instant::now();
        let volume = self.create(class, size_mib).await?;
        let create = start.elapsed();
        let mounted = self.stage_publish(&volume).await?;
        let stage_publish = start.elapsed() - create;
        Ok((
            mounted,
            Timings {
                create,
                stage_publish,
            },
        ))
    }

    /// NodeUnpublish + NodeUnstage + DeleteVolume: the way back, as when the claim goes.
    pub async fn remove(&mut self, m: &Mounted) -> Result<(), BoxError> {
        self.node
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: m.id.clone(),
                target_path: m.target.display().to_string(),
            })
            .await?;
        self.node
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: m.id.clone(),
                staging_target_path: m.staging.display().to_string(),
            })
            .await?;
        self.ctl
            .delete_volume(DeleteVolumeRequest {
                volume_id: m.id.clone(),
                ..Default::default()
            })
            .await?;
        Ok(())
    }
}
