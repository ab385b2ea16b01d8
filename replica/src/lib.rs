//! Warren's replication engine. See docs/design.md, "Replicated block volumes".
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod error;
pub mod frontend;
pub mod sparse;
pub mod target;

pub use error::{Error, Result};
pub use target::{BlockTarget, FileTarget};
pub mod auth;
pub mod bitmap;
mod blocking;
pub mod client;
pub mod engine;
pub mod heal;
mod locks;
pub mod messages;
pub mod names;
mod nowait;
pub mod plan;
pub mod pool;
pub mod protocol;
pub mod seed;
pub mod server;
pub mod snapshots;
pub mod volume;
mod writeback;
