//! The nodes a controller can place volumes on, each reached through `NodeStorage`
//! (in-process for `warren all`, the authenticated agent channel otherwise).

use std::collections::BTreeMap;
use std::sync::Arc;

use warren_core::storage::NodeStorage;
use warren_core::{Error, Result};

#[derive(Default, Clone)]
pub struct Nodes {
    nodes: BTreeMap<String, Arc<dyn NodeStorage>>,
}

impl Nodes {
    pub fn add(&mut self, name: &str, storage: Arc<dyn NodeStorage>) {
        self.nodes.insert(name.to_string(), storage);
    }

    pub fn get(&self, name: &str) -> Result<&Arc<dyn NodeStorage>> {
        self.nodes.get(name).ok_or_else(|| {
            Error::Unavailable(format!(
                "node {name:?} is not known to this controller (no agent configured for it)"
            ))
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<dyn NodeStorage>)> {
        self.nodes.iter()
    }
}
