//! Frontends: expose a `BlockTarget` as a kernel block device.
