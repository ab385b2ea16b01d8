//! What a node keeps about each volume and snapshot, next to the data itself:
//!
//! ```text
//! <storage-root>/volumes/<key>/meta.json     VolumeMeta
//! <storage-root>/volumes/<key>/disk.img      image layout: the volume's bytes
//! <storage-root>/volumes/<key>/data/         dir layout: the volume's files
//! <storage-root>/snapshots/<key>/...         the same shape for snapshots
//! <storage-root>/.creating/<key>/            an object being built; renamed into place when whole
//! <storage-root>/.trash/<key>-<n>/           an object being deleted
//! ```
//!
//! A directory under `volumes/` or `snapshots/` is only ever made by one rename of a complete
//! `.creating/` directory, so after a crash an object is either whole or absent; startup
//! empties `.creating/` and `.trash/`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use warren_core::ids::{Key, Layout, SnapshotId, VolumeId};
use warren_core::storage::{Allocation, ContentSource};

pub const META: &str = "meta.json";
pub const IMAGE: &str = "disk.img";
pub const DATA: &str = "data";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    pub id: VolumeId,
    pub name: String,
    pub capacity_bytes: u64,
    pub allocation: Allocation,
    pub source: Option<ContentSource>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub id: SnapshotId,
    pub name: String,
    pub source_volume: VolumeId,
    pub size_bytes: u64,
    pub created_at_secs: i64,
    pub created_at_nanos: i32,
}

/// Paths under one storage root.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub root: PathBuf,
}

impl Dirs {
    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }
    /// The built-in share's mounts of shared volumes (`shares/<key>/mnt`).
    pub fn shares(&self) -> PathBuf {
        self.root.join("shares")
    }
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    pub fn creating(&self) -> PathBuf {
        self.root.join(".creating")
    }
    pub fn trash(&self) -> PathBuf {
        self.root.join(".trash")
    }
    pub fn volume(&self, key: &Key) -> PathBuf {
        self.volumes().join(key.as_str())
    }
    pub fn snapshot(&self, key: &Key) -> PathBuf {
        self.snapshots().join(key.as_str())
    }
}

/// Where an object's bytes live inside its directory.
pub fn payload(dir: &Path, layout: Layout) -> PathBuf {
    match layout {
        Layout::Image => dir.join(IMAGE),
        Layout::Dir => dir.join(DATA),
    }
}
