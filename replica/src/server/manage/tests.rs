use std::time::Duration;

use super::*;
use crate::auth::Token;
use crate::client::ReplicaClient;
use crate::engine::{Engine, EngineConfig, ReplicaAddress};
use crate::BlockTarget;

const MIB: u64 = 1 << 20;

fn token() -> Token {
    Token::new(b"manage-test-token-0123456789".to_vec()).unwrap()
}

fn service(root: &Path, name: &str) -> Arc<ReplicaService> {
    ReplicaService::new(root.to_path_buf(), name.into(), token()).unwrap()
}

fn ab() -> Vec<String> {
    vec!["a".into(), "b".into()]
}

#[tokio::test]
async fn create_commits_generation_one_clean_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), "a");
    assert_eq!(svc.replica_state("vol").await.unwrap(), None);
    let CreateOutcome::Created(state) = svc.create_replica("vol", 8 * MIB, ab()).await.unwrap()
    else {
        panic!("not created")
    };
    assert_eq!((state.gen, state.synced_gen, state.size), (1, 1, 8 * MIB));
    assert_eq!(state.members, ab());
    assert!(state.clean && state.in_sync() && !state.rebuilding);
    // On disk as well: a service restarted on this root sees the same.
    assert_eq!(
        read_state(&dir.path().join("vol")).unwrap(),
        Some(state.clone())
    );
    assert_eq!(svc.replica_state("vol").await.unwrap(), Some(state.clone()));
    assert_eq!(
        svc.create_replica("vol", 8 * MIB, ab()).await.unwrap(),
        CreateOutcome::Existed(state.clone())
    );
    assert_eq!(
        svc.create_replica("vol", 16 * MIB, ab()).await.unwrap(),
        CreateOutcome::OtherSize(state)
    );
}

#[tokio::test]
async fn another_size_on_disk_is_reported_without_opening_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let svc = service(dir.path(), "a");
        let _ = svc.create_replica("vol", 8 * MIB, ab()).await.unwrap();
    }
    let svc = service(dir.path(), "a"); // a restart: nothing open
    let outcome = svc.create_replica("vol", 4 * MIB, ab()).await.unwrap();
    assert!(matches!(outcome, CreateOutcome::OtherSize(s) if s.size == 8 * MIB));
    assert!(lock(&svc.volumes).is_empty());
}

#[tokio::test]
async fn bad_input_is_refused_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), "a");
    for (volume, size, members) in [
        ("../x", 8 * MIB, ab()),
        (".hidden", 8 * MIB, ab()),
        ("vol", 8 * MIB, vec!["b".into()]), // this replica is not a member
        ("vol", 8 * MIB, vec!["a".into(), "../b".into()]),
        ("vol", 0, ab()),
        ("vol", 4097, ab()),
        ("vol", MAX_VOLUME_SIZE + 4096, ab()),
    ] {
        let err = svc.create_replica(volume, size, members).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument(_)),
            "{volume} {size}: {err}"
        );
    }
    for bad in ["../x", "a/b", ""] {
        assert!(matches!(
            svc.remove_replica(bad).await,
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            svc.replica_state(bad).await,
            Err(Error::InvalidArgument(_))
        ));
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from(".lock")]);
}

#[tokio::test]
async fn an_unfinished_creation_is_finished_by_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    // Stopped before its metadata: a directory with a data file only.
    std::fs::create_dir_all(dir.path().join("v1")).unwrap();
    std::fs::write(dir.path().join("v1/data"), b"junk").unwrap();
    // Stopped after its metadata, before the commit: generation 0.
    ReplicaVolume::open(dir.path(), "a", "v2", 8 * MIB, true).unwrap();
    let svc = service(dir.path(), "a");
    for volume in ["v1", "v2"] {
        let outcome = svc.create_replica(volume, 8 * MIB, ab()).await.unwrap();
        assert!(
            matches!(&outcome, CreateOutcome::Created(s) if s.gen == 1),
            "{volume}: {outcome:?}"
        );
        let len = std::fs::metadata(dir.path().join(volume).join("data"))
            .unwrap()
            .len();
        assert_eq!(len, 8 * MIB);
    }
}

#[tokio::test]
async fn remove_is_refused_while_a_session_holds_it_and_removes_only_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), "a");
    let _ = svc.create_replica("vol", 8 * MIB, ab()).await.unwrap();
    let _ = svc.create_replica("other", 8 * MIB, ab()).await.unwrap();
    let client = ReplicaClient::in_process(svc.clone(), Duration::from_secs(5));
    client.open("vol", 8 * MIB, false).await.unwrap();
    let err = svc.remove_replica("vol").await.unwrap_err();
    assert!(matches!(err, Error::Busy(_)), "{err}");
    assert!(dir.path().join("vol/meta.json").exists());
    drop(client);
    svc.remove_replica("vol").await.unwrap();
    assert!(!dir.path().join("vol").exists());
    assert!(!removing_dir(dir.path(), "vol").exists());
    assert_eq!(svc.replica_state("vol").await.unwrap(), None);
    assert!(dir.path().join("other/meta.json").exists());
    svc.remove_replica("vol").await.unwrap(); // missing: success
                                              // A removal that stopped after its rename is finished by the retry.
    std::fs::rename(dir.path().join("other"), removing_dir(dir.path(), "other")).unwrap();
    lock(&svc.volumes).remove("other");
    svc.remove_replica("other").await.unwrap();
    assert!(!removing_dir(dir.path(), "other").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_engine_finds_created_replicas_in_sync_and_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        service(&dir.path().join("a"), "a"),
        service(&dir.path().join("b"), "b"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let served = tokio::spawn(b.clone().serve(listener));
    for svc in [&a, &b] {
        let _ = svc.create_replica("vol", 8 * MIB, ab()).await.unwrap();
    }
    let replicas = vec![
        ReplicaAddress {
            replica: "a".into(),
            address: "unused: in process".into(),
        },
        ReplicaAddress {
            replica: "b".into(),
            address,
        },
    ];
    let mut config = EngineConfig::new("vol", 8 * MIB, replicas, token());
    config.local = Some("a".into());
    config.in_process = Some(a.clone());
    let engine = Engine::start(config).await.unwrap();
    let status = engine.status().await;
    assert_eq!((status.gen, status.members), (2, ab()));
    engine
        .write(0, bytes::Bytes::from(vec![7u8; 4096]), true)
        .await
        .unwrap();
    engine.close().await.unwrap();
    drop(engine);
    served.abort();
    for (svc, name) in [(&a, "a"), (&b, "b")] {
        let state = svc.replica_state("vol").await.unwrap().unwrap();
        assert!(state.clean && state.in_sync(), "{name}: {state:?}");
    }
}

#[tokio::test]
async fn grow_replica_is_idempotent_never_shrinks_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    {
        let svc = service(dir.path(), "a");
        let _ = svc.create_replica("vol", 8 * MIB, ab()).await.unwrap();
    }
    let svc = service(dir.path(), "a"); // a restart: the replica is not open
    let grown = svc.grow_replica("vol", 16 * MIB).await.unwrap();
    assert_eq!(
        (grown.size, grown.gen, grown.members.clone()),
        (16 * MIB, 1, ab())
    );
    assert_eq!(svc.grow_replica("vol", 16 * MIB).await.unwrap(), grown);
    // Smaller than it is: success, at its own size (never shrunk).
    assert_eq!(svc.grow_replica("vol", 8 * MIB).await.unwrap(), grown);
    assert_eq!(svc.replica_state("vol").await.unwrap(), Some(grown.clone()));
    for (volume, size) in [
        ("vol", 0),
        ("vol", 16 * MIB + 512),
        ("vol", MAX_VOLUME_SIZE + 4096),
        ("../x", 16 * MIB),
    ] {
        let err = svc.grow_replica(volume, size).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument(_)),
            "{volume} {size}: {err}"
        );
    }
    assert!(matches!(
        svc.grow_replica("missing", 16 * MIB).await,
        Err(Error::NotFound(_))
    ));
    assert!(!dir.path().join("missing").exists());
    // On disk: a later service sees the grown replica.
    drop(svc);
    let svc = service(dir.path(), "a");
    assert_eq!(svc.replica_state("vol").await.unwrap(), Some(grown));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_volume_grows_once_every_replica_has_and_a_later_engine_starts_grown() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        service(&dir.path().join("a"), "a"),
        service(&dir.path().join("b"), "b"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let served = tokio::spawn(b.clone().serve(listener));
    for svc in [&a, &b] {
        let _ = svc.create_replica("vol", 8 * MIB, ab()).await.unwrap();
    }
    let replicas = vec![
        ReplicaAddress {
            replica: "a".into(),
            address: "unused: in process".into(),
        },
        ReplicaAddress {
            replica: "b".into(),
            address,
        },
    ];
    // The volume context keeps the size at creation: 8 MiB, whatever happens later.
    let mut config = EngineConfig::new("vol", 8 * MIB, replicas, token());
    config.local = Some("a".into());
    config.in_process = Some(a.clone());
    let engine = Engine::start(config.clone()).await.unwrap();
    let block = |byte: u8| bytes::Bytes::from(vec![byte; 4096]);
    engine.write(8 * MIB - 4096, block(1), false).await.unwrap();

    // One replica grown (the other node not reached yet): the engine stays as it is.
    a.grow_replica("vol", 16 * MIB).await.unwrap();
    assert_eq!(engine.grow_to_replicas().await.unwrap(), 8 * MIB);
    assert!(engine.write(8 * MIB, block(2), false).await.is_err());
    // Both grown, while the engine holds them open: it serves the new end.
    b.grow_replica("vol", 16 * MIB).await.unwrap();
    assert_eq!(engine.grow_to_replicas().await.unwrap(), 16 * MIB);
    assert_eq!(engine.grow_to_replicas().await.unwrap(), 16 * MIB);
    assert_eq!(engine.size(), 16 * MIB);
    engine.write(16 * MIB - 4096, block(3), true).await.unwrap();
    assert_eq!(engine.read(8 * MIB - 4096, 4096).await.unwrap(), block(1));
    assert_eq!(engine.status().await.members, ab(), "nobody was cut out");
    // Told to grow beyond what they hold, the engine grows its replicas itself.
    assert_eq!(engine.grow(24 * MIB).await.unwrap(), 24 * MIB);
    for svc in [&a, &b] {
        let state = svc.replica_state("vol").await.unwrap().unwrap();
        assert_eq!(state.size, 24 * MIB);
    }
    assert!(matches!(
        engine.grow(1000).await,
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(engine.size(), 24 * MIB);
    engine.close().await.unwrap();
    drop(engine);

    // A later engine, configured from the old context, starts at the replicas' size.
    let engine = Engine::start(config).await.unwrap();
    assert_eq!(engine.size(), 24 * MIB);
    assert_eq!(engine.read(16 * MIB - 4096, 4096).await.unwrap(), block(3));
    assert_eq!(engine.read(8 * MIB - 4096, 4096).await.unwrap(), block(1));
    engine.close().await.unwrap();
    served.abort();
}
