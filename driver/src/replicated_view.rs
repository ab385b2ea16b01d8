//! Wiring of the ReplicatedVolume objects (`warren_kube::replicated_view`): the status
//! writer of every node process that hosts replicas (it reads the engines of the volumes
//! staged here, and their rebuilds in progress, from memory), and the keeper of the
//! objects where PVs are seen. Both run beside CSI and never touch it: their errors are
//! logged and retried.

use std::sync::Arc;

use tokio::sync::watch;
use warren_kube::replicated_view::{
    keep_objects_in_cluster, write_statuses_in_cluster, EngineView, LastRebuild, RebuildBytes,
    RebuildView,
};
use warren_node::replicated::{ReplicaHost, StagedVolume};

/// Writes the status of the volumes whose engines run on this node, until `stop`.
pub fn spawn_status_writer(host: Arc<ReplicaHost>, node: String, stop: watch::Receiver<bool>) {
    tokio::spawn(write_statuses_in_cluster(
        node,
        move || {
            let host = host.clone();
            async move { engine_views(&host).await }
        },
        stop,
    ));
}

/// Keeps the objects of replicated PVs, until `stop`: all of them (`only_replicas_of`
/// None: the standard mode's controller), or those with a replica on that node (the
/// edge mode, where every node runs this and no node sees more than it needs).
pub fn spawn_object_keeper(only_replicas_of: Option<String>, stop: watch::Receiver<bool>) {
    tokio::spawn(keep_objects_in_cluster(
        move |spec| match &only_replicas_of {
            None => true,
            Some(node) => spec.replicas.iter().any(|r| &r.node == node),
        },
        stop,
    ));
}

async fn engine_views(host: &ReplicaHost) -> Vec<EngineView> {
    host.staged().await.iter().map(view_of).collect()
}

/// A staged volume's engine in the status's terms, with its rebuilds in progress.
pub fn view_of(staged: &StagedVolume) -> EngineView {
    let status = &staged.status;
    EngineView {
        key: staged.volume.clone(),
        replicas: staged.replicas.clone(),
        generation: status.gen,
        members: status.members.clone(),
        rebuilding: status
            .rebuilding
            .iter()
            .map(|replica| RebuildView {
                replica: replica.clone(),
                progress: status
                    .rebuilds
                    .iter()
                    .find(|p| &p.replica == replica)
                    .map(|p| RebuildBytes {
                        done: p.bytes_done,
                        total: p.bytes_total,
                        incremental: p.incremental,
                    }),
            })
            .collect(),
        failed: status.failed.clone(),
        last_rebuild: status.last_rebuild.map(|r| LastRebuild {
            bytes: r.bytes,
            // Milliseconds are enough, and keep the status from changing at each read.
            seconds: (r.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            incremental: r.incremental,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use warren_replica::engine::EngineStatus;
    use warren_replica::heal::{RebuildProgress, RebuildStats};

    use super::*;

    #[test]
    fn a_staged_volume_shows_its_rebuild_progress_per_replica() {
        let staged = StagedVolume {
            volume: "k".into(),
            replicas: vec!["n1".into(), "n2".into(), "n3".into()],
            status: EngineStatus {
                gen: 4,
                members: vec!["n1".into()],
                rebuilding: vec!["n2".into(), "n3".into()],
                failed: None,
                last_rebuild: Some(RebuildStats {
                    incremental: true,
                    regions: 2,
                    bytes: 2 << 20,
                    elapsed: Duration::from_micros(1_234_567),
                }),
                rebuilds: vec![RebuildProgress {
                    replica: "n2".into(),
                    incremental: false,
                    bytes_done: 10,
                    bytes_total: 40,
                    elapsed: Duration::from_secs(1),
                }],
            },
        };
        let view = view_of(&staged);
        assert_eq!((view.key.as_str(), view.generation), ("k", 4));
        assert_eq!(
            view.rebuilding,
            [
                RebuildView {
                    replica: "n2".into(),
                    progress: Some(RebuildBytes {
                        done: 10,
                        total: 40,
                        incremental: false
                    })
                },
                // Not copying yet (between its start and the board): no bytes to show.
                RebuildView {
                    replica: "n3".into(),
                    progress: None
                },
            ]
        );
        assert_eq!(
            view.last_rebuild,
            Some(LastRebuild {
                bytes: 2 << 20,
                seconds: 1.235,
                incremental: true
            })
        );
    }
}
