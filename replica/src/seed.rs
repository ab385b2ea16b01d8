//! Seeding: filling a new replicated volume from a file (a snapshot copy's data, or a
//! local volume's image) through an engine of its own, for restores, clones, and copies
//! of local volumes into replicated ones.
//!
//! The volume's replicas were made empty (`create_replica`) and no one else knows the
//! volume yet, so only the file's data needs writing: its holes (`SEEK_DATA`/`SEEK_HOLE`)
//! and all-zero chunks are skipped, and the replicas stay as sparse as the file. A few
//! chunks are in flight at once. The engine is then closed clean (a flush, every
//! replica marked clean), so the first real engine starts without a resync.
//!
//! Safe to repeat on the same target: a seed interrupted by a crash left some of the
//! file's bytes, and a retry writes the same bytes at the same places again.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};

use crate::blocking::blocking;
use crate::engine::{Engine, EngineConfig};
use crate::error::{Error, Result};
use crate::target::BlockTarget;

/// The size of one write of the seed.
const CHUNK: u64 = 1 << 20;
/// Chunks read and written at once.
const IN_FLIGHT: usize = 4;

/// What a seed copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedOutcome {
    /// The source file's size.
    pub source_bytes: u64,
    /// Bytes written into the volume (holes and zero chunks are not).
    pub written_bytes: u64,
}

/// Fills the volume `config` names (its replicas already made) with the bytes of
/// `source`, then closes it clean. `InvalidArgument` when the file is larger than the
/// volume.
pub async fn seed_from_file(mut config: EngineConfig, source: &Path) -> Result<SeedOutcome> {
    let path = source.to_path_buf();
    let (file, source_bytes, extents) = blocking(move || {
        let file = File::open(&path).map_err(Error::io(format!("open {}", path.display())))?;
        let size = file
            .metadata()
            .map_err(Error::io(format!("stat {}", path.display())))?
            .len();
        let extents = crate::snapshots::data_extents(&file, size)
            .map_err(Error::io(format!("map the data of {}", path.display())))?;
        Ok((Arc::new(file), size, extents))
    })
    .await?;
    if source_bytes > config.size {
        return Err(Error::InvalidArgument(format!(
            "the source has {source_bytes} bytes, more than the volume's {}",
            config.size
        )));
    }
    config.create = true;
    let volume = config.volume.clone();
    let engine = Engine::start(config).await?;
    let written = write_extents(&engine, file, &extents).await;
    // Closed whether or not the copy finished: its heal loop stops, and the volume holds
    // whatever was acknowledged on every replica (a retry writes the rest).
    let closed = engine.close().await;
    let written_bytes = written?;
    closed?;
    tracing::info!(volume, source_bytes, written_bytes, "volume seeded");
    Ok(SeedOutcome {
        source_bytes,
        written_bytes,
    })
}

/// Writes every chunk of `extents` that holds a non-zero byte; returns the bytes written.
async fn write_extents(engine: &Engine, file: Arc<File>, extents: &[(u64, u64)]) -> Result<u64> {
    // Listed up front (16 bytes a MiB): a stream over a borrowing iterator makes a
    // future that is not `Send` for every caller (an `async_trait` method, say).
    let chunks: Vec<(u64, u64)> = extents
        .iter()
        .flat_map(|&(start, end)| chunks_of(start, end))
        .collect();
    stream::iter(chunks)
        .map(|(offset, len)| {
            let file = file.clone();
            async move {
                let data = blocking(move || {
                    let mut buf = vec![0u8; len as usize];
                    file.read_exact_at(&mut buf, offset)
                        .map_err(Error::io(format!("read the seed at {offset}")))?;
                    Ok(buf)
                })
                .await?;
                if data.iter().all(|&b| b == 0) {
                    return Ok(0);
                }
                engine.write(offset, Bytes::from(data), false).await?;
                Ok(len)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_fold(0u64, |total, n| async move { Ok(total + n) })
        .await
}

/// `[start, end)` cut at whole-chunk boundaries.
fn chunks_of(start: u64, end: u64) -> impl Iterator<Item = (u64, u64)> {
    let mut at = start;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let next = ((at / CHUNK + 1) * CHUNK).min(end);
        let chunk = (at, next - at);
        at = next;
        Some(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_are_cut_at_chunk_boundaries() {
        let m = CHUNK;
        assert_eq!(chunks_of(0, 0).count(), 0);
        assert_eq!(chunks_of(0, m).collect::<Vec<_>>(), vec![(0, m)]);
        assert_eq!(
            chunks_of(4096, 2 * m + 8192).collect::<Vec<_>>(),
            vec![(4096, m - 4096), (m, m), (2 * m, 8192)]
        );
    }
}
