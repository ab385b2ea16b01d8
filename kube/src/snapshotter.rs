//! Carries out what `snapshots::decide_as` says: the content object, the CSI snapshot on
//! the node that holds the source (the leader, for an NFS source), and the status of both
//! objects; on deletion, the content's deletion policy.

use std::sync::Arc;
use std::time::Duration;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::{CreateSnapshotRequest, DeleteSnapshotRequest};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tonic::Request;

use crate::error::{Error, Result};
use crate::provisioner::snapshot_resource;
use crate::quantity::format_bytes;
use crate::snapshots::{self, content_status, pick_class, SnapshotAction, Take, FINALIZER};
use crate::DRIVER;

pub struct SnapshotContext<C> {
    pub client: kube::Client,
    pub csi: Arc<C>,
    pub node: String,
    pub leading: watch::Receiver<bool>,
    pub claims: Store<PersistentVolumeClaim>,
    pub volumes: Store<PersistentVolume>,
    pub classes: Store<DynamicObject>,
    pub recorder: Recorder,
}

impl<C> SnapshotContext<C> {
    fn snapshots(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            namespace,
            &snapshot_resource("VolumeSnapshot"),
        )
    }

    fn contents(&self) -> Api<DynamicObject> {
        Api::all_with(
            self.client.clone(),
            &snapshot_resource("VolumeSnapshotContent"),
        )
    }
}

pub async fn reconcile_snapshot<C: Controller>(
    snapshot: Arc<DynamicObject>,
    ctx: Arc<SnapshotContext<C>>,
) -> Result<Action> {
    let namespace = snapshot.namespace().unwrap_or_default();
    let claim = snapshots::snapshot_spec(&snapshot)
        .source
        .persistent_volume_claim_name
        .and_then(|name| ctx.claims.get(&ObjectRef::new(&name).within(&namespace)));
    let volume = claim
        .as_ref()
        .and_then(|c| c.spec.as_ref()?.volume_name.clone())
        .and_then(|name| ctx.volumes.get(&ObjectRef::new(&name)));
    let classes: Vec<DynamicObject> = ctx.classes.state().iter().map(|c| (**c).clone()).collect();
    let class = pick_class(&snapshot, &classes);
    let leading = *ctx.leading.borrow();
    // A snapshot being deleted whose source is gone: its content's handle tells whose it
    // is (the node a local snapshot names; the leader for an NFS one). Read only then, and
    // once: deleting uses the same object.
    let source_gone = volume.is_none() && snapshot.metadata.deletion_timestamp.is_some();
    let content_name = snapshots::snapshot_status(&snapshot).bound_volume_snapshot_content_name;
    let content = match &content_name {
        Some(name) if source_gone => ctx.contents().get_opt(name).await?,
        _ => None,
    };
    let content_handle = content.as_ref().and_then(snapshots::owner_handle);
    match snapshots::decide_as(
        &snapshot,
        class,
        claim.as_deref(),
        volume.as_deref(),
        &ctx.node,
        leading,
        content_handle.as_deref(),
    ) {
        SnapshotAction::Nothing(_) => Ok(Action::requeue(Duration::from_secs(60))),
        SnapshotAction::Refuse(why) => {
            record(&ctx, &snapshot, EventType::Warning, "SnapshotFailed", &why).await;
            Ok(Action::requeue(Duration::from_secs(120)))
        }
        SnapshotAction::Take(take) => {
            self::take(&ctx, &snapshot, &take).await?;
            Ok(Action::requeue(Duration::from_secs(60)))
        }
        SnapshotAction::Delete { content: name } => {
            let content = match name {
                _ if source_gone => content,
                Some(name) => ctx.contents().get_opt(&name).await?,
                None => None,
            };
            delete(&ctx, &snapshot, content).await?;
            Ok(Action::await_change())
        }
    }
}

async fn take<C: Controller>(
    ctx: &SnapshotContext<C>,
    snapshot: &DynamicObject,
    take: &Take,
) -> Result<()> {
    let namespace = snapshot.namespace().unwrap_or_default();
    let name = snapshot.name_any();
    let snapshots = ctx.snapshots(&namespace);
    // 1. Our finalizer first, so a deletion from here on comes through us.
    let mut finalizers = snapshot.finalizers().to_vec();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        finalizers.push(FINALIZER.into());
        snapshots
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"resourceVersion": snapshot.resource_version(), "finalizers": finalizers}})),
            )
            .await?;
    }
    // 2. The content object, under the snapshot-controller's name for it.
    let contents = ctx.contents();
    let content: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshotContent",
        "metadata": {"name": take.content_name},
        "spec": {
            "deletionPolicy": take.deletion_policy,
            "driver": DRIVER,
            "source": {"volumeHandle": take.source_handle},
            "volumeSnapshotClassName": take.class_name,
            "volumeSnapshotRef": {
                "apiVersion": "snapshot.storage.k8s.io/v1",
                "kind": "VolumeSnapshot",
                "name": name,
                "namespace": namespace,
                "uid": snapshot.uid(),
            },
        },
    }))
    .map_err(|e| Error::Invalid(format!("content object: {e}")))?;
    match contents.create(&PostParams::default(), &content).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    // 3. The snapshot itself (idempotent by name).
    let taken = ctx
        .csi
        .create_snapshot(Request::new(CreateSnapshotRequest {
            source_volume_id: take.source_handle.clone(),
            name: take.snapshot_name.clone(),
            parameters: take.parameters.clone().into_iter().collect(),
            ..Default::default()
        }))
        .await;
    let taken = match taken {
        Ok(r) => r
            .into_inner()
            .snapshot
            .ok_or_else(|| Error::Invalid("CreateSnapshot answered without a snapshot".into()))?,
        Err(status) => {
            record(
                ctx,
                snapshot,
                EventType::Warning,
                "SnapshotFailed",
                &format!("CreateSnapshot: {}", status.message()),
            )
            .await;
            return Err(Error::csi("CreateSnapshot")(status));
        }
    };
    let (seconds, nanos) = taken
        .creation_time
        .map(|t| (t.seconds, t.nanos))
        .unwrap_or_default();
    let created = k8s_openapi::jiff::Timestamp::new(seconds, nanos)
        .map(|t| t.to_string())
        .unwrap_or_default();
    // 4. Both statuses: the content's first, as the snapshot points at it.
    contents
        .patch_status(
            &take.content_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "snapshotHandle": taken.snapshot_id,
                "creationTime": seconds as i128 * 1_000_000_000 + nanos as i128,
                "readyToUse": taken.ready_to_use,
                "restoreSize": taken.size_bytes,
            }})),
        )
        .await?;
    snapshots
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "boundVolumeSnapshotContentName": take.content_name,
                "creationTime": created,
                "readyToUse": taken.ready_to_use,
                "restoreSize": format_bytes(taken.size_bytes as u64),
            }})),
        )
        .await?;
    tracing::info!(snapshot = %taken.snapshot_id, source = %take.source_handle, "snapshot taken");
    record(
        ctx,
        snapshot,
        EventType::Normal,
        "SnapshotReady",
        &format!("snapshot {} is ready", taken.snapshot_id),
    )
    .await;
    Ok(())
}

/// Applies the bound content's deletion policy (the content as read, if there is one),
/// then drops Warren's finalizer.
async fn delete<C: Controller>(
    ctx: &SnapshotContext<C>,
    snapshot: &DynamicObject,
    content: Option<DynamicObject>,
) -> Result<()> {
    if let Some(content) = content {
        let policy = content.data["spec"]["deletionPolicy"]
            .as_str()
            .unwrap_or("Delete");
        if policy == "Delete" {
            let handle = match content_status(&content).snapshot_handle {
                Some(handle) => Some(handle),
                // A crash between taking the snapshot and recording its handle: asking
                // again under the same name answers with the one taken (or takes it),
                // so nothing is left behind either way.
                None => match content.data["spec"]["source"]["volumeHandle"].as_str() {
                    Some(source) => ctx
                        .csi
                        .create_snapshot(Request::new(CreateSnapshotRequest {
                            source_volume_id: source.into(),
                            name: format!("snapshot-{}", snapshot.uid().unwrap_or_default()),
                            ..Default::default()
                        }))
                        .await
                        .ok()
                        .and_then(|r| r.into_inner().snapshot)
                        .map(|s| s.snapshot_id),
                    None => None,
                },
            };
            if let Some(handle) = handle {
                ctx.csi
                    .delete_snapshot(Request::new(DeleteSnapshotRequest {
                        snapshot_id: handle,
                        ..Default::default()
                    }))
                    .await
                    .map_err(Error::csi("DeleteSnapshot"))?;
            }
            match ctx
                .contents()
                .delete(&content.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let kept: Vec<String> = snapshot
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    let snapshots = ctx.snapshots(&snapshot.namespace().unwrap_or_default());
    match snapshots
        .patch(
            &snapshot.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": snapshot.resource_version(), "finalizers": kept}})),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn record<C>(
    ctx: &SnapshotContext<C>,
    snapshot: &DynamicObject,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let resource: ApiResource = snapshot_resource("VolumeSnapshot");
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Snapshot".into(),
        secondary: None,
    };
    if let Err(e) = ctx
        .recorder
        .publish(&event, &snapshot.object_ref(&resource))
        .await
    {
        tracing::debug!(error = %e, "could not record an event");
    }
}

#[cfg(test)]
mod tests;
