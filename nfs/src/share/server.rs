//! The listener: one TCP port (NFS, MOUNT and portmap GETPORT on it) for every volume the
//! node shares, on a runtime of its own.
//!
//! Why a runtime (and thread) of its own: `nfs3_server` spawns a task per connection and
//! offers no way to stop them; dropping the runtime is what closes every client connection
//! on shutdown, and it keeps NFS traffic from starving the node's CSI service.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nfs3_server::tcp::{NFSTcp, NFSTcpListener};
use tokio::sync::oneshot;

use super::export::{Export, Exports, Usage};
use super::fs::ShareFs;
use super::key::ExportKey;
use crate::{Error, Result};

pub struct ShareServer {
    exports: Arc<Exports>,
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ShareServer {
    /// Listens on `addr` (IPv4; port 0 picks one). `generation` goes into every file handle
    /// and must be the same on every start of this node's share, or clients' handles turn
    /// stale (see `load_or_create_generation`). Blocks until the port is bound (a few
    /// milliseconds); `shutdown` (and drop) block until the share's runtime is gone, up to
    /// 5 s for flushes in flight — from async code, call them in `spawn_blocking`.
    pub fn bind(addr: SocketAddr, generation: u64) -> Result<ShareServer> {
        let unreachable = |message: String| Error::Unreachable {
            server: addr.to_string(),
            message,
        };
        if !addr.is_ipv4() {
            // nfs3_server parses "ip:port" by the first ':'.
            return Err(Error::InvalidArgument(format!(
                "the share listens on IPv4 only, not {addr}"
            )));
        }
        let exports = Arc::new(Exports::default());
        let fs = ShareFs::new(exports.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("warren-share".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("warren-share")
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match NFSTcpListener::bind_with_generation(
                        &addr.to_string(),
                        fs,
                        generation,
                    )
                    .await
                    {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("cannot listen: {e}")));
                            return;
                        }
                    };
                    let local =
                        SocketAddr::new(listener.get_listen_ip(), listener.get_listen_port());
                    let _ = ready_tx.send(Ok(local));
                    tokio::select! {
                        () = serve(&listener) => {}
                        _ = stop_rx => {}
                    }
                });
                // Drops every connection task; blocking work in flight (an fsync) may
                // finish first.
                runtime.shutdown_timeout(Duration::from_secs(5));
            })
            .map_err(|e| unreachable(format!("thread: {e}")))?;
        let local_addr = match ready_rx.recv() {
            Ok(Ok(a)) => a,
            Ok(Err(message)) => {
                let _ = thread.join();
                return Err(unreachable(message));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(unreachable("the share thread died".into()));
            }
        };
        tracing::info!(%local_addr, generation, "NFS share listening");
        Ok(ShareServer {
            exports,
            local_addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `dir` as `/<key>`. The same key and directory again is a no-op; the key for
    /// another directory is refused. `dir` must be on a file system that gives file
    /// handles (ext4, xfs, btrfs), and the process needs CAP_DAC_READ_SEARCH.
    pub fn export(&self, key: &str, dir: &Path) -> Result<()> {
        let key = ExportKey::parse(key)?;
        let export = Export::open(key, dir)?;
        tracing::info!(export = ?export.key, dir = %dir.display(), "exporting");
        self.exports.insert(export)
    }

    /// Stops serving the key: new MOUNTs fail, and every handle of it is STALE from now
    /// on. Returns whether it was exported.
    pub fn unexport(&self, key: &str) -> bool {
        match ExportKey::parse(key) {
            Ok(key) => self.exports.remove(&key),
            Err(_) => false,
        }
    }

    /// statvfs of the exported directory: what the node reports as the volume's usage.
    /// (Clients' FSSTAT cannot show it; see the module documentation.)
    pub fn usage(&self, key: &str) -> Result<Usage> {
        self.exports.usage(key)
    }

    /// Closes the listener and every client connection.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ShareServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// `handle_forever` returns on the first accept error (EMFILE, say), which would silently
/// end the share; log, pause, and go on.
async fn serve(listener: &NFSTcpListener<ShareFs>) {
    loop {
        if let Err(e) = listener.handle_forever().await {
            tracing::warn!("NFS share accept failed: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The generation kept in `path`, created (from the clock, written atomically) on the
/// first start. It must survive restarts: it is in every handle clients hold.
pub fn load_or_create_generation(path: &Path) -> Result<u64> {
    let bad = |message: String| Error::Unsupported {
        server: "share".into(),
        message,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| bad(format!("{} does not hold a generation", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let generation = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(1);
            warren_core::durable::write_atomic(path, format!("{generation}\n").as_bytes())
                .map_err(|e| bad(format!("write {}: {e}", path.display())))?;
            Ok(generation)
        }
        Err(e) => Err(bad(format!("read {}: {e}", path.display()))),
    }
}
