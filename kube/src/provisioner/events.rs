//! Events on the objects the reconcilers act for (`kubectl describe` shows them).

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::runtime::events::{Event, EventType};
use kube::Resource;

use super::Context;

/// Best-effort: an event that cannot be written is logged, never fatal.
pub async fn event<C, K>(
    ctx: &Context<C>,
    object: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) where
    K: Resource<DynamicType = ()>,
{
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::debug!(error = %e, "could not record an event");
    }
}

pub(super) async fn provisioning_failed<C>(
    ctx: &Context<C>,
    claim: &PersistentVolumeClaim,
    message: &str,
) {
    event(
        ctx,
        claim,
        EventType::Warning,
        "ProvisioningFailed",
        "Provision",
        message,
    )
    .await;
}
