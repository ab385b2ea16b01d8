//! JSON bodies of the control frames.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenRequest {
    pub volume: String,
    pub size: u64,
    /// Create an empty replica when there is none.
    pub create: bool,
}

/// `Commit` and `BeginRebuild`: compare-and-set of the generation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerationChange {
    pub expect: u64,
    pub gen: u64,
    pub members: Vec<String>,
}
