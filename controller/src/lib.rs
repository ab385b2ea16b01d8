#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
//! Warren's CSI Controller service and the cluster-side logic behind it.

pub mod error;
pub mod nfs;
pub mod nodes;
pub mod placement;
pub mod reconcile;
pub mod record_dir;
pub mod records;
pub mod replica_placement;
pub mod replicated_record;
pub mod replicated_snapshot_record;
pub mod service;
pub mod snapshot_copies;

pub use nfs::NfsVolumes;
pub use nodes::Nodes;
pub use records::Records;
pub use service::ControllerService;
