//! The CSI endpoint: `unix:///path/csi.sock` (what kubelet and the sidecars use) or
//! `tcp://host:port` (for tests and debugging only); and serving gRPC on a Unix socket
//! so that any client can call it (`grpc_connections`, see `authority`).

mod authority;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint> {
        if let Some(path) = s.strip_prefix("unix://") {
            // Accept both unix:///abs/path and unix:/abs/path spellings.
            let path = Path::new(path);
            if !path.is_absolute() {
                return Err(Error::InvalidArgument(format!(
                    "endpoint {s:?}: the socket path must be absolute (unix:///path/csi.sock)"
                )));
            }
            Ok(Endpoint::Unix(path.to_path_buf()))
        } else if let Some(addr) = s.strip_prefix("tcp://") {
            Ok(Endpoint::Tcp(addr.to_string()))
        } else {
            Err(Error::InvalidArgument(format!(
                "endpoint {s:?}: expected unix:///path or tcp://host:port"
            )))
        }
    }
}

/// A gRPC channel to a server on a Unix socket (Warren's CSI socket): for the clients in
/// tests, benchmarks and tools. The URI is required by the API and ignored by the connector.
pub async fn connect_unix(
    path: &Path,
) -> std::result::Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
}

/// Binds a Unix socket: removes a stale socket left by a killed process (but never a
/// regular file or directory someone put there), and makes it owner-only (0600), since
/// whoever can talk to it can mount and delete volumes.
pub fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path)
                .map_err(Error::io(format!("remove stale socket {}", path.display())))?;
        }
        Ok(_) => {
            return Err(Error::FailedPrecondition(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("stat {}", path.display()))(e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(Error::io(format!("bind {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(Error::io(format!("chmod {}", path.display())))?;
    Ok(listener)
}

/// The listener's connections for a tonic server (`serve_with_incoming*`), each read
/// through an `AuthorityFilter` so that clients sending a socket path as `:authority`
/// are served (see `authority`): tonic serves the inner end of an in-memory pipe per
/// connection, and two tasks copy the bytes between it and the socket.
pub fn grpc_connections(
    listener: tokio::net::UnixListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::io::DuplexStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let next = match listener.accept().await {
            Ok((conn, _)) => {
                let (inner, outer) = tokio::io::duplex(64 * 1024);
                let (client_read, mut client_write) = conn.into_split();
                let (mut server_read, server_write) = tokio::io::split(outer);
                tokio::spawn(async move {
                    if let Err(e) = authority::filter_connection(client_read, server_write).await {
                        tracing::warn!(error = %e, "gRPC connection on a Unix socket refused");
                    }
                });
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                Ok(inner)
            }
            Err(e) => Err(e),
        };
        Some((next, listener))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_endpoints() {
        assert_eq!(
            Endpoint::parse("unix:///run/warren/csi.sock").unwrap(),
            Endpoint::Unix("/run/warren/csi.sock".into())
        );
        assert_eq!(
            Endpoint::parse("tcp://127.0.0.1:10000").unwrap(),
            Endpoint::Tcp("127.0.0.1:10000".into())
        );
        assert!(Endpoint::parse("unix://relative.sock").is_err());
        assert!(Endpoint::parse("/run/csi.sock").is_err());
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_but_a_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("csi.sock");
        drop(bind_unix(&sock).unwrap());
        // The socket file is still there (as after kill -9); binding again must work.
        let _l = bind_unix(&sock).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(bind_unix(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}
