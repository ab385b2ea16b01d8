//! Warren's NFS backend (`backend: nfs`): volumes are sub-directories of an export on an
//! existing NFS server.
//!
//! - `params`: the StorageClass parameters and the sub-directory a volume gets.
//! - `dirops`: what the controller does on the server — make, archive, remove and look at
//!   sub-directories — speaking NFSv3 from user space (`nfs3_client`), every call under a
//!   deadline, so the controller needs neither a kernel mount nor privilege.
//!
//! Not wired into the CSI services yet: `backend: nfs` is still refused by
//! `warren_core::params` until the controller and node sides exist.

pub mod dirops;
pub mod error;
pub mod params;

pub use error::{Error, Result};
