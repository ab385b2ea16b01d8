//! The NFS backend's error type, with the CSI code each case maps to and its one
//! conversion into a gRPC status.

use tonic::{Code, Status};

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
    /// The gRPC code a CSI caller gets for this error: the one mapping, which both
    /// conversions below use.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Unreachable { .. } => Code::Unavailable,
            // Not DEADLINE_EXCEEDED: a silent server is unavailable, and the CO's retry of
            // an UNAVAILABLE call finishes the work (every operation is idempotent).
            Error::Timeout { .. } => Code::Unavailable,
            Error::Unsupported { .. } => Code::FailedPrecondition,
            Error::Mount { errno, .. } => {
                use nix::errno::Errno::*;
                match errno {
                    ECONNREFUSED | EHOSTUNREACH | ENETUNREACH | ETIMEDOUT | EIO | ESTALE => {
                        Code::Unavailable
                    }
                    EACCES | EPERM => REFUSED,
                    ENOENT => Code::NotFound,
                    EBUSY => Code::FailedPrecondition,
                    _ => Code::Internal,
                }
            }
            Error::Status { status, .. } => {
                use nfsstat3::*;
                match status {
                    NFS3ERR_NOENT => Code::NotFound,
                    NFS3ERR_PERM | NFS3ERR_ACCES | NFS3ERR_ROFS => REFUSED,
                    NFS3ERR_NOSPC | NFS3ERR_DQUOT => Code::ResourceExhausted,
                    NFS3ERR_STALE | NFS3ERR_JUKEBOX | NFS3ERR_IO => Code::Unavailable,
                    NFS3ERR_NOTDIR | NFS3ERR_EXIST | NFS3ERR_NOTEMPTY => Code::FailedPrecondition,
                    _ => Code::Internal,
                }
            }
        }
    }
}

/// A server or export that refuses Warren. The spec has no PERMISSION_DENIED for
/// CreateVolume; an export that refuses Warren is a precondition the administrator must fix.
const REFUSED: Code = Code::FailedPrecondition;

/// The CSI status of an NFS error: its code and its message.
impl From<Error> for Status {
    fn from(e: Error) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

/// Into the core error for the controller's and the node's handlers, which work in it:
/// through the status, so the code is the same either way.
impl From<Error> for warren_core::Error {
    fn from(e: Error) -> Self {
        Status::from(e).into()
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
            (NFS3ERR_ACCES, Code::FailedPrecondition),
            (NFS3ERR_NOSPC, Code::ResourceExhausted),
            (NFS3ERR_STALE, Code::Unavailable),
            (NFS3ERR_NOTEMPTY, Code::FailedPrecondition),
            (NFS3ERR_SERVERFAULT, Code::Internal),
        ] {
            assert_eq!(status(s).code(), code, "{s}");
        }
    }

    /// The codes CSI callers got before there was a `From<Error> for Status`, when every
    /// NFS error went through the core error: the same now, both ways.
    #[test]
    fn both_conversions_give_the_codes_callers_always_got() {
        use nix::errno::Errno;
        let cases: [(fn() -> Error, Code); 15] = [
            (
                || Error::InvalidArgument("bad".into()),
                Code::InvalidArgument,
            ),
            (
                || Error::Unreachable {
                    server: "s".into(),
                    message: "refused".into(),
                },
                Code::Unavailable,
            ),
            (
                || Error::Timeout {
                    server: "s".into(),
                    operation: "mkdir".into(),
                    seconds: 3,
                },
                Code::Unavailable,
            ),
            (
                || Error::Unsupported {
                    server: "s".into(),
                    message: "fifo".into(),
                },
                Code::FailedPrecondition,
            ),
            (|| mount(Errno::ECONNREFUSED), Code::Unavailable),
            (|| mount(Errno::EACCES), Code::FailedPrecondition),
            (|| mount(Errno::ENOENT), Code::NotFound),
            (|| mount(Errno::EBUSY), Code::FailedPrecondition),
            (|| mount(Errno::EINVAL), Code::Internal),
            (|| status(nfsstat3::NFS3ERR_NOENT), Code::NotFound),
            (|| status(nfsstat3::NFS3ERR_ROFS), Code::FailedPrecondition),
            (|| status(nfsstat3::NFS3ERR_DQUOT), Code::ResourceExhausted),
            (|| status(nfsstat3::NFS3ERR_JUKEBOX), Code::Unavailable),
            (|| status(nfsstat3::NFS3ERR_EXIST), Code::FailedPrecondition),
            (|| status(nfsstat3::NFS3ERR_BADHANDLE), Code::Internal),
        ];
        for (make, code) in cases {
            let message = make().to_string();
            let grpc = Status::from(make());
            assert_eq!(grpc.code(), code, "{message}");
            assert_eq!(grpc.message(), message);
            let core = warren_core::Error::from(make());
            assert_eq!(core.code(), code, "{message}");
            assert_eq!(core.to_string(), message);
        }
    }

    fn mount(errno: nix::errno::Errno) -> Error {
        Error::Mount {
            target: "/mnt".into(),
            what: "mount".into(),
            errno,
        }
    }
}
