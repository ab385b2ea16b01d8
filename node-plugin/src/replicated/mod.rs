//! Replicated volumes on this node (docs/design.md, "Replicated block volumes"):
//!
//! - `host.rs`: the node's replica service, serving the replicas it keeps to every engine;
//! - `store.rs`: the controller's replica calls (create, delete, expand, get) on that
//!   service;
//! - `snapshot.rs`: snapshots of replicated volumes (through the engine, of a replica on
//!   its own, deleting a copy);
//! - `seed.rs`: filling a new replicated volume from a snapshot or a local image;
//! - `device.rs`: the kernel block device a frontend makes of an engine;
//! - `running.rs`: the engines of the volumes staged on this node, one per volume;
//! - `stage.rs`: NodeStage/NodeUnstage (start the engine, attach, format, mount);
//! - `access.rs`: NodePublish/NodeUnpublish and stats of a staged volume;
//! - `expand.rs`: NodeExpandVolume (the engine, its device and the file system grow);
//! - `condition.rs`: a volume's health from its engine's status (a pure function).

mod access;
mod condition;
pub mod device;
mod expand;
mod host;
mod running;
mod seed;
mod snapshot;
mod stage;
mod store;

pub use condition::condition;
pub use host::{ReplicaHost, StagedVolume};
pub use stage::ReplicatedStager;
pub use store::ReplicatingStore;

use warren_core::Error as CoreError;

/// A replication error as the CSI code it means; what has no CSI meaning is INTERNAL.
pub fn replica_error(e: warren_replica::Error) -> CoreError {
    match e {
        warren_replica::Error::InvalidArgument(m) => CoreError::InvalidArgument(m),
        warren_replica::Error::NotFound(m) => CoreError::NotFound(m),
        warren_replica::Error::Unavailable(m) => CoreError::Unavailable(m),
        other => CoreError::Internal(other.to_string()),
    }
}
