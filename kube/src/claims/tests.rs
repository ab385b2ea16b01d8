//! `decide` and the ownership helpers on plain objects.

use serde_json::json;

use super::*;
use crate::test_support::fixtures::*;

#[test]
fn wait_for_first_consumer_claims_go_where_the_scheduler_put_them() {
    let sc = class("WaitForFirstConsumer", true);
    let unscheduled = claim(json!({}), json!({}));
    assert_eq!(
        decide(&unscheduled, Some(&sc), None, "n1", true, None),
        ClaimAction::Nothing("waiting for a pod to be scheduled")
    );
    let on_n2 = claim(json!({SELECTED_NODE: "n2"}), json!({}));
    assert_eq!(
        decide(&on_n2, Some(&sc), None, "n1", true, None),
        ClaimAction::Nothing("placed on another node")
    );
    let ClaimAction::Provision(p) = decide(&on_n2, Some(&sc), None, "n2", false, None) else {
        panic!("n2 should provision");
    };
    assert_eq!(p.name, "pvc-1234");
    assert_eq!(p.bytes, 1 << 30);
    assert!(p.scheduled && !p.block);
    assert_eq!(p.reclaim_policy, "Delete");
    assert_eq!(p.mount_options, vec!["noatime".to_string()]);
    assert_eq!(
        p.parameters.get("layout").map(String::as_str),
        Some("image")
    );
}

#[test]
fn immediate_claims_are_placed_by_the_leader_only() {
    let sc = class("Immediate", true);
    let fresh = claim(json!({}), json!({}));
    assert_eq!(
        decide(&fresh, Some(&sc), None, "n1", true, None),
        ClaimAction::Place {
            allowed_nodes: None
        }
    );
    assert!(matches!(
        decide(&fresh, Some(&sc), None, "n1", false, None),
        ClaimAction::Nothing(_)
    ));
    // The class's allowedTopologies come with the decision: Warren's key only.
    let mut limited = sc.clone();
    limited.allowed_topologies = Some(
        serde_json::from_value(json!([
            {"matchLabelExpressions": [{"key": TOPOLOGY_KEY, "values": ["n1", "n3"]},
                {"key": "topology.kubernetes.io/zone", "values": ["a"]}]},
            {"matchLabelExpressions": [{"key": TOPOLOGY_KEY, "values": ["n4"]}]}]))
        .unwrap(),
    );
    assert_eq!(
        decide(&fresh, Some(&limited), None, "n1", true, None),
        ClaimAction::Place {
            allowed_nodes: Some(vec!["n1".into(), "n3".into(), "n4".into()])
        }
    );
    // The scheduler's annotation means nothing for Immediate binding.
    let placed = claim(json!({PLACED_ON: "n1", SELECTED_NODE: "n2"}), json!({}));
    assert!(matches!(
        decide(&placed, Some(&sc), None, "n1", false, None),
        ClaimAction::Provision(_)
    ));
    assert!(matches!(
        decide(&placed, Some(&sc), None, "n2", true, None),
        ClaimAction::Nothing(_)
    ));
}

#[test]
fn claims_of_other_provisioners_or_being_deleted_are_left_alone() {
    let mut other = class("Immediate", true);
    other.provisioner = "rancher.io/local-path".into();
    let c = claim(json!({PLACED_ON: "n1"}), json!({}));
    assert!(matches!(
        decide(&c, Some(&other), None, "n1", true, None),
        ClaimAction::Nothing(_)
    ));
    assert!(matches!(
        decide(&c, None, None, "n1", true, None),
        ClaimAction::Nothing(_)
    ));
    let mut deleting = c.clone();
    deleting.metadata.deletion_timestamp =
        Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
    let sc = class("Immediate", true);
    assert!(matches!(
        decide(&deleting, Some(&sc), None, "n1", true, None),
        ClaimAction::Nothing(_)
    ));
}

#[test]
fn a_restore_or_clone_is_made_on_its_sources_node_whatever_was_selected() {
    let sc = class("WaitForFirstConsumer", true);
    let restore = claim(
        json!({SELECTED_NODE: "n2"}),
        json!({"dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap1"}}),
    );
    // The snapshot is on n1: n1 provisions, the selected n2 leaves it alone.
    assert!(matches!(
        decide(&restore, Some(&sc), None, "n1", false, Some("n1")),
        ClaimAction::Provision(_)
    ));
    assert!(matches!(
        decide(&restore, Some(&sc), None, "n2", true, Some("n1")),
        ClaimAction::Nothing(_)
    ));
    assert_eq!(
        source_to_locate(&restore, Some(&sc)),
        Some(Source::Snapshot("snap1".into()))
    );
    // Still waits for a consumer first (and looks nothing up meanwhile).
    let unscheduled = claim(
        json!({}),
        json!({"dataSource": {"kind": "PersistentVolumeClaim", "name": "orig"}}),
    );
    assert!(matches!(
        decide(&unscheduled, Some(&sc), None, "n1", true, Some("n1")),
        ClaimAction::Nothing(_)
    ));
    assert_eq!(source_to_locate(&unscheduled, Some(&sc)), None);
    // Immediate binding: no placement by the leader; the source's node takes it.
    let now = class("Immediate", true);
    assert!(matches!(
        decide(&unscheduled, Some(&now), None, "n1", false, Some("n1")),
        ClaimAction::Provision(_)
    ));
    assert!(matches!(
        decide(&unscheduled, Some(&now), None, "n2", true, Some("n1")),
        ClaimAction::Nothing(_)
    ));
    assert_eq!(
        source_to_locate(&unscheduled, Some(&now)),
        Some(Source::Claim("orig".into()))
    );
}

#[test]
fn sources_block_mode_and_bad_requests() {
    let sc = class("Immediate", true);
    let from_snapshot = claim(
        json!({PLACED_ON: "n1"}),
        json!({"volumeMode": "Block", "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap1"}}),
    );
    let ClaimAction::Provision(p) = decide(&from_snapshot, Some(&sc), None, "n1", false, None)
    else {
        panic!()
    };
    assert_eq!(p.source, Some(Source::Snapshot("snap1".into())));
    assert!(p.block);
    let clone = claim(
        json!({PLACED_ON: "n1"}),
        json!({"dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "orig"}}),
    );
    let ClaimAction::Provision(p) = decide(&clone, Some(&sc), None, "n1", false, None) else {
        panic!()
    };
    assert_eq!(p.source, Some(Source::Claim("orig".into())));
    let foreign = claim(
        json!({PLACED_ON: "n1"}),
        json!({"dataSourceRef": {"apiGroup": "example.com", "kind": "Populator", "name": "x"}}),
    );
    assert!(matches!(
        decide(&foreign, Some(&sc), None, "n1", false, None),
        ClaimAction::Refuse(_)
    ));
    let elsewhere = claim(
        json!({PLACED_ON: "n1"}),
        json!({"dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "orig", "namespace": "other"}}),
    );
    assert!(matches!(
        decide(&elsewhere, Some(&sc), None, "n1", false, None),
        ClaimAction::Refuse(_)
    ));
    let garbage = claim(
        json!({PLACED_ON: "n1"}),
        json!({"resources": {"requests": {"storage": "lots"}}}),
    );
    assert!(matches!(
        decide(&garbage, Some(&sc), None, "n1", false, None),
        ClaimAction::Refuse(_)
    ));
    let none = claim(json!({PLACED_ON: "n1"}), json!({"resources": {}}));
    assert!(matches!(
        decide(&none, Some(&sc), None, "n1", false, None),
        ClaimAction::Refuse(_)
    ));
}

#[test]
fn bound_claims_grow_on_the_node_that_holds_them() {
    let sc = class("WaitForFirstConsumer", true);
    let bigger = claim(
        json!({}),
        json!({"volumeName": "pvc-1234", "resources": {"requests": {"storage": "2Gi"}}}),
    );
    let pv = volume("n1", "1Gi");
    assert_eq!(
        decide(&bigger, Some(&sc), Some(&pv), "n1", false, None),
        ClaimAction::Expand {
            volume_handle: "local#image#n1#0123".into(),
            pv_name: "pvc-1234".into(),
            bytes: 2 << 30,
            block: false
        }
    );
    assert!(matches!(
        decide(&bigger, Some(&sc), Some(&pv), "n2", true, None),
        ClaimAction::Nothing(_)
    ));
    assert!(matches!(
        decide(&bigger, Some(&sc), None, "n1", true, None),
        ClaimAction::Nothing(_)
    ));
    let same = claim(json!({}), json!({"volumeName": "pvc-1234"}));
    assert!(matches!(
        decide(&same, Some(&sc), Some(&pv), "n1", true, None),
        ClaimAction::Nothing(_)
    ));
    // A crash between growing the volume and recording it: finish the job.
    let mut midway = same.clone();
    midway.status = Some(
        serde_json::from_value(json!({
        "allocatedResourceStatuses": {"storage": CONTROLLER_RESIZE_IN_PROGRESS}}))
        .unwrap(),
    );
    assert!(
        matches!(decide(&midway, Some(&sc), Some(&pv), "n1", false, None), ClaimAction::Expand { bytes, .. } if bytes == 1 << 30)
    );
    let fixed = class("WaitForFirstConsumer", false);
    assert!(matches!(
        decide(&bigger, Some(&fixed), Some(&pv), "n1", false, None),
        ClaimAction::Refuse(_)
    ));
    // A volume someone else provisioned is not Warren's to grow.
    let mut foreign = pv.clone();
    foreign.metadata.annotations = None;
    assert!(matches!(
        decide(&bigger, Some(&sc), Some(&foreign), "n1", false, None),
        ClaimAction::Nothing(_)
    ));
}

#[test]
fn nfs_claims_waiting_for_a_consumer_are_provisioned_by_the_leader_once_scheduled() {
    let sc = nfs_class("WaitForFirstConsumer", true);
    let unscheduled = claim(json!({}), json!({"storageClassName": "warren-nfs"}));
    assert_eq!(
        decide(&unscheduled, Some(&sc), None, "n1", true, None),
        ClaimAction::Nothing("waiting for a pod to be scheduled")
    );
    let on_n2 = claim(
        json!({SELECTED_NODE: "n2"}),
        json!({"storageClassName": "warren-nfs"}),
    );
    // The selected node does not act unless it leads; the leader does, wherever it is.
    assert_eq!(
        decide(&on_n2, Some(&sc), None, "n2", false, None),
        ClaimAction::Nothing("an NFS or replicated volume: the leader provisions it")
    );
    let ClaimAction::Provision(p) = decide(&on_n2, Some(&sc), None, "n1", true, None) else {
        panic!("the leader provisions an NFS claim");
    };
    assert_eq!(p.name, "pvc-1234");
    assert!(p.nfs);
    // CreateVolume is asked for the scheduler's node, as external-provisioner would.
    assert_eq!(p.requisite_nodes, vec!["n2".to_string()]);
    assert_eq!(p.preferred_node.as_deref(), Some("n2"));
    // No rescheduling on a full server: any node would find it as full, and the
    // scheduler's pending binding needs its choice kept.
    assert!(!p.scheduled);
    assert_eq!(p.reclaim_policy, "Retain");
    assert_eq!(p.mount_options, vec!["hard".to_string()]);
    assert_eq!(p.parameters.get("backend").map(String::as_str), Some("nfs"));
    assert_eq!(
        p.parameters.get("subDir").map(String::as_str),
        Some("${pvc.metadata.namespace}/${pvc.metadata.name}")
    );
    // The leader on the selected node itself: the same.
    assert!(matches!(
        decide(&on_n2, Some(&sc), None, "n2", true, None),
        ClaimAction::Provision(_)
    ));
}

#[test]
fn immediate_nfs_claims_are_provisioned_by_the_leader_without_placement() {
    let sc = nfs_class("Immediate", true);
    let fresh = claim(json!({}), json!({"storageClassName": "warren-nfs"}));
    let ClaimAction::Provision(p) = decide(&fresh, Some(&sc), None, "n1", true, None) else {
        panic!("no Place step for NFS: the leader provisions at once");
    };
    assert!(p.nfs && !p.scheduled);
    assert!(p.requisite_nodes.is_empty());
    assert_eq!(p.preferred_node, None);
    assert!(matches!(
        decide(&fresh, Some(&sc), None, "n2", false, None),
        ClaimAction::Nothing(_)
    ));
    // A placement annotation (left from elsewhere) changes nothing.
    let placed = claim(
        json!({PLACED_ON: "n2"}),
        json!({"storageClassName": "warren-nfs"}),
    );
    assert!(matches!(
        decide(&placed, Some(&sc), None, "n2", false, None),
        ClaimAction::Nothing(_)
    ));
    assert!(matches!(
        decide(&placed, Some(&sc), None, "n1", true, None),
        ClaimAction::Provision(_)
    ));
    // Local classes still go through placement, and record their own node.
    let local = class("Immediate", true);
    let on_n1 = claim(json!({PLACED_ON: "n1"}), json!({}));
    let ClaimAction::Provision(p) = decide(&on_n1, Some(&local), None, "n1", false, None) else {
        panic!()
    };
    assert!(!p.nfs);
    assert_eq!(p.requisite_nodes, vec!["n1".to_string()]);
}

#[test]
fn read_write_many_goes_to_createvolume_for_nfs_and_for_local_alike() {
    use crate::provisioner::capabilities;
    use warren_core::capability::{parse_capabilities, parse_shared_capabilities};
    let rwx =
        json!({"storageClassName": "warren-nfs", "accessModes": ["ReadWriteMany", "ReadOnlyMany"]});
    let sc = nfs_class("WaitForFirstConsumer", true);
    let shared = claim(json!({SELECTED_NODE: "n2"}), rwx);
    let ClaimAction::Provision(p) = decide(&shared, Some(&sc), None, "n1", true, None) else {
        panic!("an NFS claim may be ReadWriteMany");
    };
    assert_eq!(p.access_modes, vec!["ReadWriteMany", "ReadOnlyMany"]);
    let caps = capabilities(&p.access_modes, p.block, "", &p.mount_options);
    assert!(parse_shared_capabilities(&caps).is_ok());
    // A local class: `decide` does not refuse it (it never did); the local
    // CreateVolume does, with an error event on the claim, as before.
    let local = class("WaitForFirstConsumer", true);
    let shared = claim(
        json!({SELECTED_NODE: "n1"}),
        json!({"accessModes": ["ReadWriteMany"]}),
    );
    let ClaimAction::Provision(p) = decide(&shared, Some(&local), None, "n1", false, None) else {
        panic!()
    };
    assert!(!p.nfs);
    let caps = capabilities(&p.access_modes, p.block, "", &p.mount_options);
    assert!(parse_capabilities(&caps).is_err());
}

#[test]
fn nfs_restores_and_clones_are_made_by_the_leader() {
    let sc = nfs_class("WaitForFirstConsumer", true);
    let restore = claim(
        json!({SELECTED_NODE: "n2"}),
        json!({"storageClassName": "warren-nfs", "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap1"}}),
    );
    // An NFS snapshot's id names no node (`source_node` is None).
    let ClaimAction::Provision(p) = decide(&restore, Some(&sc), None, "n1", true, None) else {
        panic!("the leader restores");
    };
    assert_eq!(p.source, Some(Source::Snapshot("snap1".into())));
    assert!(matches!(
        decide(&restore, Some(&sc), None, "n2", false, None),
        ClaimAction::Nothing(_)
    ));
    // Even a source that names a node does not move the work off the leader (the NFS
    // controller then refuses a source that is not on its export).
    assert!(matches!(
        decide(&restore, Some(&sc), None, "n1", true, Some("n2")),
        ClaimAction::Provision(_)
    ));
    assert!(matches!(
        decide(&restore, Some(&sc), None, "n2", false, Some("n2")),
        ClaimAction::Nothing(_)
    ));
    assert_eq!(
        source_to_locate(&restore, Some(&sc)),
        Some(Source::Snapshot("snap1".into()))
    );
    let now = nfs_class("Immediate", true);
    let clone = claim(
        json!({}),
        json!({"storageClassName": "warren-nfs", "dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "orig"}}),
    );
    let ClaimAction::Provision(p) = decide(&clone, Some(&now), None, "n1", true, None) else {
        panic!("the leader clones");
    };
    assert_eq!(p.source, Some(Source::Claim("orig".into())));
    assert!(matches!(
        decide(&clone, Some(&now), None, "n1", false, None),
        ClaimAction::Nothing(_)
    ));
}

#[test]
fn bound_nfs_claims_are_grown_by_the_leader() {
    let sc = nfs_class("WaitForFirstConsumer", true);
    let bigger = claim(
        json!({}),
        json!({"storageClassName": "warren-nfs", "volumeName": "pvc-1234", "resources": {"requests": {"storage": "2Gi"}}}),
    );
    let pv = nfs_volume("1Gi");
    assert!(is_nfs_volume(&pv));
    assert_eq!(volume_node(&pv), None);
    assert_eq!(
        decide(&bigger, Some(&sc), Some(&pv), "n2", true, None),
        ClaimAction::Expand {
            volume_handle: NFS_HANDLE.into(),
            pv_name: "pvc-1234".into(),
            bytes: 2 << 30,
            block: false
        }
    );
    assert_eq!(
        decide(&bigger, Some(&sc), Some(&pv), "n1", false, None),
        ClaimAction::Nothing("bound to an NFS or replicated volume: the leader grows it")
    );
    let fixed = nfs_class("WaitForFirstConsumer", false);
    assert!(matches!(
        decide(&bigger, Some(&fixed), Some(&pv), "n1", true, None),
        ClaimAction::Refuse(_)
    ));
    // Ownership of a bound volume follows its handle, not the class: a local PV is
    // still its node's, leader or not.
    let local_pv = volume("n1", "1Gi");
    assert!(!is_nfs_volume(&local_pv));
    assert!(matches!(
        decide(&bigger, Some(&sc), Some(&local_pv), "n2", true, None),
        ClaimAction::Nothing(_)
    ));
    assert!(acts_on(&local_pv, "n1", false) && !acts_on(&local_pv, "n2", true));
    assert!(acts_on(&pv, "n2", true) && !acts_on(&pv, "n1", false));
}

#[test]
fn share_claims_are_provisioned_by_their_node_with_every_access_mode() {
    use crate::provisioner::capabilities;
    use warren_core::capability::parse_shared_capabilities;
    let sc = share_class("WaitForFirstConsumer");
    let rwx = json!({"storageClassName": "warren-share", "accessModes": ["ReadWriteMany"]});
    let unscheduled = claim(json!({}), rwx.clone());
    assert_eq!(
        decide(&unscheduled, Some(&sc), None, "n1", true, None),
        ClaimAction::Nothing("waiting for a pod to be scheduled")
    );
    // The scheduler's node provisions it, leader or not; the leader elsewhere does not.
    let on_n2 = claim(json!({SELECTED_NODE: "n2"}), rwx.clone());
    let ClaimAction::Provision(p) = decide(&on_n2, Some(&sc), None, "n2", false, None) else {
        panic!("a share claim may be ReadWriteMany, and its node provisions it");
    };
    assert_eq!(p.access_modes, vec!["ReadWriteMany"]);
    assert!(!p.nfs);
    assert!(
        p.scheduled,
        "a full node hands the claim back to the scheduler"
    );
    assert_eq!(p.requisite_nodes, vec!["n2".to_string()]);
    assert_eq!(
        p.parameters.get("backend").map(String::as_str),
        Some("share")
    );
    let caps = capabilities(&p.access_modes, p.block, "xfs", &p.mount_options);
    assert!(parse_shared_capabilities(&caps).is_ok());
    assert_eq!(
        decide(&on_n2, Some(&sc), None, "n1", true, None),
        ClaimAction::Nothing("placed on another node")
    );
    // Every multi-node mode, and the single-node ones, get through.
    let all = claim(
        json!({SELECTED_NODE: "n2"}),
        json!({"storageClassName": "warren-share",
            "accessModes": ["ReadWriteMany", "ReadOnlyMany", "ReadWriteOnce", "ReadWriteOncePod"]}),
    );
    let ClaimAction::Provision(p) = decide(&all, Some(&sc), None, "n2", false, None) else {
        panic!()
    };
    let caps = capabilities(&p.access_modes, p.block, "", &p.mount_options);
    assert!(parse_shared_capabilities(&caps).is_ok());
    // Immediate binding: the leader places it, as a local volume, then that node
    // provisions it.
    let now = share_class("Immediate");
    let fresh = claim(json!({}), rwx.clone());
    assert_eq!(
        decide(&fresh, Some(&now), None, "n1", true, None),
        ClaimAction::Place {
            allowed_nodes: None
        }
    );
    let placed = claim(json!({PLACED_ON: "n2"}), rwx);
    assert!(matches!(
        decide(&placed, Some(&now), None, "n2", false, None),
        ClaimAction::Provision(Provision {
            scheduled: false,
            nfs: false,
            ..
        })
    ));
    assert!(matches!(
        decide(&placed, Some(&now), None, "n1", true, None),
        ClaimAction::Nothing(_)
    ));
}

#[test]
fn share_restores_and_clones_are_made_on_their_sources_node() {
    let sc = share_class("WaitForFirstConsumer");
    let clone = claim(
        json!({SELECTED_NODE: "n1"}),
        json!({"storageClassName": "warren-share", "accessModes": ["ReadWriteMany"],
            "dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "orig"}}),
    );
    assert!(matches!(
        decide(&clone, Some(&sc), None, "n2", false, Some("n2")),
        ClaimAction::Provision(_)
    ));
    assert_eq!(
        decide(&clone, Some(&sc), None, "n1", true, Some("n2")),
        ClaimAction::Nothing("its data source is on another node")
    );
}

#[test]
fn a_shared_volume_without_node_affinity_belongs_to_the_node_in_its_handle() {
    let pv = share_volume("1Gi");
    assert!(!is_nfs_volume(&pv));
    assert_eq!(volume_node(&pv).as_deref(), Some("n2"));
    assert!(acts_on(&pv, "n2", false));
    assert!(
        !acts_on(&pv, "n1", true),
        "leading does not make it the leader's"
    );
    let sc = share_class("WaitForFirstConsumer");
    let bigger = claim(
        json!({}),
        json!({"storageClassName": "warren-share", "volumeName": "pvc-1234",
            "resources": {"requests": {"storage": "2Gi"}}}),
    );
    assert_eq!(
        decide(&bigger, Some(&sc), Some(&pv), "n2", false, None),
        ClaimAction::Expand {
            volume_handle: SHARE_HANDLE.into(),
            pv_name: "pvc-1234".into(),
            bytes: 2 << 30,
            block: false
        }
    );
    assert_eq!(
        decide(&bigger, Some(&sc), Some(&pv), "n1", true, None),
        ClaimAction::Nothing("bound to another node's volume")
    );
    // Node affinity, where there is one, still says whose a volume is.
    assert_eq!(volume_node(&volume("n1", "1Gi")).as_deref(), Some("n1"));
    // No affinity and no handle naming a node: nobody's.
    let mut odd = pv.clone();
    odd.spec
        .as_mut()
        .unwrap()
        .csi
        .as_mut()
        .unwrap()
        .volume_handle = "local#image#n2#zz".into();
    assert_eq!(volume_node(&odd), None);
    let mut foreign = pv.clone();
    foreign.spec.as_mut().unwrap().csi.as_mut().unwrap().driver = "other.csi.dev".into();
    assert_eq!(volume_node(&foreign), None);
    assert_eq!(volume_node(&nfs_volume("1Gi")), None);
}

#[test]
fn replicated_claims_are_the_leaders_with_the_scheduler_node_preferred() {
    let sc = replicated_class("WaitForFirstConsumer", None);
    let on_n2 = claim(
        json!({SELECTED_NODE: "n2"}),
        json!({"storageClassName": "warren-replicated"}),
    );
    assert_eq!(
        decide(&on_n2, Some(&sc), None, "n2", false, None),
        ClaimAction::Nothing("an NFS or replicated volume: the leader provisions it")
    );
    let ClaimAction::Provision(p) = decide(&on_n2, Some(&sc), None, "n1", true, None) else {
        panic!("the leader provisions a replicated claim");
    };
    // Preferred, never required: the other replicas go on other nodes.
    assert!(p.requisite_nodes.is_empty());
    assert_eq!(p.preferred_node.as_deref(), Some("n2"));
    // Space is the cluster's, not the scheduler's node's: no rescheduling on a lack of it.
    assert!(!p.scheduled && !p.nfs);

    // Immediate: at once, by the leader, within the class's allowedTopologies.
    let limited = replicated_class("Immediate", Some(&["n1", "n3"]));
    let fresh = claim(json!({}), json!({"storageClassName": "warren-replicated"}));
    let ClaimAction::Provision(p) = decide(&fresh, Some(&limited), None, "n1", true, None) else {
        panic!("no Place step for replicated claims");
    };
    assert_eq!(p.requisite_nodes, vec!["n1".to_string(), "n3".to_string()]);
    assert_eq!(p.preferred_node, None);
    assert!(matches!(
        decide(&fresh, Some(&limited), None, "n3", false, None),
        ClaimAction::Nothing(_)
    ));
}

#[test]
fn the_leader_acts_on_replicated_volumes() {
    let pv = replicated_volume("1Gi");
    assert!(is_leader_owned_volume(&pv) && !is_nfs_volume(&pv));
    assert!(acts_on(&pv, "n1", true));
    assert!(!acts_on(&pv, "n2", false));
    assert_eq!(volume_node(&pv), None);
    assert!(is_leader_owned_volume(&nfs_volume("1Gi")));
    assert!(!is_leader_owned_volume(&share_volume("1Gi")));
}
