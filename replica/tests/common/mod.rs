//! Test fixtures: replica services on loopback, each behind a link that can be cut like a
//! network cable (every connection dropped, new ones refused) and mended.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use warren_replica::auth::Token;
use warren_replica::engine::{Engine, EngineConfig, ReplicaAddress};
use warren_replica::server::ReplicaService;
use warren_replica::BlockTarget;

pub const TOKEN: &str = "test-token-0123456789abcdef";

pub fn token() -> Token {
    Token::new(TOKEN.as_bytes().to_vec()).unwrap()
}

/// A TCP forwarder standing in for the network between the engine and one replica.
pub struct Link {
    pub address: String,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Link {
    pub async fn start(to: String) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::Acquire) {
                    continue; // dropped: the connection is reset
                }
                let to = to.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&to).await {
                        inbound.set_nodelay(true).ok();
                        outbound.set_nodelay(true).ok();
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().unwrap().push(task.abort_handle());
            }
        });
        Link { address, up, conns }
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::Release);
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    pub fn mend(&self) {
        self.up.store(true, Ordering::Release);
    }
}

pub struct Replica {
    pub id: String,
    pub root: PathBuf,
    pub link: Link,
    /// The service itself, for engines that reach it in process.
    pub service: Arc<ReplicaService>,
}

impl Replica {
    pub fn data_path(&self, volume: &str) -> PathBuf {
        self.root.join(volume).join("data")
    }
}

/// Starts `n` replica services ("r0".."r{n-1}") with roots under `dir`, each behind a link.
pub async fn replicas(dir: &Path, n: usize) -> Vec<Replica> {
    let mut out = Vec::new();
    for i in 0..n {
        let id = format!("r{i}");
        let root = dir.join(&id);
        let service = ReplicaService::new(root.clone(), id.clone(), token()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let direct = listener.local_addr().unwrap().to_string();
        tokio::spawn(service.clone().serve(listener));
        let link = Link::start(direct).await;
        out.push(Replica {
            id,
            root,
            link,
            service,
        });
    }
    out
}

pub fn config(volume: &str, size: u64, replicas: &[Replica]) -> EngineConfig {
    let addresses = replicas
        .iter()
        .map(|r| ReplicaAddress {
            replica: r.id.clone(),
            address: r.link.address.clone(),
        })
        .collect();
    let mut config = EngineConfig::new(volume, size, addresses, token());
    config.io_timeout = Duration::from_secs(2);
    config.heal_interval = Duration::from_millis(200);
    config
}

/// A deterministic 4 KiB block: its index and a sequence number, repeated.
pub fn block(index: u64, seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    while out.len() < 4096 {
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
    }
    out
}

/// Writes `block(i, seq)` to each block `i`.
pub async fn write_blocks(engine: &Engine, blocks: impl Iterator<Item = u64>, seq: u64) {
    for i in blocks {
        engine
            .write(i * 4096, Bytes::from(block(i, seq)), false)
            .await
            .unwrap_or_else(|e| panic!("write of block {i}: {e}"));
    }
}

/// Every block `i` reads back as `block(i, seq)`.
pub async fn check_blocks(engine: &Engine, blocks: impl Iterator<Item = u64>, seq: u64) {
    for i in blocks {
        let data = engine.read(i * 4096, 4096).await.unwrap();
        assert!(data == block(i, seq), "block {i} is not seq {seq}");
    }
}

/// `engine` was taken over: a write fails (fenced, or its replicas gone) and the engine
/// has stopped serving for good.
pub async fn assert_fenced(engine: &Engine) {
    let err = engine
        .write(4096, Bytes::from(block(1, 99)), false)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            warren_replica::Error::Unavailable(_) | warren_replica::Error::Fenced(_)
        ),
        "{err}"
    );
    assert!(engine.status().await.failed.is_some());
}

/// Waits until `check` holds, for at most `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The replicas' data files are byte-identical.
pub fn assert_identical(volume: &str, replicas: &[&Replica]) {
    let first = std::fs::read(replicas[0].data_path(volume)).unwrap();
    for other in &replicas[1..] {
        let bytes = std::fs::read(other.data_path(volume)).unwrap();
        assert!(
            bytes == first,
            "replica {} differs from {}",
            other.id,
            replicas[0].id
        );
    }
}
