//! Growing a bound claim's volume, as external-resizer does.

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::{CapacityRange, ControllerExpandVolumeRequest};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::ResourceExt;
use serde_json::json;
use tonic::Request;

use super::{capabilities, event, Context};
use crate::claims::CONTROLLER_RESIZE_IN_PROGRESS;
use crate::error::{Error, Result};
use crate::quantity::format_bytes;

/// Grows the volume and records it the way external-resizer does, so the kubelet then
/// grows the file system (NodeExpandVolume) while the pod runs.
pub(super) async fn expand<C: Controller>(
    ctx: &Context<C>,
    claim: &PersistentVolumeClaim,
    handle: &str,
    pv_name: &str,
    bytes: u64,
    block: bool,
) -> Result<()> {
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &claim.namespace().unwrap_or_default());
    let name = claim.name_any();
    let size = Quantity(format_bytes(bytes));
    claims
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "allocatedResources": {"storage": size},
                "allocatedResourceStatuses": {"storage": CONTROLLER_RESIZE_IN_PROGRESS},
            }})),
        )
        .await?;
    let spec = claim.spec.as_ref();
    let modes = spec
        .and_then(|s| s.access_modes.clone())
        .unwrap_or_default();
    let capability = capabilities(&modes, block, "", &[]).into_iter().next();
    let reply = ctx
        .csi
        .controller_expand_volume(Request::new(ControllerExpandVolumeRequest {
            volume_id: handle.into(),
            capacity_range: Some(CapacityRange {
                required_bytes: bytes as i64,
                limit_bytes: 0,
            }),
            volume_capability: capability,
            ..Default::default()
        }))
        .await;
    let reply = match reply {
        Ok(r) => r.into_inner(),
        Err(status) => {
            let message = format!("ControllerExpandVolume: {}", status.message());
            event(
                ctx,
                claim,
                EventType::Warning,
                "VolumeResizeFailed",
                "Resize",
                &message,
            )
            .await;
            return Err(Error::csi("ControllerExpandVolume")(status));
        }
    };
    let grown = Quantity(format_bytes(reply.capacity_bytes.max(bytes as i64) as u64));
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    pvs.patch(
        pv_name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"capacity": {"storage": grown}}})),
    )
    .await?;
    let status = if reply.node_expansion_required && !block {
        json!({"status": {
            "allocatedResourceStatuses": {"storage": "NodeResizePending"},
            "conditions": [{
                "type": "FileSystemResizePending",
                "status": "True",
                "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
                "message": "Waiting for the kubelet to grow the file system on the node.",
            }],
        }})
    } else {
        json!({"status": {
            "capacity": {"storage": grown},
            "allocatedResourceStatuses": null,
            "conditions": [],
        }})
    };
    claims
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    tracing::info!(volume = %handle, bytes, "expanded");
    let note = format!("resize of volume {pv_name} to {} succeeded", grown.0);
    event(
        ctx,
        claim,
        EventType::Normal,
        "VolumeResizeSuccessful",
        "Resize",
        &note,
    )
    .await;
    Ok(())
}
