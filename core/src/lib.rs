#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
//! Warren's shared core: what the controller, the node plugin and the `warren` binary all
//! need. See docs/design.md for how the parts fit together.

pub mod agent;
pub mod capability;
pub mod durable;
pub mod endpoint;
pub mod error;
pub mod identity;
pub mod ids;
pub mod lock;
pub mod params;
pub mod storage;
pub mod validate;

pub use error::{Error, Result};

/// The CSI driver name, as the CO and Kubernetes objects carry it.
pub const DRIVER: &str = "warren.csi.dev";

/// Topology key that pins a local volume to its node.
pub const TOPOLOGY_KEY: &str = "topology.warren.csi.dev/node";
