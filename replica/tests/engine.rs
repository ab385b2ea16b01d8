//! The engine against real replica services on loopback. Replica failures are network
//! cuts (every connection reset); process kills and network namespaces are exercised by
//! the fault tests in driver/tests/replication_faults.rs.

mod common;

use bytes::Bytes;
use common::*;
use warren_replica::engine::Engine;
use warren_replica::volume::MARK_AHEAD;
use warren_replica::{BlockTarget, Error};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas(dir.path(), 3).await;
    let mut config = config("vol", 32 * MIB, &replicas);
    config.create = true;
    let engine = Engine::start(config).await.unwrap();
    assert_eq!(engine.status().await.members, vec!["r0", "r1", "r2"]);
    write_blocks(&engine, (0..64).map(|i| i * 37), 1).await;
    // A write larger than one frame, across regions.
    let big = Bytes::from(vec![0xc3u8; 6 * MIB as usize]);
    engine.write(16 * MIB, big.clone(), true).await.unwrap();
    assert_eq!(engine.read(16 * MIB, 6 * MIB as usize).await.unwrap(), big);
    check_blocks(&engine, (0..64).map(|i| i * 37), 1).await;
    // Out of range: refused, nothing written, the volume still healthy.
    assert!(engine
        .write(32 * MIB - 1, Bytes::from_static(b"xy"), false)
        .await
        .is_err());
    engine.discard(16 * MIB, MIB).await.unwrap();
    assert_eq!(engine.read(16 * MIB, 4096).await.unwrap(), vec![0u8; 4096]);
    engine.close().await.unwrap();
    assert_identical("vol", &replicas.iter().collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_replica_is_fenced_then_rebuilt_incrementally_while_online() {
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas(dir.path(), 2).await;
    let mut config = config("vol", 64 * MIB, &replicas);
    config.create = true;
    let engine = Engine::start(config).await.unwrap();
    write_blocks(&engine, 0..256, 1).await;
    let gen_before = engine.status().await.gen;

    replicas[1].link.cut();
    // The next write notices, cuts r1 out under a new generation, and still succeeds.
    write_blocks(&engine, 1000..1010, 2).await;
    let status = engine.status().await;
    assert_eq!(status.members, vec!["r0"]);
    assert!(status.gen > gen_before);
    write_blocks(&engine, 2000..2100, 3).await;

    replicas[1].link.mend();
    eventually(20, "r1 rebuilt", || async {
        let status = engine.status().await;
        status.members.len() == 2 && status.last_rebuild.is_some()
    })
    .await;
    let rebuild = engine.status().await.last_rebuild.unwrap();
    assert!(rebuild.incremental, "{rebuild:?}");
    // Only the regions written while r1 was away (blocks 1000..1010 and 2000..2100 lie
    // in regions 3, 7 and 8), possibly the region of the write that failed, and those
    // marked ahead when the writes ran from region 7 into 8 (a sequential stream).
    assert!(rebuild.regions <= 4 + MARK_AHEAD, "{rebuild:?}");
    check_blocks(&engine, 0..256, 1).await;
    check_blocks(&engine, 1000..1010, 2).await;
    check_blocks(&engine, 2000..2100, 3).await;
    engine.close().await.unwrap();
    assert_identical("vol", &[&replicas[0], &replicas[1]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_replica_cannot_start_the_volume_and_is_rebuilt_later() {
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas(dir.path(), 2).await;
    let mut cfg = config("vol", 32 * MIB, &replicas);
    cfg.create = true;
    let engine = Engine::start(cfg.clone()).await.unwrap();
    write_blocks(&engine, 0..100, 1).await;
    replicas[1].link.cut();
    write_blocks(&engine, 0..100, 2).await;
    assert_eq!(engine.status().await.members, vec!["r0"]);
    engine.close().await.unwrap();

    // r0 (the only holder of seq 2) is away; r1 alone must not serve its seq 1 data.
    replicas[0].link.cut();
    replicas[1].link.mend();
    cfg.create = false;
    let err = Engine::start(cfg.clone()).await.err().expect("must refuse");
    assert!(matches!(err, Error::Unavailable(_)), "{err}");

    // With r0 back, r0 serves and r1 is rebuilt.
    replicas[0].link.mend();
    let engine = Engine::start(cfg.clone()).await.unwrap();
    assert_eq!(engine.status().await.members[0], "r0");
    check_blocks(&engine, 0..100, 2).await;
    eventually(20, "r1 rebuilt", || async {
        engine.status().await.members.len() == 2
    })
    .await;
    engine.close().await.unwrap();
    assert_identical("vol", &[&replicas[0], &replicas[1]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_engine_fences_the_first_and_resyncs_after_its_crash() {
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas(dir.path(), 2).await;
    let mut cfg = config("vol", 16 * MIB, &replicas);
    cfg.create = true;
    let first = Engine::start(cfg.clone()).await.unwrap();
    write_blocks(&first, 0..50, 1).await;
    // The first engine "crashes": it never closes; a second one takes over.
    cfg.create = false;
    let second = Engine::start(cfg).await.unwrap();
    check_blocks(&second, 0..50, 1).await;
    write_blocks(&second, 0..10, 2).await;
    // The first engine can no longer write or read anything.
    assert_fenced(&first).await;
    check_blocks(&second, 0..10, 2).await;
    second.close().await.unwrap();
    assert_identical("vol", &[&replicas[0], &replicas[1]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_rebuild_stays_under_its_rate_while_the_volume_keeps_writing() {
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas(dir.path(), 2).await;
    let mut cfg = config("vol", 32 * MIB, &replicas);
    cfg.create = true;
    cfg.rebuild_rate = 16 * MIB;
    let engine = Engine::start(cfg).await.unwrap();
    // r1 goes away; then every region gets non-zero data, so the rebuild must copy (not
    // discard) all 32 MiB: at 16 MiB/s that takes at least 2 s.
    replicas[1].link.cut();
    for region in 0..32 {
        engine
            .write(
                region * MIB,
                Bytes::from(vec![region as u8 + 1; MIB as usize]),
                false,
            )
            .await
            .unwrap();
    }
    assert_eq!(engine.status().await.members, vec!["r0"]);
    replicas[1].link.mend();
    let started = std::time::Instant::now();
    let mut writes = 0u64;
    loop {
        let status = engine.status().await;
        if status.members.len() == 2 && status.last_rebuild.is_some() {
            break;
        }
        // The volume's own writes keep being served during the rebuild.
        let block_index = 8 * 256 + writes % 64; // inside region 8
        write_blocks(&engine, block_index..block_index + 1, writes + 100).await;
        writes += 1;
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "no rebuild"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let stats = engine.status().await.last_rebuild.unwrap();
    assert!(stats.bytes >= 32 * MIB, "{stats:?}");
    assert!(
        stats.elapsed >= std::time::Duration::from_millis(1900),
        "32 MiB rebuilt in {:?} despite a 16 MiB/s limit",
        stats.elapsed
    );
    assert!(writes > 10, "only {writes} writes during the rebuild");
    engine.close().await.unwrap();
    assert_identical("vol", &[&replicas[0], &replicas[1]]);
}
