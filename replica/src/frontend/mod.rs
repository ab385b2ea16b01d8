//! Frontends: expose a `BlockTarget` as a kernel block device.
pub mod fuse;
pub mod nbd;
pub mod select;
pub mod ublk;
