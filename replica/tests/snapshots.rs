//! Snapshots of replicated volumes and seeding volumes from files, against real replica
//! services on loopback and real files: copies taken through a running engine are one
//! point in the write order on every member; a replica no engine holds is copied on its
//! own, never while an engine writes; a volume seeded from a file with holes reads back
//! the file's bytes on every replica.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use warren_replica::engine::Engine;
use warren_replica::seed::seed_from_file;
use warren_replica::server::ReplicaService;
use warren_replica::{BlockTarget, Error};

const MIB: u64 = 1 << 20;

fn snapshot_data(replica: &Replica, name: &str) -> Vec<u8> {
    std::fs::read(replica.root.join(".snapshots").join(name).join("data")).unwrap()
}

/// The sequence number `common::block` wrote into a 4 KiB block (0 for a block never
/// written).
fn seq_of(block: &[u8]) -> u64 {
    u64::from_le_bytes(block[8..16].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_through_the_engine_is_one_point_in_the_write_order_on_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas(dir.path(), 3).await;
    let mut config = config("vol", 16 * MIB, &replicas);
    config.create = true;
    let engine = Engine::start(config).await.unwrap();

    // Pattern A, a snapshot, pattern B: the copies hold A, the volume B.
    write_blocks(&engine, 0..256, 1).await;
    let copies = engine.snapshot("snap-a").await.unwrap();
    assert_eq!(copies.len(), 3);
    let point = &copies[0].point;
    for copy in &copies {
        assert!(copy.clean && copy.point == *point && copy.volume == "vol");
        assert_eq!(copy.members, vec!["r0", "r1", "r2"]);
        assert_eq!(copy.size, 16 * MIB);
    }
    write_blocks(&engine, 0..256, 2).await;
    check_blocks(&engine, 0..256, 2).await;
    for replica in &replicas {
        let data = snapshot_data(replica, "snap-a");
        assert_eq!(data.len() as u64, 16 * MIB);
        for i in 0..256u64 {
            let at = (i * 4096) as usize;
            assert!(
                data[at..at + 4096] == block(i, 1),
                "{}: block {i}",
                replica.id
            );
        }
        assert!(data[256 * 4096..].iter().all(|&b| b == 0));
    }
    // Idempotent: the same copies again, untouched.
    let again = engine.snapshot("snap-a").await.unwrap();
    assert!(again.iter().all(|c| c.point == *point));
    assert!(snapshot_data(&replicas[0], "snap-a")[..4096] == block(0, 1));

    // While a writer runs: rounds of writes over blocks 0..N, one write at a time, so at
    // any point the blocks read round k up to some block and round k-1 after it.
    let engine = Arc::new(engine);
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    const N: u64 = 512;
    write_blocks(&engine, 0..N, 10).await;
    let writer = {
        let (engine, stop, rounds) = (engine.clone(), stop.clone(), rounds.clone());
        tokio::spawn(async move {
            let mut round = 11;
            while !stop.load(Ordering::Acquire) {
                for i in 0..N {
                    engine
                        .write(i * 4096, Bytes::from(block(i, round)), false)
                        .await
                        .unwrap();
                }
                rounds.store(round, Ordering::Release);
                round += 1;
            }
        })
    };
    eventually(20, "the writer made two rounds", || async {
        rounds.load(Ordering::Acquire) >= 12
    })
    .await;
    let copies = engine.snapshot("snap-b").await.unwrap();
    stop.store(true, Ordering::Release);
    writer.await.unwrap();
    assert_eq!(copies.len(), 3);
    let first = snapshot_data(&replicas[0], "snap-b");
    for replica in &replicas[1..] {
        assert!(
            snapshot_data(replica, "snap-b") == first,
            "the copy on {} differs from r0's",
            replica.id
        );
    }
    let seqs: Vec<u64> = (0..N as usize)
        .map(|i| seq_of(&first[i * 4096..(i + 1) * 4096]))
        .collect();
    let (newest, oldest) = (seqs[0], seqs[N as usize - 1]);
    assert!(oldest >= 11 && newest - oldest <= 1, "{newest} {oldest}");
    assert!(
        seqs.windows(2).all(|w| w[0] >= w[1]),
        "the copy is not one point of the write order: {seqs:?}"
    );
    for (i, s) in seqs.iter().enumerate() {
        assert!(first[i * 4096..(i + 1) * 4096] == block(i as u64, *s));
    }
    engine.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_is_gone_is_cut_out_and_the_others_take_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas(dir.path(), 2).await;
    let mut config = config("vol", 8 * MIB, &replicas);
    config.create = true;
    let engine = Engine::start(config).await.unwrap();
    write_blocks(&engine, 0..16, 1).await;
    replicas[1].link.cut();
    let copies = engine.snapshot("snap").await.unwrap();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].replica, "r0");
    assert_eq!(engine.status().await.members, vec!["r0"]);
    assert!(!replicas[1].root.join(".snapshots/snap").exists());
    write_blocks(&engine, 0..16, 2).await;
    engine.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_replica_is_copied_on_its_own_and_never_while_an_engine_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas(dir.path(), 2).await;
    for r in &replicas {
        let _ = r
            .service
            .create_replica("vol", 64 * MIB, vec!["r0".into(), "r1".into()])
            .await
            .unwrap();
    }
    let config = config("vol", 64 * MIB, &replicas);
    let engine = Engine::start(config.clone()).await.unwrap();
    // Enough data that a copy without reflinks takes a while.
    let data = Bytes::from(vec![0x5au8; 4 * MIB as usize]);
    for i in 0..16 {
        engine
            .write(i * 4 * MIB, data.clone(), false)
            .await
            .unwrap();
    }
    let svc = &replicas[0].service;
    let err = svc.snapshot_replica("vol", "snap").await.unwrap_err();
    assert!(matches!(err, Error::Busy(_)), "{err}");
    let gen = engine.status().await.gen;
    engine.close().await.unwrap();
    drop(engine);

    let copy = svc.snapshot_replica("vol", "snap").await.unwrap();
    assert!(copy.clean);
    assert_eq!((copy.gen, copy.replica.as_str()), (gen, "r0"));
    assert!(
        snapshot_data(&replicas[0], "snap") == std::fs::read(replicas[0].data_path("vol")).unwrap()
    );
    // Idempotent.
    assert_eq!(svc.snapshot_replica("vol", "snap").await.unwrap(), copy);

    // An engine started while a copy runs waits for it (or is refused and retries): when
    // its start returns, the copy is whole and holds what the replica held before.
    let copier = {
        let svc = svc.clone();
        tokio::spawn(async move { svc.snapshot_replica("vol", "snap2").await })
    };
    let engine = loop {
        match Engine::start(config.clone()).await {
            Ok(engine) => break engine,
            Err(Error::Unavailable(_) | Error::Busy(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    let copy2 = match copier.await.unwrap() {
        Ok(copy) => copy,
        // The engine won the race: the copy is refused, never taken under its writes.
        Err(Error::Busy(_)) => {
            engine.close().await.unwrap();
            return;
        }
        Err(e) => panic!("{e}"),
    };
    engine
        .write(0, Bytes::from(vec![1u8; 4096]), false)
        .await
        .unwrap();
    assert!(copy2.clean);
    let taken = snapshot_data(&replicas[0], "snap2");
    assert!(taken[..4096].iter().all(|&b| b == 0x5a));
    assert!(taken == snapshot_data(&replicas[0], "snap"));
    engine.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_are_idempotent_and_bad_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas(dir.path(), 1).await;
    let svc = &replicas[0].service;
    let _ = svc
        .create_replica("vol", 4 * MIB, vec!["r0".into()])
        .await
        .unwrap();
    svc.snapshot_replica("vol", "snap").await.unwrap();
    assert!(svc.snapshot("snap").await.unwrap().is_some());
    svc.delete_snapshot("snap").await.unwrap();
    svc.delete_snapshot("snap").await.unwrap();
    svc.delete_snapshot("never-was").await.unwrap();
    assert_eq!(svc.snapshot("snap").await.unwrap(), None);
    assert!(!replicas[0].root.join(".snapshots/snap").exists());
    // A volume's snapshot outlives it.
    svc.snapshot_replica("vol", "kept").await.unwrap();
    svc.remove_replica("vol").await.unwrap();
    assert!(svc.snapshot("kept").await.unwrap().is_some());
    let err = svc.snapshot_replica("vol", "other").await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");

    for bad in [
        "",
        ".",
        "..",
        "../x",
        "a/b",
        ".snapshots",
        ".taking-x",
        "a\0b",
    ] {
        let err = svc.snapshot_replica("vol", bad).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{bad:?}: {err}");
        let err = svc.delete_snapshot(bad).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{bad:?}: {err}");
    }
    let err = svc.snapshot_replica("../vol", "snap").await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let _ = svc
        .create_replica("vol2", 4 * MIB, vec!["r0".into()])
        .await
        .unwrap();
    let mut config = config("vol2", 4 * MIB, &replicas);
    config.create = true;
    let engine = Engine::start(config).await.unwrap();
    let err = engine.snapshot("../x").await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    // A name taken by another volume's copy is not overwritten.
    let err = engine.snapshot("kept").await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    engine.close().await.unwrap();
}

/// A 24 MiB file: data at its start, a hole, an explicit all-zero MiB, a few scattered
/// blocks, and data at its very end.
fn holey_file(path: &std::path::Path) -> Vec<u8> {
    let file = std::fs::File::create(path).unwrap();
    let size = 24 * MIB;
    file.set_len(size).unwrap();
    file.write_all_at(&vec![0x11u8; MIB as usize + 4096], 0)
        .unwrap();
    file.write_all_at(&vec![0u8; MIB as usize], 8 * MIB)
        .unwrap();
    for i in 0..7u64 {
        file.write_all_at(&block(i, 3), 12 * MIB + i * 300 * 1024 / 4096 * 4096)
            .unwrap();
    }
    file.write_all_at(&[0x22u8; 4096], size - 4096).unwrap();
    file.sync_all().unwrap();
    std::fs::read(path).unwrap()
}

async fn made(replicas: &[Replica], volume: &str, size: u64) {
    let members: Vec<String> = replicas.iter().map(|r| r.id.clone()).collect();
    for r in replicas {
        let _ = r
            .service
            .create_replica(volume, size, members.clone())
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_seeded_from_a_file_with_holes_reads_back_the_file_on_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas(dir.path(), 2).await;
    let source = dir.path().join("image");
    let bytes = holey_file(&source);
    made(&replicas, "seeded", 32 * MIB).await;
    let mut config = config("seeded", 32 * MIB, &replicas);
    // This node's replica in process, as the node plugin seeds.
    config.in_process = Some(replicas[0].service.clone());
    let outcome = seed_from_file(config.clone(), &source).await.unwrap();
    assert_eq!(outcome.source_bytes, 24 * MIB);
    assert!(
        outcome.written_bytes >= MIB + 4096 && outcome.written_bytes <= 12 * MIB,
        "{outcome:?}"
    );
    let check = |what: &str| {
        for r in &replicas {
            let data = std::fs::read(r.data_path("seeded")).unwrap();
            assert_eq!(data.len() as u64, 32 * MIB);
            assert!(data[..bytes.len()] == bytes[..], "{what}: {} differs", r.id);
            assert!(
                data[bytes.len()..].iter().all(|&b| b == 0),
                "{what}: {}",
                r.id
            );
            let state: serde_json::Value =
                serde_json::from_slice(&std::fs::read(r.root.join("seeded/meta.json")).unwrap())
                    .unwrap();
            assert_eq!(state["clean"], true, "{what}: {}", r.id);
        }
    };
    check("first seed");
    // Repeated on the same target: the same bytes.
    let again = seed_from_file(config.clone(), &source).await.unwrap();
    assert_eq!(again, outcome);
    check("second seed");
    // Through an engine, as a stage would read it.
    let engine = Engine::start(config).await.unwrap();
    let read = engine.read(0, 24 * MIB as usize).await.unwrap();
    assert!(read[..] == bytes[..]);
    engine.close().await.unwrap();

    // A source larger than the volume is refused before anything is written.
    made(&replicas, "small", 16 * MIB).await;
    let err = seed_from_file(common::config("small", 16 * MIB, &replicas), &source)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_copy_seeds_a_new_volume() {
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas(dir.path(), 2).await;
    made(&replicas, "origin", 8 * MIB).await;
    let engine = Engine::start(config("origin", 8 * MIB, &replicas))
        .await
        .unwrap();
    write_blocks(&engine, (0..64).map(|i| i * 31), 4).await;
    engine.snapshot("snap").await.unwrap();
    write_blocks(&engine, (0..64).map(|i| i * 31), 5).await;
    engine.close().await.unwrap();

    let service: &Arc<ReplicaService> = &replicas[1].service;
    let (meta, data) = service.snapshot_data("snap").await.unwrap();
    assert_eq!(meta.volume, "origin");
    made(&replicas, "restored", 8 * MIB).await;
    seed_from_file(config("restored", 8 * MIB, &replicas), &data)
        .await
        .unwrap();
    let engine = Engine::start(config("restored", 8 * MIB, &replicas))
        .await
        .unwrap();
    check_blocks(&engine, (0..64).map(|i| i * 31), 4).await;
    engine.close().await.unwrap();
    let err = service.snapshot_data("nothing").await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
}
