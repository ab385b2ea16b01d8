//! Per-key async locks: calls on one volume (or one name) run one at a time, calls on
//! different volumes run in parallel. An entry lives only while someone holds or waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default, Clone)]
pub struct KeyedLocks {
    locks: Arc<Mutex<HashMap<String, Arc<AsyncMutex<()>>>>>,
}

pub struct KeyGuard {
    _guard: OwnedMutexGuard<()>,
    key: String,
    locks: Arc<Mutex<HashMap<String, Arc<AsyncMutex<()>>>>>,
}

impl KeyedLocks {
    pub async fn lock(&self, key: &str) -> KeyGuard {
        let mutex = {
            let mut map = lock(&self.locks);
            map.entry(key.to_string()).or_default().clone()
        };
        KeyGuard {
            _guard: mutex.lock_owned().await,
            key: key.to_string(),
            locks: self.locks.clone(),
        }
    }

    /// Locks several keys in sorted order, so two callers locking overlapping sets can never
    /// deadlock each other.
    pub async fn lock_many(&self, keys: &[&str]) -> Vec<KeyGuard> {
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        let mut guards = Vec::with_capacity(keys.len());
        for key in keys {
            guards.push(self.lock(key).await);
        }
        guards
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.locks).len()
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        let mut map = lock(&self.locks);
        // Two references: the map's and this guard's mutex; more means someone waits.
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) <= 2)
        {
            map.remove(&self.key);
        }
    }
}

/// The map even if a panicking thread poisoned its lock: with `panic = "abort"` a poisoned
/// lock is never seen in production, and each critical section here only inserts or
/// removes one entry, so the map is whole either way.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn same_key_is_serialized_and_entries_are_freed() {
        let locks = KeyedLocks::default();
        let inside = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (locks, inside) = (locks.clone(), inside.clone());
            tasks.push(tokio::spawn(async move {
                let _g = locks.lock("vol").await;
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn lock_many_in_opposite_orders_does_not_deadlock() {
        let locks = KeyedLocks::default();
        let mut tasks = Vec::new();
        for i in 0..50 {
            let locks = locks.clone();
            tasks.push(tokio::spawn(async move {
                let keys = if i % 2 == 0 { ["a", "b"] } else { ["b", "a"] };
                let _g = locks.lock_many(&keys).await;
                tokio::task::yield_now().await;
            }));
        }
        for t in tasks {
            tokio::time::timeout(std::time::Duration::from_secs(5), t)
                .await
                .expect("deadlock")
                .unwrap();
        }
    }

    #[tokio::test]
    async fn different_keys_do_not_block() {
        let locks = KeyedLocks::default();
        let _a = locks.lock("a").await;
        // Would hang if keys shared a lock: bounded, so a regression fails instead.
        let b = tokio::time::timeout(std::time::Duration::from_secs(5), locks.lock("b")).await;
        assert!(b.is_ok(), "a lock on \"b\" waited for the one on \"a\"");
    }
}
