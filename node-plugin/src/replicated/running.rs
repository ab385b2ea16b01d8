//! The replicated volumes staged on this node: each one's engine and the block device its
//! frontend made, one per volume, by replica name. Calls on one volume are serialized by
//! the host's lock of that volume; this table only needs to be consistent per entry.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use warren_replica::engine::Engine;

use super::device::{Device, Resize};
use crate::error::Result;

pub(super) struct Running {
    pub engine: Arc<Engine>,
    pub device: Device,
    /// The replicas (node names) the engine was started with.
    pub replicas: Vec<String>,
}

/// What stats need of a running volume, without holding the table.
pub(super) struct Seen {
    pub engine: Arc<Engine>,
    pub replicas: Vec<String>,
}

#[derive(Default)]
pub(super) struct RunningVolumes(Mutex<HashMap<String, Running>>);

impl RunningVolumes {
    fn table(&self) -> MutexGuard<'_, HashMap<String, Running>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn device(&self, volume: &str) -> Option<PathBuf> {
        self.table()
            .get(volume)
            .map(|r| r.device.path().to_path_buf())
    }

    /// Every volume staged here, by name (the table is not held while the caller uses them).
    pub fn all(&self) -> Vec<(String, Seen)> {
        self.table()
            .iter()
            .map(|(name, r)| {
                let seen = Seen {
                    engine: r.engine.clone(),
                    replicas: r.replicas.clone(),
                };
                (name.clone(), seen)
            })
            .collect()
    }

    pub fn seen(&self, volume: &str) -> Option<Seen> {
        self.table().get(volume).map(|r| Seen {
            engine: r.engine.clone(),
            replicas: r.replicas.clone(),
        })
    }

    /// The engine and what resizes its device, for an online expansion.
    pub fn resizable(&self, volume: &str) -> Option<Result<(Arc<Engine>, Resize)>> {
        self.table()
            .get(volume)
            .map(|r| r.device.resize().map(|resize| (r.engine.clone(), resize)))
    }

    pub fn insert(&self, volume: &str, running: Running) {
        self.table().insert(volume.to_string(), running);
    }

    pub fn take(&self, volume: &str) -> Option<Running> {
        self.table().remove(volume)
    }
}
