//! warren-kube's one error type.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A CSI call of Warren's own services failed; the status keeps its code.
    #[error("{method}: {} ({:?})", .status.message(), .status.code())]
    Csi {
        method: &'static str,
        status: tonic::Status,
    },
    /// The object asks for something Warren cannot do (a bad size, a missing source...).
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn csi(method: &'static str) -> impl FnOnce(tonic::Status) -> Error {
        move |status| Error::Csi { method, status }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        match e {
            Error::Csi { status, .. } => status,
            Error::Invalid(m) => tonic::Status::invalid_argument(m),
            other => tonic::Status::unavailable(other.to_string()),
        }
    }
}
