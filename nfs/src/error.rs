//! The NFS backend's error type, with the CSI code each case maps to.

use tonic::Code;

/// An NFSv3 status as the server sent it (the client's own type, re-exported so callers
/// can match on it without depending on `nfs3_client`).
pub use nfs3_client::nfs3_types::nfs3::nfsstat3;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A StorageClass parameter or a name is not acceptable.
    #[error("{0}")]
    InvalidArgument(String),
    /// The server could not be reached, refused the connection, or the export's mount
    /// failed.
    #[error("NFS server {server}: {message}")]
    Unreachable { server: String, message: String },
    /// The server did not answer within the deadline.
    #[error("NFS server {server}: no answer within {seconds} s to {operation}")]
    Timeout {
        server: String,
        operation: String,
        seconds: u64,
    },
    /// mount(2) or umount(2) failed.
    #[error("{what} at {target}: {errno}")]
    Mount {
        target: String,
        what: String,
        errno: nix::errno::Errno,
    },
    /// Something on the server Warren will not handle (a device node in a tree to copy).
    #[error("NFS server {server}: {message}")]
    Unsupported { server: String, message: String },
    /// The server answered with an NFS error status.
    #[error("NFS server {server}: {operation} {path}: {status}")]
    Status {
        server: String,
        operation: String,
        path: String,
        status: nfsstat3,
    },
}

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Unreachable { .. } => Code::Unavailable,
            Error::Timeout { .. } => Code::DeadlineExceeded,
            Error::Unsupported { .. } => Code::FailedPrecondition,
            Error::Mount { errno, .. } => {
                use nix::errno::Errno::*;
                match errno {
                    ECONNREFUSED | EHOSTUNREACH | ENETUNREACH | ETIMEDOUT | EIO | ESTALE => {
                        Code::Unavailable
                    }
                    EACCES | EPERM => Code::PermissionDenied,
                    ENOENT => Code::NotFound,
                    EBUSY => Code::FailedPrecondition,
                    _ => Code::Internal,
                }
            }
            Error::Status { status, .. } => {
                use nfsstat3::*;
                match status {
                    NFS3ERR_NOENT => Code::NotFound,
                    NFS3ERR_PERM | NFS3ERR_ACCES | NFS3ERR_ROFS => Code::PermissionDenied,
                    NFS3ERR_NOSPC | NFS3ERR_DQUOT => Code::ResourceExhausted,
                    NFS3ERR_STALE | NFS3ERR_JUKEBOX | NFS3ERR_IO => Code::Unavailable,
                    NFS3ERR_NOTDIR | NFS3ERR_EXIST | NFS3ERR_NOTEMPTY => Code::FailedPrecondition,
                    _ => Code::Internal,
                }
            }
        }
    }
}

/// Into the core error (already a CSI status) for the controller's handlers.
impl From<Error> for warren_core::Error {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e.code() {
            Code::InvalidArgument => warren_core::Error::InvalidArgument(message),
            Code::NotFound => warren_core::Error::NotFound(message),
            Code::FailedPrecondition | Code::PermissionDenied => {
                // The spec has no PERMISSION_DENIED for CreateVolume; an export that
                // refuses Warren is a precondition the administrator must fix.
                warren_core::Error::FailedPrecondition(message)
            }
            Code::ResourceExhausted => warren_core::Error::ResourceExhausted(message),
            Code::Unavailable | Code::DeadlineExceeded => warren_core::Error::Unavailable(message),
            _ => warren_core::Error::Internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: nfsstat3) -> Error {
        Error::Status {
            server: "nfs.example".into(),
            operation: "mkdir".into(),
            path: "/export/pvc-1".into(),
            status,
        }
    }

    #[test]
    fn a_status_reads_as_the_protocol_names_it() {
        assert_eq!(
            status(nfsstat3::NFS3ERR_NOTDIR).to_string(),
            "NFS server nfs.example: mkdir /export/pvc-1: NFS3ERR_NOTDIR"
        );
    }

    #[test]
    fn statuses_map_to_codes_by_variant() {
        use nfsstat3::*;
        for (s, code) in [
            (NFS3ERR_NOENT, Code::NotFound),
            (NFS3ERR_ACCES, Code::PermissionDenied),
            (NFS3ERR_NOSPC, Code::ResourceExhausted),
            (NFS3ERR_STALE, Code::Unavailable),
            (NFS3ERR_NOTEMPTY, Code::FailedPrecondition),
            (NFS3ERR_SERVERFAULT, Code::Internal),
        ] {
            assert_eq!(status(s).code(), code, "{s}");
        }
    }
}
