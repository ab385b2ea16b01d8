//! Node-local volumes: the `NodeStorage` a node serves to the controller.
//!
//! `store` is the handle (locks, the blocking pool, the `NodeStorage` answers); the work
//! behind it is split by job: `volumes`, `snapshots`, `recover` (opening after a crash),
//! `remove` (deleting objects, never through a mount), `usage` (what each volume takes).

mod meta;
mod recover;
mod remove;
mod snapshots;
mod store;
mod usage;
mod volumes;

pub use meta::{payload, Dirs, SnapshotMeta, VolumeMeta, DATA, IMAGE, META};
pub use store::LocalStore;
pub use usage::{volume_usage, VolumeUsage};
