//! The replication crate's one error type.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("range {offset}+{len} is outside the volume's {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// The request carried a generation the replica no longer (or not yet) serves: the
    /// sender has been cut out, or is a stale engine.
    #[error("fenced: {0}")]
    Fenced(String),
    #[error("{0}")]
    Busy(String),
    #[error("authentication failed: {0}")]
    Unauthenticated(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{0}")]
    Unavailable(String),
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
}
