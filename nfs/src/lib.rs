#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
//! Warren's NFS backend (`backend: nfs`): volumes are sub-directories of an export on an
//! existing NFS server.
//!
//! - `params`: the StorageClass parameters and the sub-directory a volume gets.
//! - `volume_id`: `nfs#server#share#sub-directory#onDelete`, all that DeleteVolume and the
//!   node need (the controller's records only make CreateVolume idempotent and feed the
//!   listings).
//! - `dirops`: what the controller does on the server — make, copy, archive, remove and
//!   look at sub-directories — speaking NFSv3 from user space (`nfs3_client`), every call
//!   under a deadline, so the controller needs neither a kernel mount nor privilege.
//! - `mount_options`: what the node hands mount(2) (no mount.nfs in the image): the
//!   kernel's text options with the server's address, version, and the StorageClass's
//!   checked `mountOptions`.
//! - `mount`: the node's mount and unmount, under deadlines, never leaving a half-done
//!   mount behind and never hanging on a server that is gone.
//! - `probe`: is a mount healthy, stale or unanswered, without ever hanging the caller.
//! - `share`: the built-in share's NFSv3 server (`backend: share`).
//! - `error`: the crate's one error enum, with the gRPC code of each case and its
//!   conversion into a `tonic::Status`.
//!
//! The CSI side is in the controller (`warren_controller::nfs`) and the node
//! (`warren_node::nfs`); this crate knows nothing of CSI.

pub mod dirops;
pub mod error;
pub mod mount;
pub mod mount_options;
pub mod params;
pub mod probe;
pub mod share;
pub mod volume_id;

pub use error::{Error, Result};
