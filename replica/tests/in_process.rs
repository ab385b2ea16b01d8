//! The engine reaching its node's replica in process (`EngineConfig::in_process`), next to
//! remote replicas over TCP: same data, same generations, same fencing.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use warren_replica::engine::{Engine, EngineConfig};
use warren_replica::server::ReplicaService;
use warren_replica::{BlockTarget, Error};

const MIB: u64 = 1 << 20;

/// A new volume whose engine keeps r0 (the local replica) in process, r1 over TCP.
fn r0_in_process(replicas: &[Replica]) -> EngineConfig {
    let mut cfg = config("vol", 16 * MIB, replicas);
    cfg.create = true;
    cfg.local = Some("r0".into());
    cfg.in_process = Some(replicas[0].service.clone());
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_replica_takes_every_write_without_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas(dir.path(), 2).await;
    let engine = Engine::start(r0_in_process(&replicas)).await.unwrap();
    assert_eq!(engine.status().await.members, vec!["r0", "r1"]);
    // r0's network is cut: had the engine reached r0 over TCP, the next write would cut
    // it out of the membership. In process, it stays a member.
    replicas[0].link.cut();
    write_blocks(&engine, 0..64, 1).await;
    let big = Bytes::from(vec![0x5au8; 5 * MIB as usize]);
    engine.write(8 * MIB, big.clone(), true).await.unwrap();
    engine.flush().await.unwrap();
    assert_eq!(engine.status().await.members, vec!["r0", "r1"]);
    check_blocks(&engine, 0..64, 1).await;
    assert_eq!(engine.read(8 * MIB, 5 * MIB as usize).await.unwrap(), big);
    engine.close().await.unwrap();
    assert_identical("vol", &[&replicas[0], &replicas[1]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_over_tcp_fences_the_in_process_one() {
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas(dir.path(), 2).await;
    let first = Engine::start(r0_in_process(&replicas)).await.unwrap();
    write_blocks(&first, 0..20, 1).await;
    // The volume moves: an engine elsewhere opens both replicas over the network and
    // takes the volume over (the first one never closed: its node is presumed gone).
    let second = Engine::start(config("vol", 16 * MIB, &replicas))
        .await
        .unwrap();
    check_blocks(&second, 0..20, 1).await;
    second
        .write(0, Bytes::from(block(0, 2)), false)
        .await
        .unwrap();
    // The in-process session was taken over on r0 and r1 alike: nothing more from it.
    assert_fenced(&first).await;
    assert!(second.read(4096, 4096).await.unwrap() == block(1, 1));
    assert!(second.read(0, 4096).await.unwrap() == block(0, 2));
    second.close().await.unwrap();
    assert_identical("vol", &[&replicas[0], &replicas[1]]);
}

#[tokio::test]
async fn one_replica_root_has_one_service() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r0");
    let first = ReplicaService::new(root.clone(), "r0".into(), token()).unwrap();
    let err = ReplicaService::new(root.clone(), "r0".into(), token()).unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("another replica service"), "{err}");
    drop(Arc::try_unwrap(first).unwrap());
    ReplicaService::new(root, "r0".into(), token()).unwrap();
}
