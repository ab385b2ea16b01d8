//! Carries out what `claims::decide` says, through Warren's own CSI Controller service:
//! the sidecar-free provisioner and resizer of the edge mode.
//!
//! Every step is idempotent, so a crash (or two reconciles racing) at any point is
//! finished by the next reconcile: CreateVolume is idempotent by name (`pvc-<uid>`), the
//! PV is created under that same name (409 = already done), and a resize records
//! `ControllerResizeInProgress` on the claim before it grows anything.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::volume_capability::{
    access_mode, AccessMode, AccessType, BlockVolume, MountVolume,
};
use csi_proto::v1::volume_content_source::{self, SnapshotSource, VolumeSource};
use csi_proto::v1::{
    CapacityRange, ControllerExpandVolumeRequest, CreateVolumeRequest, Topology,
    TopologyRequirement, VolumeCapability, VolumeContentSource,
};
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
    VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tonic::{Code, Request};

use crate::claims::{self, ClaimAction, Provision, Source, CONTROLLER_RESIZE_IN_PROGRESS};
use crate::error::{Error, Result};
use crate::quantity::format_bytes;
use crate::volumes::FINALIZER;
use crate::{DRIVER, TOPOLOGY_KEY};
use warren_core::ids;

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
        Some(s) => Some(resolve_source(&ctx, &claim.namespace().unwrap_or_default(), &s).await),
        None => None,
    };
    let source_node = match &source {
        Some(Ok(resolved)) => node_of(resolved),
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
    let span = tracing::info_span!("claim", claim = %format!("{}/{}", claim.namespace().unwrap_or_default(), claim.name_any()));
    let _guard = span.enter();
    match action {
        ClaimAction::Nothing(why) => {
            tracing::trace!(why, "nothing to do");
            Ok(Action::requeue(RESYNC))
        }
        ClaimAction::Place => {
            place(&ctx, &claim, class.as_deref().expect("decide saw a class")).await?;
            Ok(Action::requeue(RESYNC))
        }
        ClaimAction::Provision(p) => {
            provision(&ctx, &claim, &p, source).await?;
            Ok(Action::requeue(RESYNC))
        }
        ClaimAction::Expand {
            volume_handle,
            pv_name,
            bytes,
            block,
        } => {
            expand(&ctx, &claim, &volume_handle, &pv_name, bytes, block).await?;
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

/// The leader places an Immediate-binding claim: the Warren node with the fewest Warren
/// volumes among those the class allows. Written with the claim's resourceVersion, so a
/// claim is never placed twice.
async fn place<C>(
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

/// `source`: the claim's data source as `reconcile_claim` resolved it.
async fn provision<C: Controller>(
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
    // This node for a local volume; for an NFS one the scheduler's choice, or nothing.
    let accessibility_requirements = p.requisite_node.as_ref().map(|node| {
        let topology = Topology {
            segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node.clone())]),
        };
        TopologyRequirement {
            requisite: vec![topology.clone()],
            preferred: vec![topology],
        }
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
fn create_parameters(claim: &PersistentVolumeClaim, p: &Provision) -> HashMap<String, String> {
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

/// One capability per access mode, as external-provisioner sends them.
pub(crate) fn capabilities(
    modes: &[String],
    block: bool,
    fs_type: &str,
    mount_flags: &[String],
) -> Vec<VolumeCapability> {
    let modes: Vec<access_mode::Mode> = if modes.is_empty() {
        vec![access_mode::Mode::SingleNodeWriter]
    } else {
        modes.iter().map(|m| csi_access_mode(m)).collect()
    };
    modes
        .into_iter()
        .map(|mode| VolumeCapability {
            access_type: Some(if block {
                AccessType::Block(BlockVolume {})
            } else {
                AccessType::Mount(MountVolume {
                    fs_type: fs_type.to_string(),
                    mount_flags: mount_flags.to_vec(),
                    volume_mount_group: String::new(),
                })
            }),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        })
        .collect()
}

fn csi_access_mode(mode: &str) -> access_mode::Mode {
    match mode {
        "ReadWriteOnce" => access_mode::Mode::SingleNodeWriter,
        "ReadWriteOncePod" => access_mode::Mode::SingleNodeSingleWriter,
        "ReadOnlyMany" => access_mode::Mode::MultiNodeReaderOnly,
        "ReadWriteMany" => access_mode::Mode::MultiNodeMultiWriter,
        _ => access_mode::Mode::Unknown,
    }
}

/// The PV of a volume just created: pre-bound to its claim, with the node affinity
/// CreateVolume's `accessible_topology` gives (see `node_affinity`): a local volume is
/// pinned to its node; an NFS volume or a shared one (`backend: share`), which every node
/// reaches, gets none.
#[allow(clippy::too_many_arguments)]
fn volume_object(
    claim: &PersistentVolumeClaim,
    p: &Provision,
    volume_id: &str,
    bytes: u64,
    fs_type: &str,
    context: &HashMap<String, String>,
    topology: &[Topology],
) -> PersistentVolume {
    let spec = claim.spec.as_ref();
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(p.name.clone()),
            annotations: Some(BTreeMap::from([(
                claims::PROVISIONED_BY.to_string(),
                DRIVER.to_string(),
            )])),
            finalizers: (p.reclaim_policy == "Delete").then(|| vec![FINALIZER.to_string()]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: spec.and_then(|s| s.access_modes.clone()),
            capacity: Some(BTreeMap::from([(
                "storage".to_string(),
                Quantity(format_bytes(bytes)),
            )])),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: claim.namespace(),
                name: Some(claim.name_any()),
                uid: claim.uid(),
                ..Default::default()
            }),
            csi: Some(CSIPersistentVolumeSource {
                driver: DRIVER.into(),
                volume_handle: volume_id.into(),
                fs_type: (!p.block && !fs_type.is_empty()).then(|| fs_type.to_string()),
                volume_attributes: (!context.is_empty()).then(|| {
                    context
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                }),
                ..Default::default()
            }),
            mount_options: (!p.mount_options.is_empty()).then(|| p.mount_options.clone()),
            node_affinity: node_affinity(topology),
            persistent_volume_reclaim_policy: Some(p.reclaim_policy.clone()),
            storage_class_name: Some(p.storage_class.clone()),
            volume_mode: Some(if p.block { "Block" } else { "Filesystem" }.into()),
            ..Default::default()
        }),
        status: None,
    }
}

/// A PV's node affinity from CreateVolume's `accessible_topology`, as external-provisioner
/// builds it: one term per topology (the terms are ORed), one `In` requirement per segment
/// (ANDed, sorted by key so the object is the same every time); no topology, no affinity.
fn node_affinity(topology: &[Topology]) -> Option<VolumeNodeAffinity> {
    let terms: Vec<NodeSelectorTerm> = topology
        .iter()
        .filter(|t| !t.segments.is_empty())
        .map(|t| {
            let mut segments: Vec<(&String, &String)> = t.segments.iter().collect();
            segments.sort();
            NodeSelectorTerm {
                match_expressions: Some(
                    segments
                        .into_iter()
                        .map(|(key, value)| NodeSelectorRequirement {
                            key: key.clone(),
                            operator: "In".into(),
                            values: Some(vec![value.clone()]),
                        })
                        .collect(),
                ),
                ..Default::default()
            }
        })
        .collect();
    (!terms.is_empty()).then_some(VolumeNodeAffinity {
        required: Some(NodeSelector {
            node_selector_terms: terms,
        }),
    })
}

/// The node holding a resolved data source (a snapshot or a volume), from its CSI id.
fn node_of(source: &VolumeContentSource) -> Option<String> {
    match source.r#type.as_ref()? {
        volume_content_source::Type::Volume(v) => ids::local_volume_node(&v.volume_id),
        volume_content_source::Type::Snapshot(s) => ids::local_snapshot_node(&s.snapshot_id),
    }
}

async fn provisioning_failed<C>(ctx: &Context<C>, claim: &PersistentVolumeClaim, message: &str) {
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

/// The CSI source of a clone (the source claim's volume) or restore (the snapshot's
/// handle). Both must already be complete.
async fn resolve_source<C>(
    ctx: &Context<C>,
    namespace: &str,
    source: &Source,
) -> Result<VolumeContentSource> {
    let source = match source {
        Source::Claim(name) => {
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
            let volume_name = claims
                .get_opt(name)
                .await?
                .and_then(|c| c.spec?.volume_name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Error::Invalid(format!("source claim {name} is not bound yet")))?;
            let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
            let handle = pvs
                .get(&volume_name)
                .await?
                .spec
                .and_then(|s| s.csi)
                .filter(|c| c.driver == DRIVER)
                .map(|c| c.volume_handle)
                .ok_or_else(|| {
                    Error::Invalid(format!("source claim {name} is not a Warren volume"))
                })?;
            volume_content_source::Type::Volume(VolumeSource { volume_id: handle })
        }
        Source::Snapshot(name) => {
            let snapshots: Api<DynamicObject> = Api::namespaced_with(
                ctx.client.clone(),
                namespace,
                &snapshot_resource("VolumeSnapshot"),
            );
            let snapshot = snapshots.get(name).await?;
            let content_name = snapshot.data["status"]["boundVolumeSnapshotContentName"]
                .as_str()
                .ok_or_else(|| {
                    Error::Invalid(format!("snapshot {name} is not bound to a content yet"))
                })?
                .to_string();
            let contents: Api<DynamicObject> = Api::all_with(
                ctx.client.clone(),
                &snapshot_resource("VolumeSnapshotContent"),
            );
            let content = contents.get(&content_name).await?;
            let status = &content.data["status"];
            if status["readyToUse"].as_bool() != Some(true) {
                return Err(Error::Invalid(format!(
                    "snapshot {name} is not ready to use yet"
                )));
            }
            let handle = status["snapshotHandle"]
                .as_str()
                .ok_or_else(|| Error::Invalid(format!("snapshot {name} has no handle")))?;
            volume_content_source::Type::Snapshot(SnapshotSource {
                snapshot_id: handle.into(),
            })
        }
    };
    Ok(VolumeContentSource {
        r#type: Some(source),
    })
}

pub fn snapshot_resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "snapshot.storage.k8s.io",
        "v1",
        kind,
    ))
}

/// Grows the volume and records it the way external-resizer does, so the kubelet then
/// grows the file system (NodeExpandVolume) while the pod runs.
async fn expand<C: Controller>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::tests::{claim, class, nfs_class, share_class, NFS_HANDLE, SHARE_HANDLE};
    use crate::claims::{decide, SELECTED_NODE};

    fn provision_of(class: &StorageClass, claim: &PersistentVolumeClaim, me: &str) -> Provision {
        match decide(claim, Some(class), None, me, true, None) {
            ClaimAction::Provision(p) => p,
            other => panic!("expected a Provision, got {other:?}"),
        }
    }

    #[test]
    fn an_nfs_volumes_pv_has_no_node_affinity_and_the_rest_as_for_local() {
        let sc = nfs_class("WaitForFirstConsumer", true);
        let mut sc = sc;
        sc.reclaim_policy = Some("Delete".into());
        let c = claim(
            json!({SELECTED_NODE: "n2"}),
            json!({"storageClassName": "warren-nfs", "accessModes": ["ReadWriteMany"]}),
        );
        let p = provision_of(&sc, &c, "n1");
        let pv = volume_object(&c, &p, NFS_HANDLE, 1 << 30, "", &HashMap::new(), &[]);
        let spec = pv.spec.as_ref().unwrap();
        assert_eq!(spec.node_affinity, None);
        assert_eq!(pv.metadata.name.as_deref(), Some("pvc-1234"));
        assert_eq!(
            pv.metadata.finalizers,
            Some(vec![FINALIZER.to_string()]),
            "reclaim Delete: Warren's finalizer"
        );
        assert_eq!(
            pv.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(claims::PROVISIONED_BY))
                .map(String::as_str),
            Some(DRIVER)
        );
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );
        assert_eq!(spec.mount_options, Some(vec!["hard".to_string()]));
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteMany".to_string()]));
        assert_eq!(spec.storage_class_name.as_deref(), Some("warren-nfs"));
        assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));
        let claim_ref = spec.claim_ref.as_ref().unwrap();
        assert_eq!(claim_ref.name.as_deref(), Some("data"));
        assert_eq!(claim_ref.namespace.as_deref(), Some("default"));
        assert_eq!(claim_ref.uid.as_deref(), Some("1234"));
        let csi = spec.csi.as_ref().unwrap();
        assert_eq!(csi.driver, DRIVER);
        assert_eq!(csi.volume_handle, NFS_HANDLE);
        assert_eq!(
            spec.capacity.as_ref().unwrap().get("storage"),
            Some(&Quantity("1Gi".into()))
        );
        // An NFS class under Retain: no finalizer, as for local volumes.
        let kept = nfs_class("Immediate", true);
        let p = provision_of(&kept, &c, "n1");
        let pv = volume_object(&c, &p, NFS_HANDLE, 1 << 30, "", &HashMap::new(), &[]);
        assert_eq!(pv.metadata.finalizers, None);
        assert_eq!(
            pv.spec.unwrap().persistent_volume_reclaim_policy.as_deref(),
            Some("Retain")
        );
    }

    #[test]
    fn createvolume_gets_the_claims_and_pvs_names_for_subdir() {
        let sc = nfs_class("Immediate", true);
        let c = claim(json!({}), json!({"storageClassName": "warren-nfs"}));
        let p = provision_of(&sc, &c, "n1");
        let parameters = create_parameters(&c, &p);
        let get = |k: &str| parameters.get(k).map(String::as_str);
        assert_eq!(get("csi.storage.k8s.io/pvc/name"), Some("data"));
        assert_eq!(get("csi.storage.k8s.io/pvc/namespace"), Some("default"));
        assert_eq!(get("csi.storage.k8s.io/pv/name"), Some("pvc-1234"));
        assert_eq!(get("backend"), Some("nfs"));
        assert_eq!(get("server"), Some("10.0.0.5"));
        assert_eq!(
            get("subDir"),
            Some("${pvc.metadata.namespace}/${pvc.metadata.name}")
        );
    }

    #[test]
    fn a_local_volumes_pv_is_pinned_to_its_node() {
        let sc = class("WaitForFirstConsumer", true);
        let c = claim(json!({SELECTED_NODE: "n1"}), json!({}));
        let p = provision_of(&sc, &c, "n1");
        let handle = "local#image#n1#0123456789abcdef0123456789abcdef";
        let pv = volume_object(
            &c,
            &p,
            handle,
            1 << 30,
            "ext4",
            &HashMap::new(),
            &[node_topology("n1")],
        );
        assert_eq!(claims::volume_node(&pv).as_deref(), Some("n1"));
        // Exactly the affinity local PVs have always had.
        assert_eq!(
            serde_json::to_value(pv.spec.as_ref().unwrap().node_affinity.as_ref().unwrap())
                .unwrap(),
            json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": TOPOLOGY_KEY, "operator": "In", "values": ["n1"]}]}]}})
        );
        assert_eq!(
            pv.spec.unwrap().csi.unwrap().fs_type.as_deref(),
            Some("ext4")
        );
    }

    fn node_topology(node: &str) -> Topology {
        Topology {
            segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node.to_string())]),
        }
    }

    #[test]
    fn a_shared_volumes_pv_has_no_node_affinity_but_stays_its_nodes() {
        let mut sc = share_class("WaitForFirstConsumer");
        sc.reclaim_policy = Some("Delete".into());
        let c = claim(
            json!({SELECTED_NODE: "n2"}),
            json!({"storageClassName": "warren-share", "accessModes": ["ReadWriteMany"]}),
        );
        // The scheduler's node provisions it, and asks for its own topology, as for a
        // local volume.
        let p = provision_of(&sc, &c, "n2");
        assert_eq!(p.requisite_node.as_deref(), Some("n2"));
        assert!(!p.nfs && p.scheduled);
        // CreateVolume answers with no accessible topology and the share's endpoint.
        let context = HashMap::from([(
            "warren.csi.dev/share".to_string(),
            "10.0.0.2:7463".to_string(),
        )]);
        let pv = volume_object(&c, &p, SHARE_HANDLE, 1 << 30, "xfs", &context, &[]);
        let spec = pv.spec.as_ref().unwrap();
        assert_eq!(spec.node_affinity, None, "pods on every node may use it");
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteMany".to_string()]));
        let csi = spec.csi.as_ref().unwrap();
        assert_eq!(csi.volume_handle, SHARE_HANDLE);
        assert_eq!(csi.fs_type.as_deref(), Some("xfs"));
        assert_eq!(
            csi.volume_attributes
                .as_ref()
                .and_then(|a| a.get("warren.csi.dev/share"))
                .map(String::as_str),
            Some("10.0.0.2:7463")
        );
        assert_eq!(pv.metadata.finalizers, Some(vec![FINALIZER.to_string()]));
        // Its node is still known (from the handle): n2 grows, deletes, snapshots it.
        assert_eq!(claims::volume_node(&pv).as_deref(), Some("n2"));
        assert!(claims::acts_on(&pv, "n2", false));
        assert!(!claims::acts_on(&pv, "n1", true));
    }

    #[test]
    fn node_affinity_follows_the_accessible_topology() {
        assert_eq!(node_affinity(&[]), None);
        assert_eq!(
            node_affinity(&[Topology {
                segments: HashMap::new()
            }]),
            None
        );
        // Segments of one topology are ANDed (sorted by key), topologies ORed.
        let zoned = Topology {
            segments: HashMap::from([
                (TOPOLOGY_KEY.to_string(), "n1".to_string()),
                ("topology.kubernetes.io/zone".to_string(), "a".to_string()),
            ]),
        };
        let affinity = node_affinity(&[zoned, node_topology("n2")]).unwrap();
        assert_eq!(
            serde_json::to_value(&affinity).unwrap(),
            json!({"required": {"nodeSelectorTerms": [
                {"matchExpressions": [
                    {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]},
                    {"key": TOPOLOGY_KEY, "operator": "In", "values": ["n1"]}]},
                {"matchExpressions": [
                    {"key": TOPOLOGY_KEY, "operator": "In", "values": ["n2"]}]}]}})
        );
    }

    #[test]
    fn access_modes_become_csi_modes() {
        let modes: Vec<String> = [
            "ReadWriteOnce",
            "ReadWriteOncePod",
            "ReadOnlyMany",
            "ReadWriteMany",
        ]
        .map(String::from)
        .to_vec();
        let caps = capabilities(&modes, false, "", &[]);
        let got: Vec<i32> = caps
            .iter()
            .map(|c| c.access_mode.as_ref().unwrap().mode)
            .collect();
        assert_eq!(
            got,
            vec![
                access_mode::Mode::SingleNodeWriter as i32,
                access_mode::Mode::SingleNodeSingleWriter as i32,
                access_mode::Mode::MultiNodeReaderOnly as i32,
                access_mode::Mode::MultiNodeMultiWriter as i32,
            ]
        );
    }
}
