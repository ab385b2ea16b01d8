//! The PersistentVolume object of a volume just created.

use std::collections::{BTreeMap, HashMap};

use csi_proto::v1::Topology;
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
    VolumeNodeAffinity,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use crate::claims::{self, Provision};
use crate::quantity::format_bytes;
use crate::volumes::FINALIZER;
use crate::DRIVER;

/// The PV of a volume just created: pre-bound to its claim, with the node affinity
/// CreateVolume's `accessible_topology` gives (see `node_affinity`): a local volume is
/// pinned to its node; an NFS volume or a shared one (`backend: share`), which every node
/// reaches, gets none.
#[allow(clippy::too_many_arguments)]
pub(super) fn volume_object(
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
pub(super) fn node_affinity(topology: &[Topology]) -> Option<VolumeNodeAffinity> {
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
