//! `kill -9` of `warren all` at arbitrary points during a burst of CreateVolume and
//! DeleteVolume of replicated volumes (one replica: `all` is one node; the controller's
//! record-then-replica steps are the same for N), then a restart: every volume the client
//! was told about is still there, and no replica exists that no record names (no orphan),
//! the replicated counterpart of `crash_restart.rs`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use common::crash::{self, listed};
use common::*;
use csi_proto::v1::*;

fn replicated_request(name: &str) -> CreateVolumeRequest {
    let mut req = create_request(name, 32 * MIB);
    req.parameters = HashMap::from([
        ("backend".into(), "replicated".into()),
        ("replicas".into(), "1".into()),
    ]);
    req
}

/// Replica directories on disk (by key), the replica root's own entries left out.
fn replicas_on_disk(w: &Warren) -> BTreeSet<String> {
    std::fs::read_dir(w.storage().join("replicas"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_replicated_creates_and_deletes_loses_nothing_and_orphans_nothing() {
    let dir = Warren::dirs();
    let token = dir.path().join("replica-token");
    std::fs::write(&token, "crash-restart-replica-token").unwrap();
    // A fixed port: the volume context of every volume names it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut w = Warren::start_with(
        dir,
        vec![],
        vec![
            format!("--replica-listen=127.0.0.1:{port}"),
            format!("--replica-token-file={}", token.display()),
        ],
    );
    let names: Vec<String> = (0..12).map(|i| format!("pvc-rcrash-{i:02}")).collect();
    let mut acknowledged: BTreeMap<String, String> = BTreeMap::new();
    let mut cut = 0;

    for (round, delay_ms) in [2u64, 15, 40, 90].into_iter().enumerate() {
        let r = crash::burst_then_kill(
            &mut w,
            &names,
            replicated_request,
            2 + round,
            Duration::from_millis(delay_ms),
            &mut acknowledged,
        )
        .await;
        cut += r.cut;
        let in_flight_deletes = r.in_flight_deletes;

        w.spawn();
        let now_listed = listed(&w).await;
        for (name, id) in &acknowledged {
            if !in_flight_deletes.contains(id) {
                assert!(
                    now_listed.contains(id),
                    "acknowledged volume {name} ({id}) was lost"
                );
            }
        }
        let listed_keys: BTreeSet<String> = now_listed
            .iter()
            .filter_map(|id| id.strip_prefix("replicated#"))
            .map(str::to_string)
            .collect();
        assert_eq!(
            replicas_on_disk(&w),
            listed_keys,
            "round {round}: replicas on disk and records disagree (orphan or lost replica)"
        );
        acknowledged.retain(|_, id| now_listed.contains(id));
    }
    assert!(
        cut > 0,
        "no round's kill cut a call in flight: the delays no longer reach into the calls"
    );

    // Every name can still be created, and an acknowledged one keeps its id; each volume
    // stages (its replica is whole) and deletes.
    let mut client = w.controller().await;
    for name in &names {
        let id = client
            .create_volume(replicated_request(name))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id;
        if let Some(old) = acknowledged.get(name) {
            assert_eq!(old, &id, "{name} changed id across restarts");
        }
    }
    assert_eq!(replicas_on_disk(&w).len(), names.len());
    for id in listed(&w).await {
        client
            .delete_volume(DeleteVolumeRequest {
                volume_id: id,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    assert!(replicas_on_disk(&w).is_empty());
}
