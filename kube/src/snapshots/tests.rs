//! `decide_as` and `pick_class` on plain objects.

use serde_json::json;

use super::*;
use crate::test_support::fixtures::{
    bound_claim, claim, nfs_volume, share_volume, snapshot_class as class, volume,
    volume_snapshot as snapshot, NFS_HANDLE, SHARE_HANDLE,
};

/// Snapshot `uid`, being deleted, bound to `snapcontent-<uid>`, with `finalizer` on it.
fn being_deleted(uid: &str, finalizer: &str) -> DynamicObject {
    snapshot(
        json!({"metadata": {"name": "snap", "namespace": "default", "uid": uid,
        "deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": [finalizer]},
        "status": {"boundVolumeSnapshotContentName": format!("snapcontent-{uid}")}}),
    )
}

#[test]
fn the_source_volumes_node_takes_the_snapshot() {
    let s = snapshot(json!({}));
    let c = class(DRIVER, false);
    let pv = volume("n1", "1Gi");
    let SnapshotAction::Take(take) = decide(&s, Some(&c), Some(&bound_claim()), Some(&pv), "n1")
    else {
        panic!("n1 holds the source");
    };
    assert_eq!(take.content_name, "snapcontent-77");
    assert_eq!(take.snapshot_name, "snapshot-77");
    assert_eq!(take.source_handle, "local#image#n1#0123");
    assert_eq!(take.deletion_policy, "Retain");
    assert!(matches!(
        decide(&s, Some(&c), Some(&bound_claim()), Some(&pv), "n2"),
        SnapshotAction::Nothing(_)
    ));
    // Done already: nothing more.
    let done = snapshot(
        json!({"status": {"readyToUse": true, "boundVolumeSnapshotContentName": "snapcontent-77"}}),
    );
    assert!(matches!(
        decide(&done, Some(&c), Some(&bound_claim()), Some(&pv), "n1"),
        SnapshotAction::Nothing(_)
    ));
}

#[test]
fn classes_and_sources_that_are_not_warrens() {
    let s = snapshot(json!({}));
    let pv = volume("n1", "1Gi");
    assert!(matches!(
        decide(&s, None, Some(&bound_claim()), Some(&pv), "n1"),
        SnapshotAction::Refuse(_)
    ));
    let other = class("hostpath.csi.k8s.io", false);
    assert!(matches!(
        decide(&s, Some(&other), Some(&bound_claim()), Some(&pv), "n1"),
        SnapshotAction::Nothing(_)
    ));
    let mut foreign = pv.clone();
    foreign.metadata.annotations = None;
    let c = class(DRIVER, false);
    assert!(matches!(
        decide(&s, Some(&c), Some(&bound_claim()), Some(&foreign), "n1"),
        SnapshotAction::Nothing(_)
    ));
    let unbound = claim(json!({}), json!({}));
    assert!(matches!(
        decide(&s, Some(&c), Some(&unbound), Some(&pv), "n1"),
        SnapshotAction::Nothing(_)
    ));
    let preprovisioned = snapshot(json!({"spec": {"source": {"volumeSnapshotContentName": "x"}}}));
    assert!(matches!(
        decide(&preprovisioned, Some(&c), None, None, "n1"),
        SnapshotAction::Nothing(_)
    ));
}

#[test]
fn deletion_goes_through_warrens_finalizer() {
    let pv = volume("n1", "1Gi");
    let c = class(DRIVER, false);
    let deleting = being_deleted("77", FINALIZER);
    assert_eq!(
        decide(&deleting, Some(&c), Some(&bound_claim()), Some(&pv), "n1"),
        SnapshotAction::Delete {
            content: Some("snapcontent-77".into())
        }
    );
    assert!(matches!(
        decide(&deleting, Some(&c), Some(&bound_claim()), Some(&pv), "n2"),
        SnapshotAction::Nothing(_)
    ));
}

#[test]
fn the_default_class_is_used_when_none_is_named() {
    let classes = vec![class("other.csi", true), {
        let mut c = class(DRIVER, true);
        c.metadata.name = Some("warren-default".into());
        c
    }];
    let unnamed = snapshot(json!({"spec": {"source": {"persistentVolumeClaimName": "data"}}}));
    assert_eq!(
        pick_class(&unnamed, &classes)
            .and_then(|c| c.metadata.name.clone())
            .as_deref(),
        Some("warren-default")
    );
    let named = snapshot(json!({}));
    assert_eq!(
        pick_class(&named, &classes)
            .and_then(|c| c.metadata.name.clone())
            .as_deref(),
        Some("warren")
    );
}

#[test]
fn the_leader_snapshots_an_nfs_volume() {
    let s = snapshot(json!({}));
    let c = class(DRIVER, false);
    let pv = nfs_volume("1Gi");
    let SnapshotAction::Take(take) = decide_as(
        &s,
        Some(&c),
        Some(&bound_claim()),
        Some(&pv),
        "n2",
        true,
        None,
    ) else {
        panic!("the leader snapshots an NFS volume");
    };
    assert_eq!(take.source_handle, NFS_HANDLE);
    assert_eq!(take.content_name, "snapcontent-77");
    assert_eq!(take.snapshot_name, "snapshot-77");
    assert_eq!(
        decide_as(
            &s,
            Some(&c),
            Some(&bound_claim()),
            Some(&pv),
            "n1",
            false,
            None
        ),
        SnapshotAction::Nothing(
            "the source is an NFS or replicated volume: the leader snapshots it"
        )
    );
    assert!(matches!(
        decide(&s, Some(&c), Some(&bound_claim()), Some(&pv), "n1"),
        SnapshotAction::Nothing(_)
    ));
    // A local source stays its node's, whoever leads.
    let local = volume("n1", "1Gi");
    assert!(matches!(
        decide_as(
            &s,
            Some(&c),
            Some(&bound_claim()),
            Some(&local),
            "n2",
            true,
            None
        ),
        SnapshotAction::Nothing(_)
    ));
    assert!(matches!(
        decide_as(
            &s,
            Some(&c),
            Some(&bound_claim()),
            Some(&local),
            "n1",
            false,
            None
        ),
        SnapshotAction::Take(_)
    ));
}

#[test]
fn the_leader_deletes_nfs_snapshots_even_without_their_source() {
    let c = class(DRIVER, false);
    let deleting = being_deleted("77", FINALIZER);
    let want = SnapshotAction::Delete {
        content: Some("snapcontent-77".into()),
    };
    // Source still there: the leader, by the volume's handle.
    let pv = nfs_volume("1Gi");
    assert_eq!(
        decide_as(
            &deleting,
            Some(&c),
            Some(&bound_claim()),
            Some(&pv),
            "n2",
            true,
            None
        ),
        want
    );
    assert!(matches!(
        decide_as(
            &deleting,
            Some(&c),
            Some(&bound_claim()),
            Some(&pv),
            "n1",
            false,
            None
        ),
        SnapshotAction::Nothing(_)
    ));
    // Source claim and volume gone: the leader, by the snapshot's handle.
    let handle = Some("nfssnap#10.0.0.5#/srv#0123456789abcdef0123456789abcdef");
    assert_eq!(
        decide_as(&deleting, Some(&c), None, None, "n2", true, handle),
        want
    );
    assert!(matches!(
        decide_as(&deleting, Some(&c), None, None, "n1", false, handle),
        SnapshotAction::Nothing(_)
    ));
    // Without Warren's finalizer it is not Warren's to finish.
    let unfinalized = being_deleted("77", "other");
    assert!(matches!(
        decide_as(&unfinalized, Some(&c), None, None, "n2", true, handle),
        SnapshotAction::Nothing(_)
    ));
    // A local snapshot's handle moves nothing to the leader: the node it names decides.
    let local = Some("snap#image#n1#0123456789abcdef0123456789abcdef");
    assert!(matches!(
        decide_as(&deleting, Some(&c), None, None, "n2", true, local),
        SnapshotAction::Nothing(_)
    ));
}

/// Issue 20: a VolumeSnapshot deleted after its source claim and volume stayed forever
/// ("source volume not seen"), with its finalizer, its content and its data.
#[test]
fn the_node_a_local_snapshot_names_deletes_it_without_its_source() {
    let c = class(DRIVER, false);
    let deleting = being_deleted("78", FINALIZER);
    let want = SnapshotAction::Delete {
        content: Some("snapcontent-78".into()),
    };
    let local = Some("snap#image#n1#0123456789abcdef0123456789abcdef");
    assert_eq!(
        decide_as(&deleting, Some(&c), None, None, "n1", false, local),
        want
    );
    assert_eq!(
        decide_as(&deleting, Some(&c), None, None, "n1", true, local),
        want
    );
    assert!(matches!(
        decide_as(&deleting, Some(&c), None, None, "n2", false, local),
        SnapshotAction::Nothing(_)
    ));
    // A content whose snapshot handle was never recorded names its source volume: that
    // volume's node still owns the snapshot.
    let source = Some("local#image#n2#0123456789abcdef0123456789abcdef");
    assert_eq!(
        decide_as(&deleting, Some(&c), None, None, "n2", false, source),
        want
    );
    assert!(matches!(
        decide_as(&deleting, Some(&c), None, None, "n1", true, source),
        SnapshotAction::Nothing(_)
    ));
    // No content (or one naming nothing of Warren's): only the finalizer is left, and the
    // leader drops it; the others leave it.
    for handle in [None, Some("zfs#pool#x")] {
        assert_eq!(
            decide_as(&deleting, Some(&c), None, None, "n3", true, handle),
            want,
            "{handle:?}"
        );
        assert!(matches!(
            decide_as(&deleting, Some(&c), None, None, "n1", false, handle),
            SnapshotAction::Nothing(_)
        ));
    }
}

#[test]
fn a_shared_volumes_node_takes_its_snapshots() {
    let s = snapshot(json!({}));
    let c = class(DRIVER, false);
    let pv = share_volume("1Gi");
    let SnapshotAction::Take(take) = decide(&s, Some(&c), Some(&bound_claim()), Some(&pv), "n2")
    else {
        panic!("n2 holds the shared source");
    };
    assert_eq!(take.source_handle, SHARE_HANDLE);
    assert_eq!(
        decide_as(
            &s,
            Some(&c),
            Some(&bound_claim()),
            Some(&pv),
            "n1",
            true,
            None
        ),
        SnapshotAction::Nothing("the source volume is not this node's")
    );
}
