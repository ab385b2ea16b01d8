//! What the unit tests of several modules share: Kubernetes objects to feed the pure
//! decisions.

pub mod fixtures;
