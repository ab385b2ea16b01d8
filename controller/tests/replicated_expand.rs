//! ControllerExpandVolume of replicated volumes against fake nodes (see `support` for why
//! fakes): every replica grows, concurrently; the record says the new size only once all
//! have it; an unreachable node is UNAVAILABLE and the retry is harmless.

mod support;

use std::time::Duration;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::volume_capability::access_mode::Mode as AccessMode;
use csi_proto::v1::volume_capability::{AccessMode as Am, AccessType, BlockVolume};
use csi_proto::v1::*;
use support::*;
use tonic::{Code, Request};
use warren_core::ids::{Key, ReplicatedVolumeId};

const MIB: u64 = 1 << 20;

fn key_of(volume: &Volume) -> Key {
    ReplicatedVolumeId::parse(&volume.volume_id).unwrap().key
}

fn expand_request(id: &str, required: u64) -> ControllerExpandVolumeRequest {
    ControllerExpandVolumeRequest {
        volume_id: id.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: required as i64,
            limit_bytes: 0,
        }),
        ..Default::default()
    }
}

async fn expand(c: &Cluster, id: &str, required: u64) -> Result<(u64, bool), tonic::Status> {
    let reply = c
        .svc
        .controller_expand_volume(Request::new(expand_request(id, required)))
        .await?
        .into_inner();
    Ok((reply.capacity_bytes as u64, reply.node_expansion_required))
}

fn recorded_size(c: &Cluster, volume: &Volume) -> u64 {
    c.records()
        .replicated(&key_of(volume))
        .unwrap()
        .capacity_bytes
}

fn replica_size(c: &Cluster, node: &str, volume: &Volume) -> u64 {
    c.node(node)
        .replica(key_of(volume).as_str())
        .unwrap()
        .size_bytes
}

fn expansions(c: &Cluster, node: &str) -> usize {
    c.node(node)
        .changes()
        .iter()
        .filter(|call| call.starts_with("expand"))
        .count()
}

#[tokio::test]
async fn every_replica_grows_then_the_record_and_a_retry_changes_nothing() {
    let c = cluster(&[("n1", 9, true), ("n2", 5, true), ("n3", 5, false)]);
    let volume = c.create(replicated_request("pvc-a", &[])).await.unwrap();
    // Whole MiB, as for image volumes; a mount volume's file system grows on its node.
    let (size, node_expansion) = expand(&c, &volume.volume_id, 2 * GIB + 1).await.unwrap();
    assert_eq!((size, node_expansion), (2 * GIB + MIB, true));
    for node in ["n1", "n2"] {
        assert_eq!(replica_size(&c, node, &volume), size, "{node}");
        assert_eq!(expansions(&c, node), 1, "{node}");
    }
    assert!(c.node("n3").changes().is_empty(), "it holds no replica");
    assert_eq!(recorded_size(&c, &volume), size);
    let got = c
        .svc
        .controller_get_volume(Request::new(ControllerGetVolumeRequest {
            volume_id: volume.volume_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.volume.unwrap().capacity_bytes as u64, size);

    // The same size again, or a smaller one: the size it has, and no node is asked.
    for required in [size, GIB] {
        assert_eq!(
            expand(&c, &volume.volume_id, required).await.unwrap(),
            (size, true)
        );
    }
    assert_eq!((expansions(&c, "n1"), expansions(&c, "n2")), (1, 1));
}

/// A staged raw block volume's engine and device must learn the new size on the node:
/// unlike an image volume's loop device, nothing else would tell them.
#[tokio::test]
async fn a_raw_block_volume_asks_for_node_expansion_too() {
    let c = cluster(&[("n1", 9, true), ("n2", 5, true)]);
    let mut req = replicated_request("pvc-b", &[]);
    req.volume_capabilities = vec![VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(Am {
            mode: AccessMode::SingleNodeWriter as i32,
        }),
    }];
    let volume = c.create(req).await.unwrap();
    assert_eq!(
        expand(&c, &volume.volume_id, 3 * GIB).await.unwrap(),
        (3 * GIB, true)
    );
    assert_eq!(replica_size(&c, "n2", &volume), 3 * GIB);
}

#[tokio::test]
async fn an_unreachable_node_keeps_the_old_size_and_a_retry_after_a_restart_finishes() {
    let mut c = cluster(&[("n1", 9, true), ("n2", 5, true)]);
    let volume = c.create(replicated_request("pvc-c", &[])).await.unwrap();
    c.node("n2").set_mode(Mode::Down);
    let err = expand(&c, &volume.volume_id, 2 * GIB).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("n2"), "{err:?}");
    // n1 grew; the record (and so every answer about the volume) still says 1 GiB.
    assert_eq!(replica_size(&c, "n1", &volume), 2 * GIB);
    assert_eq!(replica_size(&c, "n2", &volume), GIB);
    assert_eq!(recorded_size(&c, &volume), GIB);

    // kill -9 and a restart change nothing of that; the CO's retry grows both again.
    c.restart();
    c.node("n2").set_mode(Mode::Up);
    assert_eq!(
        expand(&c, &volume.volume_id, 2 * GIB).await.unwrap(),
        (2 * GIB, true)
    );
    assert_eq!(expansions(&c, "n1"), 2, "asked again: growth is idempotent");
    assert_eq!(replica_size(&c, "n2", &volume), 2 * GIB);
    assert_eq!(recorded_size(&c, &volume), 2 * GIB);
}

#[tokio::test]
async fn replicas_grow_concurrently_and_a_refusal_keeps_its_code() {
    let c = cluster(&[("n1", 9, true), ("n2", 5, true)]);
    let volume = c.create(replicated_request("pvc-d", &[])).await.unwrap();
    let nodes = c.records().replicated(&key_of(&volume)).unwrap().nodes();
    // The first node asked hangs: the second is asked anyway.
    c.node(&nodes[0]).set_mode(Mode::Hang);
    let hung = tokio::time::timeout(
        Duration::from_millis(300),
        expand(&c, &volume.volume_id, 2 * GIB),
    )
    .await;
    assert!(hung.is_err(), "a hanging node holds the call");
    assert_eq!(replica_size(&c, &nodes[1], &volume), 2 * GIB);
    assert_eq!(recorded_size(&c, &volume), GIB);
    c.node(&nodes[0]).set_mode(Mode::Up);

    // A replica larger than asked already (a growth that reached it first, with a larger
    // size) is left as it is: the expansion succeeds, and nothing shrinks.
    c.node(&nodes[0])
        .edit_replica(key_of(&volume).as_str(), |r| r.size_bytes = 8 * GIB);
    expand(&c, &volume.volume_id, 4 * GIB).await.unwrap();
    assert_eq!(replica_size(&c, &nodes[0], &volume), 8 * GIB);
    assert_eq!(recorded_size(&c, &volume), 4 * GIB);
}

#[tokio::test]
async fn bad_requests_are_refused_before_any_node_is_asked() {
    let c = cluster(&[("n1", 9, true), ("n2", 5, true)]);
    let volume = c.create(replicated_request("pvc-e", &[])).await.unwrap();
    let missing = format!("replicated#{}", Key::random());
    let err = expand(&c, &missing, 2 * GIB).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = expand(&c, "replicated#nothex", 2 * GIB).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let mut no_range = expand_request(&volume.volume_id, 0);
    no_range.capacity_range = None;
    let err = c
        .svc
        .controller_expand_volume(Request::new(no_range))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut over_limit = expand_request(&volume.volume_id, 4 * GIB);
    over_limit.capacity_range.as_mut().unwrap().limit_bytes = (2 * GIB) as i64;
    let err = c
        .svc
        .controller_expand_volume(Request::new(over_limit))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!((expansions(&c, "n1"), expansions(&c, "n2")), (0, 0));
}
