//! StorageClass parameters. Unknown keys are refused (a typo must not silently give a
//! different kind of volume), except the `csi.storage.k8s.io/` keys that Kubernetes
//! sidecars add on their own.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::ids::Layout;
use crate::storage::Allocation;

mod replicated;
mod replicated_context;

pub use replicated::{
    parse_replicated_params, DataLocality, ReplicatedParams, Spread, MAX_REPLICAS,
};
pub use replicated_context::{
    ReplicaEndpoint, ReplicatedContext, CONTEXT_REBUILD_RATE, CONTEXT_REPLICAS, CONTEXT_SIZE,
};

/// The kinds of volume a StorageClass can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    /// A sub-directory on an existing NFS server; its parameters are the `warren-nfs`
    /// crate's to parse.
    Nfs,
    /// The built-in share: a local image volume on one node, served by that node's Warren
    /// over NFS to the others (every access mode). The same parameters as `local`.
    Share,
    /// A block volume kept in sync on N nodes (`replicas`), served by an engine on the
    /// node that stages it; parameters in `replicated.rs`.
    Replicated,
}

impl Backend {
    /// The `backend` parameter's value that names this kind.
    pub const fn as_str(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Nfs => "nfs",
            Backend::Share => "share",
            Backend::Replicated => "replicated",
        }
    }
}

/// The backend a StorageClass asks for (`backend`, `local` when absent).
pub fn backend(params: &HashMap<String, String>) -> Result<Backend> {
    parse_backend(params.get(KEY_BACKEND).map(String::as_str))
}

/// A `backend` parameter's value (None: absent, so `local`), for callers whose parameters
/// are not a `HashMap` (a StorageClass object's are a `BTreeMap`).
pub fn parse_backend(value: Option<&str>) -> Result<Backend> {
    match value {
        None | Some("local") => Ok(Backend::Local),
        Some("nfs") => Ok(Backend::Nfs),
        Some("share") => Ok(Backend::Share),
        Some("replicated") => Ok(Backend::Replicated),
        Some(other) => Err(Error::InvalidArgument(format!(
            "unknown backend {other:?} (supported: \"local\", \"nfs\", \"share\", \"replicated\")"
        ))),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalParams {
    pub layout: Layout,
    pub allocation: Allocation,
    /// File system to make when the capability names none (`fsType` parameter).
    pub fs_type: Option<String>,
    /// `backend: share`: served over NFS by its node to the other nodes.
    pub shared: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeParams {
    Local(LocalParams),
}

pub const KEY_BACKEND: &str = "backend";
pub const KEY_LAYOUT: &str = "layout";
pub const KEY_ALLOCATION: &str = "allocation";
pub const KEY_FS_TYPE: &str = "fsType";

/// Volume-context key carrying the StorageClass's `fsType` to NodeStageVolume.
pub const CONTEXT_FS_TYPE: &str = "warren.csi.dev/fsType";
/// Volume-context key of a shared volume: where its node serves it (`IP:PORT`).
pub const CONTEXT_SHARE: &str = "warren.csi.dev/share";

/// Parses CreateVolume's `parameters` of a `backend: local` or `backend: share` class.
pub fn parse_params(params: &HashMap<String, String>) -> Result<VolumeParams> {
    let shared = match backend(params)? {
        b @ (Backend::Nfs | Backend::Replicated) => {
            return Err(Error::InvalidArgument(format!(
                "backend {:?} is not a local volume",
                b.as_str()
            )))
        }
        Backend::Local => false,
        Backend::Share => true,
    };
    let mut local = LocalParams {
        layout: Layout::Image,
        allocation: Allocation::Thick,
        fs_type: None,
        shared,
    };
    for (key, value) in params {
        match key.as_str() {
            KEY_BACKEND => {}
            KEY_LAYOUT => local.layout = value.parse()?,
            KEY_ALLOCATION => {
                local.allocation = match value.as_str() {
                    "thick" => Allocation::Thick,
                    "thin" => Allocation::Thin,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "unknown allocation {other:?}: expected \"thick\" or \"thin\""
                        )))
                    }
                }
            }
            KEY_FS_TYPE => match value.as_str() {
                "ext4" | "xfs" => local.fs_type = Some(value.clone()),
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "unknown fsType {other:?}: expected \"ext4\" or \"xfs\""
                    )))
                }
            },
            k if k.starts_with("csi.storage.k8s.io/") => {}
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown parameter {other:?} for backend \"local\" (known: backend, layout, allocation, fsType)"
                )))
            }
        }
    }
    if shared && local.layout != Layout::Image {
        return Err(Error::InvalidArgument(
            "backend \"share\" serves image volumes (their size is enforced); \
             layout \"dir\" is not shared"
                .into(),
        ));
    }
    Ok(VolumeParams::Local(local))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_thick_images() {
        let VolumeParams::Local(l) = parse_params(&p(&[])).unwrap();
        assert_eq!((l.layout, l.allocation), (Layout::Image, Allocation::Thick));
        let VolumeParams::Local(l) = parse_params(&p(&[
            ("backend", "local"),
            ("layout", "dir"),
            ("csi.storage.k8s.io/pvc/name", "data"),
        ]))
        .unwrap();
        assert_eq!(l.layout, Layout::Dir);
    }

    #[test]
    fn backends() {
        assert_eq!(backend(&p(&[])).unwrap(), Backend::Local);
        assert_eq!(backend(&p(&[("backend", "nfs")])).unwrap(), Backend::Nfs);
        assert!(backend(&p(&[("backend", "NFS")])).is_err());
        assert!(parse_params(&p(&[("backend", "nfs")])).is_err());
        let VolumeParams::Local(l) = parse_params(&p(&[("backend", "share")])).unwrap();
        assert!(l.shared && l.layout == Layout::Image);
        assert!(parse_params(&p(&[("backend", "share"), ("layout", "dir")])).is_err());
        let VolumeParams::Local(l) = parse_params(&p(&[])).unwrap();
        assert!(!l.shared);
    }

    #[test]
    fn unknown_values_and_keys_are_refused() {
        for bad in [
            p(&[("backend", "ceph")]),
            p(&[("backend", "replicated")]),
            p(&[("backend", "zfs")]),
            p(&[("layout", "zfs")]),
            p(&[("allocation", "lazy")]),
            p(&[("fsType", "ntfs")]),
            p(&[("layuot", "dir")]),
        ] {
            let err = parse_params(&bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }
}
