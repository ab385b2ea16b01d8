//! Warren's replication engine. See docs/design.md, "Replicated block volumes".

pub mod error;
pub mod frontend;
pub mod sparse;
pub mod target;

pub use error::{Error, Result};
pub use target::{BlockTarget, FileTarget};
