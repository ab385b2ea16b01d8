//! `kill -9` at arbitrary points during a burst of CreateVolume and DeleteVolume, then a
//! restart: no volume the client was told about is lost, and no volume exists on disk
//! without a record (no orphans).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::crash::{self, listed};
use common::*;
use csi_proto::v1::*;

fn local_request(name: &str) -> CreateVolumeRequest {
    create_request(name, 32 * MIB)
}

fn key_of(id: &str) -> String {
    id.rsplit('#').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_creates_and_deletes_loses_nothing_and_orphans_nothing() {
    let mut w = Warren::start();
    let names: Vec<String> = (0..16).map(|i| format!("pvc-crash-{i:02}")).collect();
    let mut acknowledged: BTreeMap<String, String> = BTreeMap::new();
    // Calls the kill cut short (they got no answer): without any, the test would only
    // restart an idle process and prove nothing about crash safety.
    let mut cut = 0;

    for (round, delay_ms) in [3u64, 25, 60, 120].into_iter().enumerate() {
        let r = crash::burst_then_kill(
            &mut w,
            &names,
            local_request,
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
            // A delete in flight at the kill may or may not have happened; every other
            // acknowledged volume must still be there.
            if !in_flight_deletes.contains(id) {
                assert!(
                    now_listed.contains(id),
                    "acknowledged volume {name} ({id}) was lost"
                );
            }
        }
        let on_disk: BTreeSet<String> = volumes_on_disk(&w.storage()).into_iter().collect();
        let listed_keys: BTreeSet<String> = now_listed.iter().map(|id| key_of(id)).collect();
        assert_eq!(
            on_disk, listed_keys,
            "round {round}: disk and records disagree (orphan or lost volume)"
        );
        // Forget acknowledged volumes that an in-flight delete removed.
        acknowledged.retain(|_, id| now_listed.contains(id));
    }

    assert!(
        cut > 0,
        "no round's kill cut a call in flight: the delays no longer reach into the calls"
    );

    // Every name can still be created; acknowledged ones come back with the same id.
    let mut client = w.controller().await;
    for name in &names {
        let id = client
            .create_volume(create_request(name, 32 * MIB))
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
    assert_eq!(volumes_on_disk(&w.storage()).len(), names.len());
    assert_eq!(listed(&w).await.len(), names.len());
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let mut w = Warren::start();
    let mut identity = w.identity().await;
    let probe = identity.probe(ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));
    let child = w.child.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "exit status {:?}; log:\n{}",
        output.status,
        w.log()
    );
    assert!(!w.socket().exists(), "socket left behind after SIGTERM");
}
