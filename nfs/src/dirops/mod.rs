//! Directory work on an NFS export from user space, for the controller: make a volume's
//! sub-directory, archive it, remove it, see whether it is there. NFSv3 (MOUNT, then NFS
//! calls with AUTH_SYS) through `nfs3_client`, which has no timeouts of its own: every
//! operation runs under `ExportOptions::deadline`, so an unreachable or silent server
//! fails cleanly instead of hanging a CSI call. Every operation is idempotent.
//!
//! - this file: the public operations on an `Export`, each under its deadline;
//! - `pool`: the idle connections kept per export, their reuse and replacement;
//! - `session`: one mounted connection and the single NFS calls the operations are made of;
//! - `tree`: the recursive work, copying and removing a directory tree.

mod pool;
mod session;
mod tree;

use std::future::Future;
use std::time::Duration;

use crate::error::{Error, Result};
use pool::{with_session, SessionPool};
use session::{split_last, Session};

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// For one whole operation, connecting included.
    pub deadline: Duration,
    /// For one whole `copy_dir` (snapshots, restores, clones copy through the client).
    pub copy_deadline: Duration,
    /// Connect from a port below 1024, as Linux's knfsd wants by default (`secure`
    /// exports); needs root or CAP_NET_BIND_SERVICE.
    pub privileged_port: bool,
    /// Ports of the MOUNT and NFS services; None: ask the server's portmapper.
    pub mount_port: Option<u16>,
    pub nfs_port: Option<u16>,
    /// AUTH_SYS identity of the calls.
    pub uid: u32,
    pub gid: u32,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            deadline: Duration::from_secs(30),
            copy_deadline: Duration::from_secs(300),
            privileged_port: true,
            mount_port: None,
            nfs_port: None,
            uid: 0,
            gid: 0,
        }
    }
}

/// Whether this process may bind a source port below 1024: root, CAP_NET_BIND_SERVICE, or
/// a lowered `net.ipv4.ip_unprivileged_port_start` (the chart's controller pod sets it).
pub fn may_bind_privileged_port() -> bool {
    const CAP_NET_BIND_SERVICE: u32 = 10;
    let effective_caps = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0);
    let unprivileged_start =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(1024);
    nix::unistd::geteuid().is_root()
        || effective_caps & (1 << CAP_NET_BIND_SERVICE) != 0
        || unprivileged_start < 1024
}
/// One export of one server. Clones share the idle connections.
#[derive(Clone)]
pub struct Export {
    server: String,
    share: String,
    options: ExportOptions,
    pool: SessionPool,
}

impl Export {
    pub fn new(server: &str, share: &str, options: ExportOptions) -> Self {
        Export {
            server: server.to_string(),
            share: share.to_string(),
            options,
            pool: SessionPool::default(),
        }
    }

    /// `mkdir -p share/sub_dir`; the last directory gets `mode` when given. Already there
    /// is fine; a file in the way is FailedPrecondition.
    pub async fn make_dir(&self, sub_dir: &str, mode: Option<u32>) -> Result<()> {
        self.within_deadline("mkdir", sub_dir, async {
            with_session!(self, |s| s.make_dir(sub_dir, mode).await)
        })
        .await
    }

    /// `rm -r share/sub_dir`; already gone is fine.
    pub async fn remove_dir(&self, sub_dir: &str) -> Result<()> {
        self.within_deadline("remove", sub_dir, async {
            with_session!(self, |s| s.remove(sub_dir).await)
        })
        .await
    }

    /// Renames `share/a/b` to `share/a/archived-b`; returns the new relative path. Already
    /// archived (the source gone, the archive there) is fine.
    pub async fn archive_dir(&self, sub_dir: &str) -> Result<String> {
        let (head, name) = split_last(sub_dir);
        let archived_name = format!("archived-{name}");
        self.within_deadline("archive", sub_dir, async {
            with_session!(self, |s| s.archive(sub_dir, &archived_name).await)
        })
        .await?;
        Ok(match head {
            Some(h) => format!("{h}/{archived_name}"),
            None => archived_name,
        })
    }

    /// Copies `share/from` to `share/to` (a snapshot, a restore, a clone) through the
    /// server. The copy is made as `.<name>.partial` beside `to` and renamed into place
    /// when whole, so a crash or a deadline never leaves a half copy under `to`; a retry
    /// starts the copy again. `to` already there is fine. Files keep their mode, owner
    /// and modification time, symbolic links are copied as links; devices, FIFOs and
    /// sockets are refused.
    pub async fn copy_dir(&self, from: &str, to: &str) -> Result<()> {
        let operation = format!("copy to {to} from");
        self.within(self.options.copy_deadline, &operation, from, async {
            with_session!(self, |s| s.copy(from, to).await)
        })
        .await
    }

    /// Whether `share/sub_dir` exists.
    pub async fn exists(&self, sub_dir: &str) -> Result<bool> {
        self.within_deadline("lookup", sub_dir, async {
            with_session!(self, |s| s.exists(sub_dir).await)
        })
        .await
    }

    /// The export's file system: (total bytes, bytes available to Warren's calls).
    pub async fn space(&self) -> Result<(u64, u64)> {
        self.within_deadline("fsstat", "", async {
            with_session!(self, |s| s.space().await)
        })
        .await
    }

    async fn within_deadline<T>(
        &self,
        operation: &str,
        path: &str,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        self.within(self.options.deadline, operation, path, work)
            .await
    }

    async fn within<T>(
        &self,
        deadline: Duration,
        operation: &str,
        path: &str,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(deadline, work).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                server: self.server.clone(),
                operation: format!("{operation} {}", self.join(path)),
                seconds: deadline.as_secs_f64().ceil() as u64,
            }),
        }
    }

    async fn connect(&self) -> Result<Session> {
        Session::connect(&self.server, &self.share, &self.options).await
    }

    fn join(&self, sub_dir: &str) -> String {
        format!(
            "{}:{}/{sub_dir}",
            self.server,
            self.share.trim_end_matches('/')
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_server_times_out_and_a_closed_port_is_unreachable() {
        // A listener that accepts and never answers: the deadline ends the operation.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let options = ExportOptions {
            deadline: Duration::from_millis(300),
            privileged_port: false,
            mount_port: Some(port),
            nfs_port: Some(port),
            ..Default::default()
        };
        let silent = Export::new("127.0.0.1", "/x", options.clone());
        let err = silent.make_dir("pvc-1", None).await.unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        // UNAVAILABLE, so the CO retries the call.
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::Unavailable);

        // A port nobody listens on: refused at once.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = free.local_addr().unwrap().port();
        drop(free);
        let closed = Export::new(
            "127.0.0.1",
            "/x",
            ExportOptions {
                mount_port: Some(closed_port),
                nfs_port: Some(closed_port),
                deadline: Duration::from_secs(5),
                ..options
            },
        );
        let err = closed.exists("pvc-1").await.unwrap_err();
        assert!(matches!(err, Error::Unreachable { .. }), "{err}");
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }
}
