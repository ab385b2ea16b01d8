//! One round of the crash tests: CreateVolume for every name (retries of earlier names
//! included) and DeleteVolume of some acknowledged volumes, all at once, then `kill -9`
//! after `delay`, then what the client was told. Shared by `crash_restart.rs` (local
//! volumes) and `crash_restart_replicated.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use csi_proto::v1::*;

use super::Warren;

/// What a round's client saw before the kill.
pub struct Round {
    /// Calls the kill cut short (they got no answer).
    pub cut: usize,
    /// The volumes whose delete was in flight: they may or may not be gone.
    pub in_flight_deletes: BTreeSet<String>,
}

/// Runs one round against `w`, updating `acknowledged` (name -> id) with what the client
/// was told; asserts a name is never answered with two ids.
pub async fn burst_then_kill(
    w: &mut Warren,
    names: &[String],
    request: fn(&str) -> CreateVolumeRequest,
    deletes: usize,
    delay: Duration,
    acknowledged: &mut BTreeMap<String, String>,
) -> Round {
    let mut tasks = Vec::new();
    for name in names {
        let mut client = w.controller().await;
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            let r = client.create_volume(request(&name)).await;
            (name, r.map(|r| r.into_inner().volume.unwrap().volume_id))
        }));
    }
    let to_delete: Vec<String> = acknowledged.values().take(deletes).cloned().collect();
    let in_flight_deletes: BTreeSet<String> = to_delete.iter().cloned().collect();
    let mut delete_tasks = Vec::new();
    for id in to_delete {
        let mut client = w.controller().await;
        delete_tasks.push(tokio::spawn(async move {
            let r = client
                .delete_volume(DeleteVolumeRequest {
                    volume_id: id.clone(),
                    ..Default::default()
                })
                .await;
            (id, r.is_ok())
        }));
    }
    tokio::time::sleep(delay).await;
    w.kill9();
    let mut cut = 0;
    for t in tasks {
        let (name, result) = t.await.unwrap();
        match result {
            Err(_) => cut += 1,
            Ok(id) => {
                // Unless this round also deleted the name's volume: a create that runs
                // after that delete rightly makes a new volume, with a new id.
                if let Some(old) = acknowledged.get(&name) {
                    if !in_flight_deletes.contains(old) {
                        assert_eq!(old, &id, "CreateVolume({name}) answered two different ids");
                    }
                }
                acknowledged.insert(name, id);
            }
        }
    }
    for d in delete_tasks {
        let (id, ok) = d.await.unwrap();
        if ok {
            acknowledged.retain(|_, v| *v != id);
        } else {
            cut += 1;
        }
    }
    Round {
        cut,
        in_flight_deletes,
    }
}

/// The IDs ListVolumes answers.
pub async fn listed(w: &Warren) -> BTreeSet<String> {
    let mut client = w.controller().await;
    let resp = client
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    resp.entries
        .into_iter()
        .map(|e| e.volume.unwrap().volume_id)
        .collect()
}
