//! The nodes a controller can place volumes on, each reached through `NodeStorage`
//! (in-process for `warren all`, the authenticated agent channel otherwise).
//!
//! The set is shared and may change while the controller runs: in a cluster it follows
//! the Node objects (`warren controller --discover-nodes`). Handlers take a clone of one
//! node's handle and never hold the lock across an await.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use warren_core::storage::NodeStorage;
use warren_core::{Error, Result};

#[derive(Default, Clone)]
pub struct Nodes {
    nodes: Arc<RwLock<BTreeMap<String, Arc<dyn NodeStorage>>>>,
    /// The labels of each node's Node object, when known (in a cluster): replicated
    /// volumes spread their replicas over their values.
    labels: Arc<RwLock<BTreeMap<String, BTreeMap<String, String>>>>,
}

impl Nodes {
    pub fn add(&self, name: &str, storage: Arc<dyn NodeStorage>) {
        self.write().insert(name.to_string(), storage);
    }

    pub fn remove(&self, name: &str) -> bool {
        self.labels
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        self.write().remove(name).is_some()
    }

    /// Records a node's labels (from its Node object).
    pub fn set_labels(&self, name: &str, labels: BTreeMap<String, String>) {
        self.labels
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), labels);
    }

    /// A node's labels; empty when not known.
    pub fn labels(&self, name: &str) -> BTreeMap<String, String> {
        self.labels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    pub fn get(&self, name: &str) -> Result<Arc<dyn NodeStorage>> {
        self.read().get(name).cloned().ok_or_else(|| {
            Error::Unavailable(format!(
                "node {name:?} is not known to this controller (no agent for it)"
            ))
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// The nodes as they are now.
    pub fn snapshot(&self) -> Vec<(String, Arc<dyn NodeStorage>)> {
        self.read()
            .iter()
            .map(|(name, node)| (name.clone(), node.clone()))
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<dyn NodeStorage>>> {
        // A panic elsewhere while holding the lock leaves the map itself intact.
        self.nodes.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<dyn NodeStorage>>> {
        self.nodes.write().unwrap_or_else(|e| e.into_inner())
    }
}
