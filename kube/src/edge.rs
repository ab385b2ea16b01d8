//! The edge mode's Kubernetes side, all in the node process: kubelet plugin registration,
//! leader election, and the claim and volume reconcilers (provisioner, resizer, deleter).
//! The leader also does what no node owns: placing Immediate-binding claims, and every
//! step of NFS volumes and their snapshots.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use csi_proto::v1::controller_server::Controller as CsiController;
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams};
use kube::core::DynamicObject;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use tokio::sync::watch;

use crate::error::Result;
use crate::lease::{self, LeaseConfig};
use crate::provisioner::{reconcile_claim, snapshot_resource, Context};
use crate::reclaimer::reconcile_volume;
use crate::registration;
use crate::snapshotter::{reconcile_snapshot, SnapshotContext};
use crate::DRIVER;

#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// This node's name (the Kubernetes node name).
    pub node: String,
    /// Where the leader-election Lease lives (Warren's own namespace).
    pub namespace: String,
    /// The CSI socket the kubelet is to use.
    pub csi_socket: PathBuf,
    /// The kubelet's plugin registration directory.
    pub registration_dir: PathBuf,
}

/// Name of the Lease whose holder places Immediate-binding claims (and looks after NFS
/// volumes).
pub const LEASE_NAME: &str = "warren-edge-placement";
const LEASE_DURATION: Duration = Duration::from_secs(15);

/// Runs until `stop`. The registration socket goes up first (the kubelet needs it to
/// mount anything); the reconcilers need the API server and retry until it answers.
pub async fn run<C: CsiController>(
    config: EdgeConfig,
    csi: Arc<C>,
    stop: watch::Receiver<bool>,
) -> Result<()> {
    let registration_task =
        registration::spawn(&config.registration_dir, &config.csi_socket, stop.clone());

    let client = kube::Client::try_default().await?;
    let (leading_tx, leading) = watch::channel(false);
    let lease = tokio::spawn(lease::run(
        client.clone(),
        LeaseConfig {
            namespace: config.namespace.clone(),
            name: LEASE_NAME.into(),
            holder: config.node.clone(),
            duration: LEASE_DURATION,
        },
        leading_tx,
        stop.clone(),
    ));

    let (classes, class_writer) = reflector::store::<StorageClass>();
    let class_api: Api<StorageClass> = Api::all(client.clone());
    let class_events = reflector::reflector(
        class_writer,
        watcher(class_api.clone(), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects()
    .for_each(|_| async {});

    let volume_api: Api<PersistentVolume> = Api::all(client.clone());
    let volume_controller = Controller::new(volume_api.clone(), watcher::Config::default());
    let volumes = volume_controller.store();

    let claim_api: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let claim_controller = Controller::new(claim_api, watcher::Config::default());
    let claims = claim_controller.store();
    let claims_of_class = claims.clone();
    let claim_controller = claim_controller
        // A new leader takes over placements and NFS volumes at once.
        .reconcile_all_on(on_becoming_leader(leading.clone()))
        // A volume appearing, growing or going away concerns the claim it is bound to.
        .watches(
            volume_api,
            watcher::Config::default(),
            |pv: PersistentVolume| {
                let claim = pv.spec.and_then(|s| s.claim_ref);
                claim
                    .and_then(|c| {
                        Some(ObjectRef::new(c.name.as_deref()?).within(c.namespace.as_deref()?))
                    })
                    .into_iter()
            },
        )
        // A class created after its claims: look at them again.
        .watches(
            class_api,
            watcher::Config::default(),
            move |class: StorageClass| {
                let name = class.metadata.name.unwrap_or_default();
                claims_of_class
                    .state()
                    .into_iter()
                    .filter(|c| {
                        c.spec
                            .as_ref()
                            .and_then(|s| s.storage_class_name.as_deref())
                            == Some(name.as_str())
                    })
                    .map(|c| ObjectRef::from_obj(&*c))
                    .collect::<Vec<_>>()
            },
        );

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: DRIVER.into(),
            instance: Some(config.node.clone()),
        },
    );
    let snapshots_done = snapshot_reconciler(
        &client,
        csi.clone(),
        &config.node,
        leading.clone(),
        claims.clone(),
        volumes.clone(),
        recorder.clone(),
        &stop,
    )
    .await;
    let ctx = Arc::new(Context {
        client,
        csi,
        node: config.node.clone(),
        leading,
        classes,
        volumes,
        recorder,
    });

    let shutdown = |stop: &watch::Receiver<bool>| {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let claims_done = claim_controller
        .graceful_shutdown_on(shutdown(&stop))
        .run(reconcile_claim, retry_later, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "claim reconcile");
            }
        });
    let volumes_done = volume_controller
        .reconcile_all_on(on_becoming_leader(ctx.leading.clone()))
        .graceful_shutdown_on(shutdown(&stop))
        .run(reconcile_volume, retry_later, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "volume reconcile");
            }
        });
    tracing::info!(node = %config.node, "edge provisioner running");
    let mut stop_classes = stop.clone();
    tokio::select! {
        _ = futures_util::future::join3(claims_done, volumes_done, snapshots_done) => {}
        _ = class_events => {}
        _ = stop_classes.wait_for(|s| *s) => {}
    }
    let _ = lease.await;
    let _ = registration_task.await;
    Ok(())
}

/// Yields each time this node becomes the leader (not at each renewal: the lease task
/// sends its state every round).
fn on_becoming_leader(leading: watch::Receiver<bool>) -> impl Stream<Item = ()> + Send + 'static {
    futures_util::stream::unfold((leading, false), |(mut leading, mut was)| async move {
        loop {
            leading.changed().await.ok()?;
            let now = *leading.borrow_and_update();
            if now && !was {
                return Some(((), (leading, true)));
            }
            was = now;
        }
    })
}

/// The VolumeSnapshot reconciler, when the snapshot CRDs are installed (checked once at
/// startup: installing them later needs a restart of Warren, which the docs say).
#[allow(clippy::too_many_arguments)]
async fn snapshot_reconciler<C: CsiController>(
    client: &kube::Client,
    csi: Arc<C>,
    node: &str,
    leading: watch::Receiver<bool>,
    claims: reflector::Store<PersistentVolumeClaim>,
    volumes: reflector::Store<PersistentVolume>,
    recorder: Recorder,
    stop: &watch::Receiver<bool>,
) -> futures_util::future::BoxFuture<'static, ()> {
    use futures_util::FutureExt;
    let resource = snapshot_resource("VolumeSnapshot");
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => {}
        Err(e) => {
            tracing::info!(error = %e, "VolumeSnapshots are off: the snapshot CRDs (snapshot.storage.k8s.io/v1) are not installed");
            return futures_util::future::ready(()).boxed();
        }
    }
    let class_resource = snapshot_resource("VolumeSnapshotClass");
    let class_writer = reflector::store::Writer::new(class_resource.clone());
    let classes = class_writer.as_reader();
    let class_api: Api<DynamicObject> = Api::all_with(client.clone(), &class_resource);
    let class_events =
        reflector::reflector(class_writer, watcher(class_api, watcher::Config::default()))
            .default_backoff()
            .touched_objects()
            .for_each(|_| async {});
    let ctx = Arc::new(SnapshotContext {
        client: client.clone(),
        csi,
        node: node.to_string(),
        leading: leading.clone(),
        claims,
        volumes,
        classes,
        recorder,
    });
    let mut stop = stop.clone();
    let snapshots = Controller::new_with(api, watcher::Config::default(), resource)
        .reconcile_all_on(on_becoming_leader(leading))
        .graceful_shutdown_on(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .run(
            reconcile_snapshot,
            |object: Arc<DynamicObject>, error: &crate::Error, _| {
                tracing::warn!(snapshot = %object.name_any(), error = %error, "will retry");
                Action::requeue(Duration::from_secs(10))
            },
            ctx,
        )
        .for_each(|_| async {});
    tracing::info!("VolumeSnapshots are on");
    async move {
        tokio::select! {
            _ = snapshots => {}
            _ = class_events => {}
        }
    }
    .boxed()
}

fn retry_later<K, C>(object: Arc<K>, error: &crate::Error, _ctx: Arc<Context<C>>) -> Action
where
    K: kube::Resource<DynamicType = ()>,
{
    tracing::warn!(object = %kube::ResourceExt::name_any(&*object), error = %error, "will retry");
    Action::requeue(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn a_new_leader_is_signalled_once_per_takeover_not_per_renewal() {
        let (tx, rx) = watch::channel(false);
        let mut signals = Box::pin(on_becoming_leader(rx));
        let mut seen = Vec::new();
        // The lease task sends every round, changed or not.
        for lead in [false, true, true, true, false, false, true, true] {
            tx.send_replace(lead);
            seen.push(signals.next().now_or_never().is_some());
        }
        assert_eq!(seen, [false, true, false, false, false, false, true, false]);
        drop(tx);
        assert_eq!(signals.next().await, None, "ends with the lease task");
    }
}
