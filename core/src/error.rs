//! The core error type. Each variant is named after the gRPC code the CSI spec asks for, so
//! a handler's `?` already produces the right status.

use tonic::{Code, Status};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Internal(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done and to what.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::Aborted(_) => Code::Aborted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Internal(_) => Code::Internal,
            Error::Io { source, .. } if source.raw_os_error() == Some(libc_enospc()) => {
                Code::ResourceExhausted
            }
            Error::Io { .. } => Code::Internal,
        }
    }
}

fn libc_enospc() -> i32 {
    nix::errno::Errno::ENOSPC as i32
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        Status::new(err.code(), err.to_string())
    }
}

/// The reverse mapping, for errors that crossed the node-agent channel: the code survives
/// the trip, so the controller answers the CO with what the node decided.
impl From<Status> for Error {
    fn from(status: Status) -> Error {
        let msg = status.message().to_string();
        match status.code() {
            Code::InvalidArgument => Error::InvalidArgument(msg),
            Code::NotFound => Error::NotFound(msg),
            Code::AlreadyExists => Error::AlreadyExists(msg),
            Code::FailedPrecondition => Error::FailedPrecondition(msg),
            Code::ResourceExhausted => Error::ResourceExhausted(msg),
            Code::OutOfRange => Error::OutOfRange(msg),
            Code::Aborted => Error::Aborted(msg),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => Error::Unavailable(msg),
            Code::Unauthenticated | Code::PermissionDenied => Error::Unauthenticated(msg),
            _ => Error::Internal(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_status() {
        for err in [
            Error::InvalidArgument("a".into()),
            Error::NotFound("b".into()),
            Error::AlreadyExists("c".into()),
            Error::ResourceExhausted("d".into()),
            Error::OutOfRange("e".into()),
            Error::FailedPrecondition("f".into()),
        ] {
            let code = err.code();
            let back: Error = Status::from(err).into();
            assert_eq!(back.code(), code);
        }
    }

    #[test]
    fn enospc_is_resource_exhausted() {
        let err = Error::io("write")(std::io::Error::from_raw_os_error(libc_enospc()));
        assert_eq!(err.code(), Code::ResourceExhausted);
    }
}
