use std::path::Path;

use super::*;
use crate::auth::Token;
use crate::messages::OpenRequest;

const MIB: u64 = 1 << 20;

fn service(root: &Path) -> Arc<ReplicaService> {
    let token = Token::new(b"snapshot-test-token-0123456789".to_vec()).unwrap();
    ReplicaService::new(root.to_path_buf(), "a".into(), token).unwrap()
}

fn open_request() -> OpenRequest {
    OpenRequest {
        volume: "vol".into(),
        size: 4 * MIB,
        create: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_waits_for_a_copy_then_proceeds() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    let _ = svc
        .create_replica("vol", 4 * MIB, vec!["a".into()])
        .await
        .unwrap();
    let copying = svc.hold_for_copy("vol").await.unwrap();
    let opener = {
        let svc = svc.clone();
        tokio::spawn(async move { svc.open(open_request(), 7).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!opener.is_finished(), "an open went ahead during a copy");
    drop(copying);
    // Held as a connection holds what it opened: a copy outside its engine is refused.
    let _held = opener.await.unwrap().unwrap();
    let err = svc.snapshot_replica("vol", "snap").await.unwrap_err();
    assert!(matches!(err, Error::Busy(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_is_refused_with_busy_when_a_copy_takes_too_long() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    let _ = svc
        .create_replica("vol", 4 * MIB, vec!["a".into()])
        .await
        .unwrap();
    let _copying = svc.hold_for_copy("vol").await.unwrap();
    let started = Instant::now();
    let err = svc.open(open_request(), 7).await.map(drop).unwrap_err();
    assert!(matches!(err, Error::Busy(_)), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_done_copies_are_removed_when_the_service_opens_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let snapshots = dir.path().join(".snapshots");
    std::fs::create_dir_all(snapshots.join(".taking-s1")).unwrap();
    std::fs::create_dir_all(snapshots.join(".removing-s2")).unwrap();
    let svc = service(dir.path());
    assert!(!snapshots.join(".taking-s1").exists());
    assert!(!snapshots.join(".removing-s2").exists());
    assert_eq!(svc.snapshot("s1").await.unwrap(), None);
}
