//! What the unit tests of several modules share: Kubernetes objects to feed the pure
//! decisions (`fixtures`), and for the reconcilers a scripted Kubernetes API
//! (`mock_api`), a fake CSI Controller (`fake_csi`) and the contexts built on them.

pub mod fake_csi;
pub mod fixtures;
pub mod mock_api;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::core::DynamicObject;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::provisioner::{snapshot_resource, Context};
use crate::snapshotter::SnapshotContext;
use crate::DRIVER;
use fake_csi::FakeCsi;

/// A reflector store already holding `objects`, as after a watch's first list.
pub fn store<K>(objects: impl IntoIterator<Item = K>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let (store, mut writer) = reflector::store();
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::Apply(object));
    }
    store
}

/// The VolumeSnapshotClass store the snapshotter reads, holding `classes`.
pub fn snapshot_class_store(
    classes: impl IntoIterator<Item = DynamicObject>,
) -> Store<DynamicObject> {
    let mut writer = reflector::store::Writer::new(snapshot_resource("VolumeSnapshotClass"));
    let store = writer.as_reader();
    for class in classes {
        writer.apply_watcher_event(&watcher::Event::Apply(class));
    }
    store
}

fn recorder(client: &kube::Client, node: &str) -> Recorder {
    Recorder::new(
        client.clone(),
        Reporter {
            controller: DRIVER.into(),
            instance: Some(node.into()),
        },
    )
}

/// The claim and volume reconcilers' context for node `node`, leading or not, that has
/// seen `classes` and `volumes`.
pub fn context(
    client: kube::Client,
    csi: FakeCsi,
    node: &str,
    leading: bool,
    classes: Vec<StorageClass>,
    volumes: Vec<PersistentVolume>,
) -> Arc<Context<FakeCsi>> {
    Arc::new(Context {
        recorder: recorder(&client, node),
        client,
        csi: Arc::new(csi),
        node: node.into(),
        leading: watch::channel(leading).1,
        classes: store(classes),
        volumes: store(volumes),
    })
}

/// The snapshot reconciler's context for node `node`, leading or not, that has seen
/// `claims`, `volumes` and the VolumeSnapshotClasses `classes`.
pub fn snapshot_context(
    client: kube::Client,
    csi: FakeCsi,
    node: &str,
    leading: bool,
    claims: Vec<PersistentVolumeClaim>,
    volumes: Vec<PersistentVolume>,
    classes: Vec<DynamicObject>,
) -> Arc<SnapshotContext<FakeCsi>> {
    Arc::new(SnapshotContext {
        recorder: recorder(&client, node),
        client,
        csi: Arc::new(csi),
        node: node.into(),
        leading: watch::channel(leading).1,
        claims: store(claims),
        volumes: store(volumes),
        classes: snapshot_class_store(classes),
    })
}
