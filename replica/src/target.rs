//! `BlockTarget`: what a frontend (FUSE file, NBD, ublk) turns into a kernel block device.
//! The volume engine is one; `FileTarget` (a plain file) is another, used as the raw
//! baseline in benchmarks and to test frontends without replication.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::writeback::EarlyWriteback;

#[async_trait::async_trait]
pub trait BlockTarget: Send + Sync + 'static {
    /// Size in bytes. It may grow while the target is open (an engine whose replicas
    /// were grown), never shrink; a frontend is told by its owner when it did.
    fn size(&self) -> u64;
    /// Reads `len` bytes at `offset`. The range must lie inside the target.
    async fn read(&self, offset: u64, len: usize) -> Result<Bytes>;
    /// Writes `data` at `offset`. Returns once the write is visible to later reads on every
    /// replica that holds the volume; with `fua`, once it is durable on all of them.
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<()>;
    /// Makes every write acknowledged so far durable.
    async fn flush(&self) -> Result<()>;
    /// Discards a range: it reads back as zeros afterwards.
    async fn discard(&self, offset: u64, len: u64) -> Result<()>;
}

/// Refuses a range that does not lie inside a target of `size` bytes.
pub fn check_range(size: u64, offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange { offset, len, size }),
    }
}

/// A block target backed by one local file, without replication.
#[derive(Clone)]
pub struct FileTarget {
    file: Arc<File>,
    size: u64,
    /// Whether the file system takes `RWF_NOWAIT` writes (learnt on the first refusal).
    nowait_writes: Arc<AtomicBool>,
    /// Off by default: a plain file, as a pod on a local volume would write it.
    writeback: Option<Arc<EarlyWriteback>>,
}

impl FileTarget {
    /// Opens (creating if needed, as a sparse file) `path` with exactly `size` bytes.
    pub fn open(path: &Path, size: u64) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(Error::io(format!("open {}", path.display())))?;
        file.set_len(size)
            .map_err(Error::io(format!("size {}", path.display())))?;
        Ok(Self {
            file: Arc::new(file),
            size,
            nowait_writes: Arc::new(AtomicBool::new(true)),
            writeback: None,
        })
    }

    /// Starts writeback early like a replica does (writeback.rs): the benchmark's second
    /// baseline, so the engine's gain from it can be told apart from its own cost.
    pub fn with_early_writeback(mut self) -> Self {
        self.writeback = Some(Arc::new(EarlyWriteback::new(&self.file)));
        self
    }

    fn wrote(&self, len: usize) {
        if let Some(writeback) = &self.writeback {
            writeback.wrote(len as u64);
        }
    }
}

#[async_trait::async_trait]
impl BlockTarget for FileTarget {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Bytes> {
        check_range(self.size, offset, len as u64)?;
        if let Some(data) = crate::nowait::read(&self.file, offset, len) {
            return Ok(data);
        }
        let file = self.file.clone();
        blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<()> {
        check_range(self.size, offset, data.len() as u64)?;
        if !fua && self.nowait_writes.load(Ordering::Relaxed) {
            match crate::nowait::write(&self.file, offset, &data) {
                crate::nowait::Write::Done => {
                    self.wrote(data.len());
                    return Ok(());
                }
                crate::nowait::Write::WouldBlock => {}
                crate::nowait::Write::Unsupported => {
                    self.nowait_writes.store(false, Ordering::Relaxed)
                }
            }
        }
        let file = self.file.clone();
        let len = data.len();
        blocking(move || {
            file.write_all_at(&data, offset)?;
            if fua {
                file.sync_data()?;
            }
            Ok(())
        })
        .await?;
        self.wrote(len);
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        let file = self.file.clone();
        blocking(move || file.sync_data()).await
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<()> {
        check_range(self.size, offset, len)?;
        let file = self.file.clone();
        blocking(move || crate::sparse::punch_hole(&file, offset, len)).await
    }
}

/// Runs file I/O on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("I/O task failed: {e}")))?
        .map_err(Error::io("file I/O"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_target_round_trip_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let target = FileTarget::open(&dir.path().join("t"), 1 << 20).unwrap();
        target
            .write(4096, Bytes::from(vec![7u8; 4096]), true)
            .await
            .unwrap();
        assert_eq!(target.read(4096, 4096).await.unwrap(), vec![7u8; 4096]);
        target.discard(4096, 4096).await.unwrap();
        assert_eq!(target.read(4096, 4096).await.unwrap(), vec![0u8; 4096]);
        assert!(target.read((1 << 20) - 1, 2).await.is_err());
        assert!(target
            .write(u64::MAX, Bytes::from_static(b"x"), false)
            .await
            .is_err());
    }
}
