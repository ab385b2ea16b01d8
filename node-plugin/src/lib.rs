//! Warren's node plugin: the CSI Node service and the node-local storage behind it.

pub mod error;

pub use error::{Error, Result};
