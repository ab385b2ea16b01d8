//! Provisioning a claim: CreateVolume through this node's Controller service, then the
//! PV pre-bound to the claim.

use std::collections::{BTreeMap, HashMap};

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::{
    CapacityRange, CreateVolumeRequest, Topology, TopologyRequirement, VolumeContentSource,
};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::ResourceExt;
use serde_json::json;
use tonic::{Code, Request};
use warren_core::ids;

use super::events::{event, provisioning_failed};
use super::pv_object::volume_object;
use super::{capabilities, Context};
use crate::claims::{self, Provision};
use crate::error::{Error, Result};
use crate::TOPOLOGY_KEY;

/// `source`: the claim's data source as `reconcile_claim` resolved it.
pub(super) async fn provision<C: Controller>(
    ctx: &Context<C>,
    claim: &PersistentVolumeClaim,
    p: &Provision,
    source: Option<Result<VolumeContentSource>>,
) -> Result<()> {
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    if pvs.get_opt(&p.name).await?.is_some() {
        return Ok(()); // done before a crash or by a racing reconcile; the PV controller binds it
    }
    let namespace = claim.namespace().unwrap_or_default();
    let source = match (source, &p.source) {
        (Some(resolved), _) => Some(resolved?),
        (None, None) => None,
        // `source_to_locate` names the source of every claim `decide` lets provision.
        (None, Some(_)) => return Err(Error::Invalid("data source not resolved".into())),
    };
    let fs_type = fs_type(&p.parameters);
    let parameters = create_parameters(claim, p);
    // This node for a local volume; for an NFS one the scheduler's choice, or nothing;
    // for a replicated one the scheduler's choice preferred, among any allowed nodes.
    let topology = |node: &String| Topology {
        segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node.clone())]),
    };
    let accessibility_requirements = (!p.requisite_nodes.is_empty() || p.preferred_node.is_some())
        .then(|| TopologyRequirement {
            requisite: p.requisite_nodes.iter().map(topology).collect(),
            preferred: p.preferred_node.iter().map(topology).collect(),
        });
    let request = CreateVolumeRequest {
        name: p.name.clone(),
        capacity_range: Some(CapacityRange {
            required_bytes: p.bytes as i64,
            limit_bytes: p.limit_bytes.unwrap_or(0) as i64,
        }),
        volume_capabilities: capabilities(&p.access_modes, p.block, &fs_type, &p.mount_options),
        parameters,
        volume_content_source: source,
        accessibility_requirements,
        ..Default::default()
    };
    let volume = match ctx.csi.create_volume(Request::new(request)).await {
        Ok(reply) => reply
            .into_inner()
            .volume
            .ok_or_else(|| Error::Invalid("CreateVolume answered without a volume".into()))?,
        Err(status) if status.code() == Code::ResourceExhausted && p.scheduled => {
            // Not enough space here: ask the scheduler for another node, as
            // external-provisioner does, by dropping its choice.
            let message = format!("node {} cannot hold it: {}", ctx.node, status.message());
            provisioning_failed(ctx, claim, &message).await;
            let claims: Api<PersistentVolumeClaim> =
                Api::namespaced(ctx.client.clone(), &namespace);
            let patch = json!({"metadata": {"annotations": {claims::SELECTED_NODE: null}}});
            claims
                .patch(
                    &claim.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await?;
            return Ok(());
        }
        Err(status) => {
            provisioning_failed(ctx, claim, &format!("CreateVolume: {}", status.message())).await;
            return Err(Error::csi("CreateVolume")(status));
        }
    };
    let pv = volume_object(
        claim,
        p,
        &volume.volume_id,
        volume.capacity_bytes as u64,
        &fs_type,
        &volume.volume_context,
        &volume.accessible_topology,
    );
    match pvs.create(&PostParams::default(), &pv).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(volume = %volume.volume_id, bytes = volume.capacity_bytes, "provisioned");
    let note = if ids::is_nfs_volume(&volume.volume_id) {
        format!(
            "Successfully provisioned NFS volume {} (by node {})",
            p.name, ctx.node
        )
    } else if ids::is_replicated_volume(&volume.volume_id) {
        format!(
            "Successfully provisioned replicated volume {} (by node {})",
            p.name, ctx.node
        )
    } else if volume.accessible_topology.is_empty() {
        format!(
            "Successfully provisioned volume {} on node {}, shared with every node",
            p.name, ctx.node
        )
    } else {
        format!(
            "Successfully provisioned volume {} on node {}",
            p.name, ctx.node
        )
    };
    event(
        ctx,
        claim,
        EventType::Normal,
        "ProvisioningSucceeded",
        "Provision",
        &note,
    )
    .await;
    Ok(())
}

/// CreateVolume's parameters: the class's, and what external-provisioner's
/// `--extra-create-metadata` adds (an NFS class's `subDir` fills its `${pvc.metadata.name}`,
/// `${pvc.metadata.namespace}` and `${pv.metadata.name}` from them).
pub(super) fn create_parameters(
    claim: &PersistentVolumeClaim,
    p: &Provision,
) -> HashMap<String, String> {
    let mut parameters: HashMap<String, String> = p.parameters.clone().into_iter().collect();
    parameters.insert("csi.storage.k8s.io/pvc/name".into(), claim.name_any());
    parameters.insert(
        "csi.storage.k8s.io/pvc/namespace".into(),
        claim.namespace().unwrap_or_default(),
    );
    parameters.insert("csi.storage.k8s.io/pv/name".into(), p.name.clone());
    parameters
}

fn fs_type(parameters: &BTreeMap<String, String>) -> String {
    parameters
        .get("csi.storage.k8s.io/fstype")
        .or_else(|| parameters.get("fsType"))
        .cloned()
        .unwrap_or_default()
}
