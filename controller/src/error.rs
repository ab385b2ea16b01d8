//! The controller's errors are the core's: every failure already carries its CSI code, and
//! node errors arrive as core errors through the `NodeStorage` interface.
pub use warren_core::{Error, Result};
