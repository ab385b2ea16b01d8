//! Kubernetes objects as the tests of every module here need them: StorageClasses,
//! claims and PVs of Warren's three kinds of volume (local, NFS, shared).

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::core::DynamicObject;
use serde_json::json;

use crate::claims::PROVISIONED_BY;
use crate::snapshots::DEFAULT_CLASS;
use crate::{DRIVER, TOPOLOGY_KEY};

pub fn class(binding: &str, expand: bool) -> StorageClass {
    serde_json::from_value(json!({
        "metadata": {"name": "warren-local"},
        "provisioner": DRIVER,
        "parameters": {"layout": "image"},
        "mountOptions": ["noatime"],
        "volumeBindingMode": binding,
        "allowVolumeExpansion": expand,
    }))
    .unwrap()
}

pub fn claim(
    annotations: serde_json::Value,
    extra_spec: serde_json::Value,
) -> PersistentVolumeClaim {
    let mut spec = json!({
        "storageClassName": "warren-local",
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "1Gi"}},
    });
    spec.as_object_mut()
        .unwrap()
        .extend(extra_spec.as_object().unwrap().clone());
    serde_json::from_value(json!({
        "metadata": {"name": "data", "namespace": "default", "uid": "1234", "annotations": annotations},
        "spec": spec,
    }))
    .unwrap()
}

pub fn volume(node: &str, size: &str) -> PersistentVolume {
    serde_json::from_value(json!({
        "metadata": {"name": "pvc-1234", "annotations": {PROVISIONED_BY: DRIVER}},
        "spec": {
            "capacity": {"storage": size},
            "csi": {"driver": DRIVER, "volumeHandle": format!("local#image#{node}#0123")},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": TOPOLOGY_KEY, "operator": "In", "values": [node]}]}]}},
            "persistentVolumeReclaimPolicy": "Delete",
        },
    }))
    .unwrap()
}

pub fn nfs_class(binding: &str, expand: bool) -> StorageClass {
    serde_json::from_value(json!({
        "metadata": {"name": "warren-nfs"},
        "provisioner": DRIVER,
        "parameters": {"backend": "nfs", "server": "10.0.0.5", "share": "/srv",
            "subDir": "${pvc.metadata.namespace}/${pvc.metadata.name}"},
        "mountOptions": ["hard"],
        "reclaimPolicy": "Retain",
        "volumeBindingMode": binding,
        "allowVolumeExpansion": expand,
    }))
    .unwrap()
}

pub const NFS_HANDLE: &str = "nfs#10.0.0.5#/srv#default/data#delete";

/// A `backend: replicated` class, limited to some nodes when `allowed` is given.
pub fn replicated_class(binding: &str, allowed: Option<&[&str]>) -> StorageClass {
    let mut class = json!({
        "metadata": {"name": "warren-replicated"},
        "provisioner": DRIVER,
        "parameters": {"backend": "replicated", "replicas": "2"},
        "reclaimPolicy": "Delete",
        "volumeBindingMode": binding,
        "allowVolumeExpansion": true,
    });
    if let Some(nodes) = allowed {
        class["allowedTopologies"] =
            json!([{"matchLabelExpressions": [{"key": TOPOLOGY_KEY, "values": nodes}]}]);
    }
    serde_json::from_value(class).unwrap()
}

pub const REPLICATED_HANDLE: &str = "replicated#0123456789abcdef0123456789abcdef";

/// A `backend: share` class: the parameters of a local one, plus the backend.
pub fn share_class(binding: &str) -> StorageClass {
    serde_json::from_value(json!({
        "metadata": {"name": "warren-share"},
        "provisioner": DRIVER,
        "parameters": {"backend": "share", "csi.storage.k8s.io/fstype": "xfs"},
        "volumeBindingMode": binding,
        "allowVolumeExpansion": true,
    }))
    .unwrap()
}

/// A shared volume's id: a local image volume's, on n2.
pub const SHARE_HANDLE: &str = "local#image#n2#0123456789abcdef0123456789abcdef";

/// A shared volume's PV as the provisioner writes it: its CreateVolume returned no
/// topology, so no node affinity; the handle names its node.
pub fn share_volume(size: &str) -> PersistentVolume {
    serde_json::from_value(json!({
        "metadata": {"name": "pvc-1234", "annotations": {PROVISIONED_BY: DRIVER}},
        "spec": {
            "capacity": {"storage": size},
            "csi": {"driver": DRIVER, "volumeHandle": SHARE_HANDLE,
                "volumeAttributes": {"warren.csi.dev/share": "10.0.0.2:7463"}},
            "persistentVolumeReclaimPolicy": "Delete",
        },
    }))
    .unwrap()
}

/// A replicated volume's PV as the provisioner writes it (best-effort locality): no node
/// affinity, and a handle that names no node.
pub fn replicated_volume(size: &str) -> PersistentVolume {
    serde_json::from_value(json!({
        "metadata": {"name": "pvc-1234", "annotations": {PROVISIONED_BY: DRIVER}},
        "spec": {
            "capacity": {"storage": size},
            "csi": {"driver": DRIVER, "volumeHandle": REPLICATED_HANDLE},
            "persistentVolumeReclaimPolicy": "Delete",
        },
        "status": {"phase": "Released"},
    }))
    .unwrap()
}

/// An NFS volume's PV as the provisioner writes it: no node affinity.
pub fn nfs_volume(size: &str) -> PersistentVolume {
    serde_json::from_value(json!({
        "metadata": {"name": "pvc-1234", "annotations": {PROVISIONED_BY: DRIVER}},
        "spec": {
            "capacity": {"storage": size},
            "csi": {"driver": DRIVER, "volumeHandle": NFS_HANDLE},
            "persistentVolumeReclaimPolicy": "Delete",
        },
    }))
    .unwrap()
}

/// A claim bound to the PV `pvc-1234` (the fixtures' volumes).
pub fn bound_claim() -> PersistentVolumeClaim {
    claim(json!({}), json!({"volumeName": "pvc-1234"}))
}

/// The VolumeSnapshot `default/snap` (uid 77) of the claim `data`, in class `warren`;
/// `extra` replaces whole top-level fields.
pub fn volume_snapshot(extra: serde_json::Value) -> DynamicObject {
    let mut object = json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": {"name": "snap", "namespace": "default", "uid": "77"},
        "spec": {"source": {"persistentVolumeClaimName": "data"}, "volumeSnapshotClassName": "warren"},
    });
    object
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(object).unwrap()
}

/// The VolumeSnapshotClass `warren` of `driver`, deletion policy Retain.
pub fn snapshot_class(driver: &str, default: bool) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshotClass",
        "metadata": {"name": "warren", "annotations": {DEFAULT_CLASS: default.to_string()}},
        "driver": driver,
        "deletionPolicy": "Retain",
    }))
    .unwrap()
}
