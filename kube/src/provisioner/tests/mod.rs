//! The provisioner's tests: the PV object and CreateVolume's arguments on plain objects;
//! placement and expansion run against a scripted API server and a fake CSI service.

mod expand;
mod place;
mod pv_object;
