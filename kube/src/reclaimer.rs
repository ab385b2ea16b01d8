//! Carries out what `volumes::decide_as` says: deletes the storage of released volumes
//! (reclaim policy Delete) on the node that holds them (the leader, for NFS volumes),
//! then the PV object.

use std::sync::Arc;
use std::time::Duration;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::DeleteVolumeRequest;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use serde_json::json;
use tonic::Request;

use crate::error::{Error, Result};
use crate::provisioner::{event, Context};
use crate::volumes::{self, VolumeAction, FINALIZER};

pub async fn reconcile_volume<C: Controller>(
    volume: Arc<PersistentVolume>,
    ctx: Arc<Context<C>>,
) -> Result<Action> {
    let name = volume.name_any();
    let leading = *ctx.leading.borrow();
    match volumes::decide_as(&volume, &ctx.node, leading) {
        VolumeAction::Nothing(why) => {
            tracing::trace!(volume = %name, why, "nothing to do");
            Ok(Action::requeue(Duration::from_secs(300)))
        }
        VolumeAction::Delete { volume_handle } => {
            let deleted = ctx
                .csi
                .delete_volume(Request::new(DeleteVolumeRequest {
                    volume_id: volume_handle.clone(),
                    ..Default::default()
                }))
                .await;
            if let Err(status) = deleted {
                let message = format!("DeleteVolume: {}", status.message());
                event(
                    &ctx,
                    &*volume,
                    EventType::Warning,
                    "VolumeFailedDelete",
                    "Delete",
                    &message,
                )
                .await;
                return Err(Error::csi("DeleteVolume")(status));
            }
            tracing::info!(volume = %volume_handle, pv = %name, "deleted the storage of a released volume");
            let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
            release_finalizer(&api, &volume).await?;
            if volume.metadata.deletion_timestamp.is_none() {
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(Action::await_change())
        }
        VolumeAction::ReleaseFinalizer => {
            let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
            release_finalizer(&api, &volume).await?;
            Ok(Action::await_change())
        }
    }
}

/// Drops Warren's finalizer, at the resourceVersion we read (409: look again).
async fn release_finalizer(api: &Api<PersistentVolume>, volume: &PersistentVolume) -> Result<()> {
    let Some(finalizers) = &volume.metadata.finalizers else {
        return Ok(());
    };
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let kept: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
    let patch =
        json!({"metadata": {"resourceVersion": volume.resource_version(), "finalizers": kept}});
    match api
        .patch(
            &volume.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests;
