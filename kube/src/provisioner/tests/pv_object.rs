//! The PV object, CreateVolume's parameters and capabilities, on plain objects.

use std::collections::HashMap;

use csi_proto::v1::volume_capability::access_mode;
use csi_proto::v1::Topology;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::json;

use crate::claims::{self, decide, ClaimAction, Provision, SELECTED_NODE};
use crate::provisioner::capabilities;
use crate::provisioner::provision::create_parameters;
use crate::provisioner::pv_object::{node_affinity, volume_object};
use crate::test_support::fixtures::{
    claim, class, nfs_class, share_class, NFS_HANDLE, SHARE_HANDLE,
};
use crate::volumes::FINALIZER;
use crate::{DRIVER, TOPOLOGY_KEY};

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
        serde_json::to_value(pv.spec.as_ref().unwrap().node_affinity.as_ref().unwrap()).unwrap(),
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
    assert_eq!(p.requisite_nodes, vec!["n2".to_string()]);
    assert_eq!(p.preferred_node.as_deref(), Some("n2"));
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
