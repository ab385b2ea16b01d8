//! Warren's node plugin: the CSI Node service and the node-local storage behind it.

// The release binary aborts on panic: one broken invariant would kill the node process.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod copy;
pub mod decide;
pub mod error;
pub mod filesystem;
pub mod freeze;
pub mod fsprobe;
pub mod fssize;
pub mod local;
pub mod loopdev;
pub mod mount_steps;
pub mod mounter;
pub mod mountinfo;
pub mod nfs;
pub mod paths;
pub mod replicated;
pub mod service;
pub mod share;
pub mod stage;

pub use error::{Error, Result};
