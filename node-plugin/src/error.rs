//! The node plugin's error type. Core errors pass through with their CSI code; failures of
//! system calls and helper programs are INTERNAL unless they are ENOSPC.

use std::path::PathBuf;

use tonic::{Code, Status};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] warren_core::Error),
    /// A helper program (mkfs, xfs_growfs, cp, ...) exited with failure.
    #[error("{program} failed ({status}): {stderr}")]
    Command {
        program: String,
        status: String,
        stderr: String,
    },
    /// A system call on a path failed.
    #[error("{op} {}: {source}", path.display())]
    Sys {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
}

impl Error {
    pub fn sys(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(nix::errno::Errno) -> Error {
        let path = path.into();
        move |source| Error::Sys { op, path, source }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::Core(e) => e.code(),
            Error::Sys {
                source: nix::errno::Errno::ENOSPC,
                ..
            } => Code::ResourceExhausted,
            Error::Command { .. } | Error::Sys { .. } => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        Status::new(err.code(), err.to_string())
    }
}

/// Node storage answers the controller through the core interface; keep the code.
impl From<Error> for warren_core::Error {
    fn from(err: Error) -> warren_core::Error {
        match err {
            Error::Core(e) => e,
            other => {
                let code = other.code();
                let msg = other.to_string();
                match code {
                    Code::ResourceExhausted => warren_core::Error::ResourceExhausted(msg),
                    _ => warren_core::Error::Internal(msg),
                }
            }
        }
    }
}
