//! Node-local volumes: the `NodeStorage` a node serves to the controller.

mod meta;
mod remove;
mod store;
mod usage;

pub use meta::{payload, Dirs, SnapshotMeta, VolumeMeta, DATA, IMAGE, META};
pub use store::LocalStore;
pub use usage::{volume_usage, VolumeUsage};
