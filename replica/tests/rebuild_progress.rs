//! A rebuild's progress, as status readers see it while it runs: bytes copied of bytes to
//! copy, per replica, growing, and gone from the board once the replica is back in sync.

mod common;

use bytes::Bytes;
use common::*;
use warren_replica::engine::Engine;
use warren_replica::BlockTarget;

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_rebuild_shows_bytes_copied_of_bytes_to_copy_until_it_is_in_sync() {
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas(dir.path(), 2).await;
    let mut cfg = config("progress", 32 * MIB, &replicas);
    cfg.create = true;
    // 32 MiB at 16 MiB/s: about 2 s, long enough to look at it half-way.
    cfg.rebuild_rate = 16 * MIB;
    let engine = Engine::start(cfg).await.unwrap();
    assert!(
        engine.rebuild_progress().is_empty(),
        "nothing to rebuild yet"
    );
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

    // Sampled while it runs: the same rebuild, its counter only going up, never past
    // what it has to copy (every region was written: all 32 MiB).
    let started = std::time::Instant::now();
    let mut samples = Vec::new();
    loop {
        let status = engine.status().await;
        if status.members.len() == 2 {
            break;
        }
        let running = engine.rebuild_progress();
        if let Some(p) = running.first() {
            assert_eq!(running.len(), 1, "{running:?}");
            assert_eq!(p.replica, "r1");
            assert_eq!(p.bytes_total, 32 * MIB, "{p:?}");
            assert!(p.bytes_done <= p.bytes_total, "{p:?}");
            let in_status = engine.status().await.rebuilds;
            assert!(
                in_status.len() == 1
                    && in_status[0].replica == "r1"
                    && in_status[0].bytes_total == p.bytes_total,
                "in the engine's status too: {in_status:?}"
            );
            samples.push(p.bytes_done);
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "no rebuild"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        samples.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {samples:?}"
    );
    assert!(
        samples.iter().any(|&done| done > 0 && done < 32 * MIB),
        "never seen half-way: {samples:?}"
    );
    // Back in sync: off the board; the finished rebuild copied what it said it would.
    eventually(5, "the rebuild leaves the board", || async {
        engine.rebuild_progress().is_empty() && engine.status().await.rebuilds.is_empty()
    })
    .await;
    let last = engine.status().await.last_rebuild.unwrap();
    assert_eq!(last.bytes, 32 * MIB, "{last:?}");
    engine.close().await.unwrap();
}
