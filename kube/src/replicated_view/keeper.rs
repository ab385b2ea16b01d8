//! The two thin loops around `decide`: the keeper of the objects (who sees the PVs) and
//! the status writer (every node that runs engines). Each round reads the watched
//! objects, asks `decide` what to write, and writes it; a failed write is logged and
//! tried again next round. Nothing here is on a volume's I/O or staging path.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;
use tokio::sync::watch;

use super::decide::{
    object_actions, status_writes, EngineView, ObjectAction, StatusWrite, Written,
};
use super::resource::{ReplicatedVolume, ReplicatedVolumeSpec};
use crate::error::Result;

/// How often the keeper compares the PVs with the objects (they are watched; the round
/// only reads memory).
const OBJECT_ROUND: Duration = Duration::from_secs(10);
/// How often the status writer reads its engines (memory only) and writes what changed.
const STATUS_ROUND: Duration = Duration::from_secs(5);

/// Waits until the CRD is installed (it may be applied with Warren, and established a
/// moment after Warren starts; or never, with a chart from before it): said once, then
/// looked for again every 30 s. False on `stop`.
async fn installed(api: &Api<ReplicatedVolume>, stop: &mut watch::Receiver<bool>) -> bool {
    let mut said = false;
    loop {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => return true,
            Err(e) if !said => {
                said = true;
                tracing::info!(error = %e, "ReplicatedVolume objects wait for their CRD (replicatedvolumes.warren.csi.dev) to be installed and readable");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = stop.wait_for(|s| *s) => return false,
        }
    }
}

/// A store of `api`'s objects and the future that fills it (to be polled alongside).
fn watched<K>(api: Api<K>) -> (Store<K>, impl Future<Output = ()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let fill = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .for_each(|_| async {});
    (store, fill)
}

/// Keeps an object, with its spec and a first status, for every replicated PV that
/// `mine` selects, until `stop`.
pub async fn keep_objects(
    client: kube::Client,
    mine: impl Fn(&ReplicatedVolumeSpec) -> bool,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<ReplicatedVolume> = Api::all(client.clone());
    if !installed(&api, &mut stop).await {
        return;
    }
    let (pvs, fill_pvs) = watched(Api::<PersistentVolume>::all(client));
    let (objects, fill_objects) = watched(api.clone());
    let rounds = async {
        let _ = pvs.wait_until_ready().await;
        let _ = objects.wait_until_ready().await;
        loop {
            object_round(&api, &pvs, &objects, &mine).await;
            tokio::time::sleep(OBJECT_ROUND).await;
        }
    };
    tracing::info!("keeping ReplicatedVolume objects");
    tokio::select! {
        _ = rounds => {}
        _ = fill_pvs => {}
        _ = fill_objects => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// One round of the keeper.
pub async fn object_round(
    api: &Api<ReplicatedVolume>,
    pvs: &Store<PersistentVolume>,
    objects: &Store<ReplicatedVolume>,
    mine: &impl Fn(&ReplicatedVolumeSpec) -> bool,
) {
    let pvs = pvs.state();
    let objects = objects.state();
    let objects: Vec<&ReplicatedVolume> = objects.iter().map(|o| o.as_ref()).collect();
    let actions = object_actions(
        pvs.iter().map(|p| p.as_ref()),
        &objects,
        mine,
        Timestamp::now(),
    );
    for action in actions {
        if let Err(e) = apply_object_action(api, &action).await {
            tracing::warn!(error = %e, action = ?action, "ReplicatedVolume object not written; next round retries");
        }
    }
}

pub async fn apply_object_action(api: &Api<ReplicatedVolume>, action: &ObjectAction) -> Result<()> {
    let params = PatchParams::default();
    match action {
        ObjectAction::Create(object) => match api.create(&PostParams::default(), object).await {
            Ok(_) => Ok(()),
            // Another keeper made it first.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        },
        ObjectAction::UpdateSpec { name, spec } => {
            api.patch(name, &params, &Patch::Merge(json!({ "spec": spec })))
                .await?;
            Ok(())
        }
        ObjectAction::FirstStatus {
            name,
            resource_version,
            status,
        } => {
            let patch = json!({
                "metadata": {"resourceVersion": resource_version},
                "status": status,
            });
            match api.patch_status(name, &params, &Patch::Merge(patch)).await {
                Ok(_) => Ok(()),
                // Someone wrote first (an engine's node): theirs stands.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Writes the status of every engine `engines` reports (called once a round; it reads
/// memory only) on node `node`, and Detached for those that stopped, until `stop`.
pub async fn write_statuses<F, Fut>(
    client: kube::Client,
    node: String,
    engines: F,
    mut stop: watch::Receiver<bool>,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Vec<EngineView>>,
{
    let api: Api<ReplicatedVolume> = Api::all(client);
    if !installed(&api, &mut stop).await {
        return;
    }
    let (objects, fill_objects) = watched(api.clone());
    let rounds = async {
        let _ = objects.wait_until_ready().await;
        let mut written = Written::new();
        loop {
            let views = engines().await;
            let state = objects.state();
            let current: Vec<&ReplicatedVolume> = state.iter().map(|o| o.as_ref()).collect();
            status_round(
                &api,
                &node,
                &views,
                &current,
                &mut written,
                Timestamp::now(),
            )
            .await;
            tokio::time::sleep(STATUS_ROUND).await;
        }
    };
    tracing::info!(node = %node, "writing the status of replicated volumes staged here");
    tokio::select! {
        _ = rounds => {}
        _ = fill_objects => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// One round of the status writer: decides, writes, and remembers what it wrote.
pub async fn status_round(
    api: &Api<ReplicatedVolume>,
    node: &str,
    engines: &[EngineView],
    objects: &[&ReplicatedVolume],
    written: &mut Written,
    now: Timestamp,
) {
    // Forget what was written for objects that are gone.
    written.retain(|name, _| {
        objects
            .iter()
            .any(|o| o.metadata.name.as_deref() == Some(name))
    });
    for write in status_writes(node, engines, objects, written, now) {
        match apply_status_write(api, &write).await {
            Ok(()) => {
                written.insert(write.name, (write.status, now));
            }
            Err(e) => {
                tracing::warn!(volume = %write.name, error = %e, "ReplicatedVolume status not written; next round retries")
            }
        }
    }
}

pub async fn apply_status_write(api: &Api<ReplicatedVolume>, write: &StatusWrite) -> Result<()> {
    let patch = match &write.resource_version {
        Some(rv) => json!({"metadata": {"resourceVersion": rv}, "status": write.status}),
        None => json!({ "status": write.status }),
    };
    match api
        .patch_status(&write.name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        // A Detached write that lost to a newer status (another node's engine started):
        // that one stands, and this node has nothing more to say.
        Err(kube::Error::Api(e)) if e.code == 409 && write.resource_version.is_some() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `keep_objects` with the in-cluster (or kubeconfig) client; without a Kubernetes API
/// there is nothing to keep, which is said once.
pub async fn keep_objects_in_cluster(
    mine: impl Fn(&ReplicatedVolumeSpec) -> bool,
    stop: watch::Receiver<bool>,
) {
    match kube::Client::try_default().await {
        Ok(client) => keep_objects(client, mine, stop).await,
        Err(e) => {
            tracing::info!(error = %e, "no Kubernetes API: no ReplicatedVolume objects kept")
        }
    }
}

/// `write_statuses` with the in-cluster (or kubeconfig) client; without a Kubernetes API
/// (the standard mode's node pod before its chart gave it a token) nothing is written,
/// which is said once.
pub async fn write_statuses_in_cluster<F, Fut>(
    node: String,
    engines: F,
    stop: watch::Receiver<bool>,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Vec<EngineView>>,
{
    match kube::Client::try_default().await {
        Ok(client) => write_statuses(client, node, engines, stop).await,
        Err(e) => {
            tracing::info!(error = %e, "no Kubernetes API: the status of replicated volumes is not written")
        }
    }
}
