//! The leader's one decision for local volumes: which node an Immediate-binding claim
//! goes to.

use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::ResourceExt;
use serde_json::json;

use super::{event, Context};
use crate::claims;
use crate::error::{Error, Result};
use crate::TOPOLOGY_KEY;

/// The leader places an Immediate-binding claim: the Warren node with the fewest Warren
/// volumes among those the class allows. Written with the claim's resourceVersion, so a
/// claim is never placed twice.
pub(super) async fn place<C>(
    ctx: &Context<C>,
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let allowed = allowed_nodes(class);
    let mut candidates: Vec<String> = nodes
        .list_metadata(&ListParams::default().labels(TOPOLOGY_KEY))
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.labels?.get(TOPOLOGY_KEY).cloned())
        .filter(|n| allowed.as_ref().is_none_or(|a| a.contains(n)))
        .collect();
    if candidates.is_empty() {
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
    }
    let load = |node: &String| {
        ctx.volumes
            .state()
            .iter()
            .filter(|v| claims::volume_node(v).as_deref() == Some(node.as_str()))
            .count()
    };
    candidates.sort_by_key(|n| (load(n), n.clone()));
    let node = &candidates[0];
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

/// Node names a class's allowedTopologies permit (None: any).
fn allowed_nodes(class: &StorageClass) -> Option<Vec<String>> {
    let terms = class.allowed_topologies.as_ref()?;
    let mut nodes = Vec::new();
    for term in terms {
        for e in term.match_label_expressions.iter().flatten() {
            if e.key == TOPOLOGY_KEY {
                nodes.extend(e.values.iter().cloned());
            }
        }
    }
    Some(nodes)
}
