//! The engine's data path: reads, writes, discards and flushes fanned out to the
//! members of the current generation, with failed members cut out before an
//! acknowledgement (see `cut_out` in engine.rs).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;

use super::{Engine, Membership, STRIPES};
use crate::bitmap::regions_of;
use crate::client::ReplicaClient;
use crate::error::{Error, Result};
use crate::locks::lock;
use crate::protocol::{BodyCrc, MAX_IO};
use crate::target::{check_range, BlockTarget};

impl Engine {
    async fn lock_regions(
        &self,
        offset: u64,
        len: u64,
    ) -> Vec<tokio::sync::RwLockReadGuard<'_, ()>> {
        let mut stripes: Vec<usize> = regions_of(offset, len)
            .map(|r| (r % STRIPES as u64) as usize)
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for s in stripes {
            guards.push(self.stripes[s].read().await);
        }
        guards
    }

    pub(crate) async fn lock_region_exclusive(
        &self,
        region: u64,
    ) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.stripes[(region % STRIPES as u64) as usize]
            .write()
            .await
    }

    /// One write or discard (≤ MAX_IO) to every member and rebuild target.
    async fn write_chunk(&self, offset: u64, change: Change) -> Result<()> {
        let len = change.len();
        let _regions = self.lock_regions(offset, len).await;
        loop {
            self.check_failed()?;
            let membership = self.membership.read().await;
            let gen = membership.gen;
            let targets: Vec<(Arc<ReplicaClient>, bool)> = membership
                .members
                .iter()
                .map(|m| (m.clone(), true))
                .chain(membership.rebuilding.iter().map(|r| (r.clone(), false)))
                .collect();
            let results = join_all(targets.iter().map(|(t, _)| {
                let change = change.clone();
                async move {
                    match change {
                        Change::Discard(len) => t.discard(gen, offset, len).await,
                        Change::Write(data, fua, crc) => {
                            t.write_shared(gen, offset, data, fua, crc).await
                        }
                    }
                }
            }))
            .await;
            drop(membership);
            let mut failed = Vec::new();
            let mut member_ok = 0;
            for ((target, is_member), result) in targets.iter().zip(results) {
                match result {
                    Ok(()) if *is_member => member_ok += 1,
                    Ok(()) => {}
                    // Bad input is the caller's error, not the replica's.
                    Err(e @ Error::InvalidArgument(_)) => return Err(e),
                    Err(e) => failed.push((target.replica.clone(), e)),
                }
            }
            if failed.is_empty() {
                return Ok(());
            }
            self.cut_out(gen, failed).await;
            self.check_failed()?;
            if member_ok > 0 {
                // Every remaining member has the write.
                return Ok(());
            }
            // No member took it, but members remain (they joined since): write again.
        }
    }

    async fn write_all(&self, offset: u64, data: Bytes, fua: bool) -> Result<()> {
        check_range(self.size(), offset, data.len() as u64)?;
        *lock(&self.last_write) = Instant::now();
        self.written.store(true, Ordering::Release);
        let mut done = 0;
        while done < data.len() {
            let n = (data.len() - done).min(MAX_IO);
            self.write_chunk(
                offset + done as u64,
                Change::Write(data.slice(done..done + n), fua, BodyCrc::default()),
            )
            .await?;
            done += n;
        }
        Ok(())
    }

    pub(crate) fn idle_for(&self) -> Duration {
        lock(&self.last_write).elapsed()
    }

    async fn read_chunk(&self, offset: u64, len: usize) -> Result<Bytes> {
        loop {
            self.check_failed()?;
            let membership = self.membership.read().await;
            let gen = membership.gen;
            let source = self.read_source(&membership)?;
            let result = source.read(gen, offset, len).await;
            drop(membership);
            match result {
                Ok(data) => return Ok(data),
                Err(e @ Error::InvalidArgument(_)) => return Err(e),
                Err(e) => self.cut_out(gen, vec![(source.replica.clone(), e)]).await,
            }
        }
    }

    /// Where a read goes: the local replica when it is a member, else the members in turn.
    fn read_source(&self, membership: &Membership) -> Result<Arc<ReplicaClient>> {
        if self
            .config
            .local
            .as_ref()
            .is_some_and(|l| membership.members.iter().any(|m| m.replica == *l))
        {
            return self.primary(membership).cloned();
        }
        let members = &membership.members;
        if members.is_empty() {
            // The last member was cut out while this read waited for the lock.
            return Err(self.no_member_left());
        }
        let i = self.read_cursor.fetch_add(1, Ordering::Relaxed) as usize;
        Ok(members[i % members.len()].clone())
    }

    /// Flushes every member; a member that fails is cut out, so the flush holds for all
    /// members of the generation in force when it returns.
    pub(super) async fn flush_all(&self) -> Result<()> {
        loop {
            self.check_failed()?;
            let membership = self.membership.read().await;
            let gen = membership.gen;
            let members = membership.members.clone();
            let results = join_all(members.iter().map(|m| m.flush(gen))).await;
            drop(membership);
            let failed: Vec<(String, Error)> = members
                .iter()
                .zip(results)
                .filter_map(|(m, r)| r.err().map(|e| (m.replica.clone(), e)))
                .collect();
            if failed.is_empty() {
                return Ok(());
            }
            let all_failed = failed.len() == members.len();
            self.cut_out(gen, failed).await;
            self.check_failed()?;
            if !all_failed {
                return Ok(());
            }
        }
    }
}

/// What a write-path request changes.
#[derive(Clone)]
enum Change {
    /// Data, FUA, and the data's checksum shared by the frames to every replica.
    Write(Bytes, bool, BodyCrc),
    Discard(u64),
}

impl Change {
    fn len(&self) -> u64 {
        match self {
            Change::Write(data, ..) => data.len() as u64,
            Change::Discard(len) => *len,
        }
    }
}

#[async_trait::async_trait]
impl BlockTarget for Engine {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Bytes> {
        check_range(self.size(), offset, len as u64)?;
        if len <= MAX_IO {
            return self.read_chunk(offset, len).await;
        }
        let mut out = bytes::BytesMut::with_capacity(len);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MAX_IO);
            out.extend_from_slice(&self.read_chunk(offset + done as u64, n).await?);
            done += n;
        }
        Ok(out.freeze())
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<()> {
        self.write_all(offset, data, fua).await
    }

    async fn flush(&self) -> Result<()> {
        self.flush_all().await
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<()> {
        check_range(self.size(), offset, len)?;
        *lock(&self.last_write) = Instant::now();
        self.written.store(true, Ordering::Release);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MAX_IO as u64);
            self.write_chunk(offset + done, Change::Discard(n)).await?;
            done += n;
        }
        Ok(())
    }
}
