//! Warren's side of the Kubernetes API.
//!
//! - `registration`: the kubelet plugin-registration socket (instead of the
//!   node-driver-registrar sidecar).
//! - `claims`, `volumes`: pure decisions — what a PersistentVolumeClaim or a
//!   PersistentVolume asks of this node, from what is observed.
//! - `provisioner`, `reclaimer`: carry those decisions out through Warren's own CSI
//!   services (the edge mode's sidecar-free provisioner, resizer and deleter).
//! - `snapshots`, `snapshotter`: the same pair for VolumeSnapshots (what the
//!   snapshot-controller and csi-snapshotter do in a standard deployment).
//! - `edge`: the edge mode's Kubernetes side wired together in the node process.
//! - `discovery`: the standard mode's controller finds the nodes' agents from Node
//!   objects.
//! - `quantity`: Kubernetes storage quantities to bytes and back.
//! - `replicated_view`: the `ReplicatedVolume` objects kubectl shows for replicated
//!   volumes (replicas, sync state, rebuild progress, engine node), and who writes them.
//! - `lease`: leader election on a coordination.k8s.io Lease, for what no node owns:
//!   where an Immediate-binding volume goes, and every step of NFS volumes (which live
//!   on a server all nodes reach) and their snapshots.

// One broken invariant must not take the node process down (the release build aborts on
// a panic): outside tests, values are checked once and passed on typed.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod claims;
pub mod cluster_token;
pub mod discovery;
pub mod edge;
pub mod error;
pub mod lease;
pub mod provisioner;
pub mod quantity;
pub mod reclaimer;
pub mod registration;
pub mod replicated_view;
pub mod snapshots;
pub mod snapshotter;
pub mod volumes;

#[cfg(test)]
mod test_support;

pub use error::{Error, Result};

/// The kubelet plugin-registration protocol (pluginregistration v1).
pub mod proto {
    tonic::include_proto!("pluginregistration");
}

/// The CSI driver name and the node topology key, defined once in the core.
pub use warren_core::{DRIVER, TOPOLOGY_KEY};
