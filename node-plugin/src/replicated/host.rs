//! `ReplicaHost`: this node's replica service, listening for engines on other nodes (and
//! reached in process by the engines this node runs), with what the rest of the node needs
//! to know of it: where others reach it, its token, and one lock per replicated volume.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use warren_core::lock::{KeyGuard, KeyedLocks};
use warren_core::Error as CoreError;
use warren_replica::auth::Token;
use warren_replica::server::ReplicaService;

use super::replica_error;
use super::running::RunningVolumes;
use crate::error::Result;

/// A replicated volume staged on this node, as its engine sees it now (for metrics).
#[derive(Debug, Clone)]
pub struct StagedVolume {
    /// The replica name (the key of its `replicated#<key>` ID).
    pub volume: String,
    /// The replicas (node names) the volume was staged with: how many it should have.
    pub replicas: Vec<String>,
    pub status: warren_replica::engine::EngineStatus,
}

pub struct ReplicaHost {
    node: String,
    root: PathBuf,
    service: Arc<ReplicaService>,
    endpoint: String,
    token: Token,
    /// One per replicated volume, taken by its replica calls and its node calls alike: a
    /// replica is never deleted while its volume is being staged here.
    locks: KeyedLocks,
    /// The engines of the volumes staged here: the node service starts and stops them,
    /// metrics read them.
    running: Arc<RunningVolumes>,
    serving: tokio::task::JoinHandle<()>,
}

impl Drop for ReplicaHost {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

impl ReplicaHost {
    /// Opens the replica service on `root` (one service per root: a second one is
    /// UNAVAILABLE), listens on `listen`, and serves in a spawned task. `advertise` is the
    /// `HOST:PORT` other nodes reach; a port 0 there (as with a `listen` port of 0) takes
    /// the port actually bound.
    pub async fn start(
        node: &str,
        root: PathBuf,
        listen: SocketAddr,
        advertise: String,
        token: Token,
    ) -> Result<Arc<ReplicaHost>> {
        let service = {
            let (root, node, token) = (root.clone(), node.to_string(), token.clone());
            tokio::task::spawn_blocking(move || ReplicaService::new(root, node, token))
                .await
                .map_err(|e| CoreError::Internal(e.to_string()))?
                .map_err(replica_error)?
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(CoreError::io(format!("listen on {listen}")))?;
        let bound = listener
            .local_addr()
            .map_err(CoreError::io(format!("address of {listen}")))?;
        let endpoint = advertised_endpoint(&advertise, bound)?;
        let served = service.clone();
        let serving = tokio::spawn(async move {
            if let Err(e) = served.serve(listener).await {
                tracing::error!(error = %e, "the replica service stopped listening");
            }
        });
        tracing::info!(%bound, %endpoint, root = %root.display(), "replica service listening");
        Ok(Arc::new(ReplicaHost {
            node: node.to_string(),
            root,
            service,
            endpoint,
            token,
            locks: KeyedLocks::default(),
            running: Arc::default(),
            serving,
        }))
    }

    pub(super) fn running(&self) -> Arc<RunningVolumes> {
        self.running.clone()
    }

    /// Every replicated volume staged on this node, with its engine's status now.
    pub async fn staged(&self) -> Vec<StagedVolume> {
        let mut out = Vec::new();
        for (volume, seen) in self.running.all() {
            out.push(StagedVolume {
                volume,
                replicas: seen.replicas,
                status: seen.engine.status().await,
            });
        }
        out
    }

    /// `HOST:PORT` where other nodes' engines reach this node's replicas.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// This node's name, which is also its replicas' name on the wire.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn service(&self) -> &Arc<ReplicaService> {
        &self.service
    }

    pub fn token(&self) -> &Token {
        &self.token
    }

    /// Where this node mounts the FUSE file systems of its volumes' devices: inside the
    /// replica root (so never outside a configured root), under a name no replica can
    /// have (replica names never start with '.').
    pub fn fuse_dir(&self) -> PathBuf {
        self.root.join(".fuse")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The lock of one replicated volume (by its replica name).
    pub async fn lock(&self, volume: &str) -> KeyGuard {
        self.locks.lock(volume).await
    }
}

/// The endpoint to advertise: `advertise` as given, with a port of 0 replaced by the port
/// bound; an empty `advertise` is the bound address itself (only useful on one machine).
pub fn advertised_endpoint(advertise: &str, bound: SocketAddr) -> Result<String> {
    if advertise.is_empty() {
        return Ok(bound.to_string());
    }
    let bad = || {
        CoreError::InvalidArgument(format!(
            "replica endpoint {advertise:?}: expected HOST:PORT"
        ))
    };
    let (host, port) = advertise.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad().into());
    }
    Ok(match port {
        0 => format!("{host}:{}", bound.port()),
        _ => advertise.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_of_zero_takes_the_bound_one() {
        let bound: SocketAddr = "0.0.0.0:7461".parse().unwrap();
        assert_eq!(
            advertised_endpoint("10.0.0.5:0", bound).unwrap(),
            "10.0.0.5:7461"
        );
        assert_eq!(
            advertised_endpoint("10.0.0.5:7460", bound).unwrap(),
            "10.0.0.5:7460"
        );
        assert_eq!(
            advertised_endpoint("[fd00::5]:0", bound).unwrap(),
            "[fd00::5]:7461"
        );
        assert_eq!(advertised_endpoint("", bound).unwrap(), "0.0.0.0:7461");
        for bad in ["10.0.0.5", ":7460", "host:port", "h:70000"] {
            assert!(advertised_endpoint(bad, bound).is_err(), "{bad}");
        }
    }
}
