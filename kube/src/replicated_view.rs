//! What `kubectl get replicatedvolumes` shows: one `ReplicatedVolume` object per
//! replicated PersistentVolume, with where its replicas are, which are in sync, the
//! progress of a rebuild in bytes, and which node runs its engine.
//!
//! - `resource`: the custom resource (`warren.csi.dev/v1alpha1`, cluster-scoped, `wrv`);
//!   `crd_yaml`: its CRD as the Helm chart ships it (a test keeps them equal).
//! - `decide`: pure decisions — the object a PV should have, and the statuses a node
//!   should write — from what is observed.
//! - `keeper`: the thin loops. The keeper of the objects runs where every PV is seen (the
//!   standard mode's controller; in the edge mode each node, for the volumes it holds a
//!   replica of); the status writer runs in every node process that runs engines.
//!
//! Who writes what, and why: docs/design.md, "What kubectl shows of a replicated volume".

pub mod crd_yaml;
pub mod decide;
pub mod keeper;
pub mod resource;

#[cfg(test)]
mod tests;

pub use decide::{EngineView, RebuildBytes, RebuildView};
pub use keeper::{
    keep_objects, keep_objects_in_cluster, write_statuses, write_statuses_in_cluster,
};
pub use resource::{LastRebuild, ReplicatedVolume, ReplicatedVolumeSpec, ReplicatedVolumeStatus};
