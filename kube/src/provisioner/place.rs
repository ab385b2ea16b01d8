//! The leader's one decision for local volumes: which node an Immediate-binding claim
//! goes to.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::ResourceExt;
use serde_json::json;

use super::{event, Context};
use crate::claims;
use crate::error::{Error, Result};
use crate::TOPOLOGY_KEY;

/// The leader places an Immediate-binding claim: the Warren node with the fewest Warren
/// volumes among `allowed_nodes` (None: any node). Written with the claim's
/// resourceVersion, so a claim is never placed twice.
pub(super) async fn place<C>(
    ctx: &Context<C>,
    claim: &PersistentVolumeClaim,
    allowed_nodes: Option<&[String]>,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let candidates = nodes
        .list_metadata(&ListParams::default().labels(TOPOLOGY_KEY))
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.labels?.get(TOPOLOGY_KEY).cloned())
        .filter(|n| allowed_nodes.is_none_or(|a| a.contains(n)));
    let Some(node) = least_loaded(candidates, &ctx.volumes.state()) else {
        let why = "no node runs Warren (no node has the label topology.warren.csi.dev/node) within the class's allowedTopologies";
        event(
            ctx,
            claim,
            EventType::Warning,
            "ProvisioningFailed",
            "Place",
            why,
        )
        .await;
        return Err(Error::Invalid(why.into()));
    };
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &claim.namespace().unwrap_or_default());
    let patch = json!({"metadata": {
        "resourceVersion": claim.resource_version(),
        "annotations": {claims::PLACED_ON: node},
    }});
    match claims
        .patch(
            &claim.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(%node, "placed the claim");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()), // changed meanwhile: look again
        Err(e) => Err(e.into()),
    }
}

/// The candidate holding the fewest of `volumes`, the first by name among equals; None
/// when there is no candidate.
fn least_loaded(
    candidates: impl IntoIterator<Item = String>,
    volumes: &[Arc<PersistentVolume>],
) -> Option<String> {
    let load = |node: &str| {
        volumes
            .iter()
            .filter(|v| claims::volume_node(v).as_deref() == Some(node))
            .count()
    };
    candidates
        .into_iter()
        .min_by(|a, b| (load(a), a).cmp(&(load(b), b)))
}
