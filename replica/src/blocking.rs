//! Work that blocks (file system calls, copies, metadata reads and writes) runs on tokio's
//! blocking pool, never on the runtime's threads, which serve every volume's I/O.

use crate::error::{Error, Result};

/// Runs `f` on the blocking pool and returns its result.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
}
