//! Reusable buffers for received frame bodies.
//!
//! A replica receives every write's data into a fresh buffer. Allocating 1 MiB per write
//! from malloc gives back memory the kernel has to fault in again, page by page: on the
//! reference machine those page faults were ~10 % of all CPU in a 2-replica sequential
//! write (docs/design.md, "Replication benchmarks"). Large bodies therefore come from a
//! small per-process pool and go back to it when the last `Bytes` of them is dropped.
//! The pool keeps at most `MAX_POOLED_BYTES`, so an idle service holds little.

use std::sync::{LazyLock, Mutex};

use bytes::Bytes;

use crate::locks::lock;

/// Bodies smaller than this come from malloc, which reuses small chunks well.
pub const POOLED_MIN: usize = 64 << 10;
/// What the pool keeps at most, over all its buffers (enough for a few connections'
/// writes in flight at queue depth 4).
pub const MAX_POOLED_BYTES: usize = 8 << 20;

pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    max_bytes: usize,
}

static GLOBAL: LazyLock<BufferPool> = LazyLock::new(|| BufferPool::new(MAX_POOLED_BYTES));

impl BufferPool {
    pub const fn new(max_bytes: usize) -> Self {
        Self {
            free: Mutex::new(Vec::new()),
            max_bytes,
        }
    }

    /// The process's pool.
    pub fn global() -> &'static BufferPool {
        &GLOBAL
    }

    /// An empty buffer with room for `len` bytes. Capacities are powers of two, so a
    /// returned buffer fits the next body of about the same size.
    pub fn take(&self, len: usize) -> Vec<u8> {
        if len < POOLED_MIN {
            return Vec::with_capacity(len);
        }
        let mut free = lock(&self.free);
        if let Some(at) = free.iter().position(|b| b.capacity() >= len) {
            return free.swap_remove(at);
        }
        drop(free);
        Vec::with_capacity(len.next_power_of_two())
    }

    /// `buffer` as `Bytes`; its memory returns to the pool when the last clone is dropped.
    pub fn freeze(&'static self, buffer: Vec<u8>) -> Bytes {
        if buffer.capacity() < POOLED_MIN {
            return Bytes::from(buffer);
        }
        Bytes::from_owner(Pooled { buffer, pool: self })
    }

    fn give_back(&self, mut buffer: Vec<u8>) {
        buffer.clear();
        let mut free = lock(&self.free);
        let held: usize = free.iter().map(Vec::capacity).sum();
        if held + buffer.capacity() <= self.max_bytes {
            free.push(buffer);
        }
    }

    /// Bytes held for reuse now.
    pub fn pooled_bytes(&self) -> usize {
        lock(&self.free).iter().map(Vec::capacity).sum()
    }
}

struct Pooled {
    buffer: Vec<u8>,
    pool: &'static BufferPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buffer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static POOL: BufferPool = BufferPool::new(3 << 20);

    #[test]
    fn a_dropped_body_is_reused_and_the_pool_stays_bounded() {
        let mut buffer = POOL.take(1 << 20);
        buffer.extend_from_slice(&vec![7u8; 1 << 20]);
        let address = buffer.as_ptr();
        let body = POOL.freeze(buffer);
        let clone = body.clone();
        drop(body);
        assert_eq!(POOL.pooled_bytes(), 0, "a clone still holds it");
        assert_eq!(&clone[..3], &[7, 7, 7]);
        drop(clone);
        assert_eq!(POOL.pooled_bytes(), 1 << 20);
        let again = POOL.take(1000 * 1000);
        assert_eq!(again.as_ptr(), address, "the same memory comes back");
        assert!(again.is_empty());
        assert_eq!(POOL.pooled_bytes(), 0);

        // Four 1 MiB bodies dropped: only three fit under the 3 MiB bound.
        let bodies: Vec<Bytes> = (0..4)
            .map(|_| {
                let mut b = POOL.take(1 << 20);
                b.resize(1 << 20, 1);
                POOL.freeze(b)
            })
            .collect();
        drop(again);
        drop(bodies);
        assert_eq!(POOL.pooled_bytes(), 3 << 20);
    }

    #[test]
    fn small_bodies_bypass_the_pool() {
        static SMALL: BufferPool = BufferPool::new(1 << 20);
        let body = SMALL.freeze(SMALL.take(100));
        drop(body);
        assert_eq!(SMALL.pooled_bytes(), 0);
    }
}
