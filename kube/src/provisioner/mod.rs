//! Carries out what `claims::decide` says, through Warren's own CSI Controller service:
//! the sidecar-free provisioner and resizer of the edge mode.
//!
//! Every step is idempotent, so a crash (or two reconciles racing) at any point is
//! finished by the next reconcile: CreateVolume is idempotent by name (`pvc-<uid>`), the
//! PV is created under that same name (409 = already done), and a resize records
//! `ControllerResizeInProgress` on the claim before it grows anything.
//!
//! Here: the reconcile entry, which asks `decide` and hands the answer on. One step a
//! file: `place` (the leader picks a node for an Immediate claim), `provision`
//! (CreateVolume and the PV), `source` (a clone's or restore's CSI source), `pv_object`
//! (the PV built), `expand` (the resizer), `capabilities`, `events`.

mod capabilities;
mod events;
mod expand;
mod place;
mod provision;
mod pv_object;
mod source;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use csi_proto::v1::controller_server::Controller;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;
use tokio::sync::watch;
use tracing::Instrument;

use crate::claims::{self, ClaimAction};
use crate::error::Result;

pub(crate) use capabilities::capabilities;
pub use events::event;
pub use source::snapshot_resource;

/// What the claim and volume reconcilers share.
pub struct Context<C> {
    pub client: kube::Client,
    pub csi: Arc<C>,
    pub node: String,
    pub leading: watch::Receiver<bool>,
    pub classes: Store<StorageClass>,
    pub volumes: Store<PersistentVolume>,
    pub recorder: Recorder,
}

/// How often a claim is looked at again even when nothing about it changed (a leader
/// change, say, is not an event on the claim).
const RESYNC: Duration = Duration::from_secs(60);

pub async fn reconcile_claim<C: Controller>(
    claim: Arc<PersistentVolumeClaim>,
    ctx: Arc<Context<C>>,
) -> Result<Action> {
    let span = tracing::info_span!("claim", claim = %format!("{}/{}", claim.namespace().unwrap_or_default(), claim.name_any()));
    reconcile(claim, ctx).instrument(span).await
}

async fn reconcile<C: Controller>(
    claim: Arc<PersistentVolumeClaim>,
    ctx: Arc<Context<C>>,
) -> Result<Action> {
    let class = claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .and_then(|name| ctx.classes.get(&ObjectRef::new(name)));
    let volume = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|v| !v.is_empty())
        .and_then(|name| ctx.volumes.get(&ObjectRef::new(name)));
    let leading = *ctx.leading.borrow();
    // Resolved once: `decide` needs the source's node, provisioning its CSI id.
    let source = match claims::source_to_locate(&claim, class.as_deref()) {
        Some(s) => {
            Some(source::resolve_source(&ctx, &claim.namespace().unwrap_or_default(), &s).await)
        }
        None => None,
    };
    let source_node = match &source {
        Some(Ok(resolved)) => source::node_of(resolved),
        Some(Err(e)) => {
            // Not ready (a snapshot still being cut, a source claim not bound): decide as
            // if there were no source; provisioning then reports why it cannot go on.
            tracing::debug!(error = %e, "data source not resolved yet");
            None
        }
        None => None,
    };
    let action = claims::decide(
        &claim,
        class.as_deref(),
        volume.as_deref(),
        &ctx.node,
        leading,
        source_node.as_deref(),
    );
    match action {
        ClaimAction::Nothing(why) => {
            tracing::trace!(why, "nothing to do");
            Ok(Action::requeue(RESYNC))
        }
        ClaimAction::Place { allowed_nodes } => {
            place::place(&ctx, &claim, allowed_nodes.as_deref()).await?;
            Ok(Action::requeue(RESYNC))
        }
        ClaimAction::Provision(p) => {
            provision::provision(&ctx, &claim, &p, source).await?;
            Ok(Action::requeue(RESYNC))
        }
        ClaimAction::Expand {
            volume_handle,
            pv_name,
            bytes,
            block,
        } => {
            expand::expand(&ctx, &claim, &volume_handle, &pv_name, bytes, block).await?;
            Ok(Action::requeue(RESYNC))
        }
        ClaimAction::Refuse(why) => {
            tracing::warn!(%why, "refusing the claim");
            event(
                &ctx,
                &*claim,
                EventType::Warning,
                "ProvisioningFailed",
                "Provision",
                &why,
            )
            .await;
            Ok(Action::requeue(Duration::from_secs(300)))
        }
    }
}
