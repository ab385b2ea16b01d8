//! The kind of volume a CSI call is about, for the `kind` metrics label: read from the
//! prefix of the ID the call names, or, for calls that make a volume, from the
//! StorageClass's `backend` parameter.
//!
//! Only the kinds Warren knows are ever returned: a label value never comes from the
//! request as it was sent, so a client cannot grow the metrics without bound by sending
//! made-up IDs.

use std::collections::HashMap;

use warren_core::ids::IdKind;
use warren_core::params::KEY_BACKEND;

/// What a call with no volume, or an ID Warren cannot have made, is counted as.
pub const UNKNOWN: &str = "unknown";

/// The volume kinds (ID prefixes and `backend` values). A `share` volume's ID is a local
/// one (`local#...`): it is counted as `local` by ID, as `share` by CreateVolume.
const KINDS: [&str; 4] = ["local", "nfs", "share", "replicated"];

/// Kind from a volume or snapshot ID, by its prefix (`warren_core::ids::IdKind`).
pub fn of_id(id: &str) -> &'static str {
    match IdKind::of(id) {
        Some(IdKind::LocalVolume | IdKind::LocalSnapshot) => "local",
        Some(IdKind::NfsVolume | IdKind::NfsSnapshot) => "nfs",
        Some(IdKind::Replicated | IdKind::ReplicatedSnapshot) => "replicated",
        None => UNKNOWN,
    }
}

/// Kind from a StorageClass's parameters (`backend`, `local` when absent).
pub fn of_parameters(parameters: &HashMap<String, String>) -> &'static str {
    parameters
        .get(KEY_BACKEND)
        .map_or("local", |backend| known(backend))
}

fn known(name: &str) -> &'static str {
    KINDS
        .iter()
        .find(|kind| **kind == name)
        .copied()
        .unwrap_or(UNKNOWN)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn kind_from_id() {
        assert_eq!(of_id(&format!("local#image#node-a#{KEY}")), "local");
        assert_eq!(of_id(&format!("local#dir#node-a#{KEY}")), "local");
        assert_eq!(of_id(&format!("snap#image#node-a#{KEY}")), "local");
        assert_eq!(of_id(&format!("replicated#x#{KEY}")), "replicated");
        assert_eq!(of_id("nfs#server#share"), "nfs");
        assert_eq!(of_id(&format!("nfssnap#server#/share#{KEY}")), "nfs");
        // A share's volume has a local ID: no ID starts with `share#`.
        assert_eq!(of_id("share#a"), UNKNOWN);
        for unknown in [
            "",
            "local",
            "#",
            "#local",
            "LOCAL#image#n#k",
            "zfs#pool#vol",
        ] {
            assert_eq!(of_id(unknown), UNKNOWN, "{unknown:?}");
        }
        // Whatever a client sends, the label is one of a few fixed values.
        let junk = format!("{}#x", "a".repeat(10_000));
        assert_eq!(of_id(&junk), UNKNOWN);
    }

    #[test]
    fn kind_from_parameters() {
        let params = |backend: Option<&str>| {
            let mut p = HashMap::from([("layout".to_string(), "dir".to_string())]);
            if let Some(b) = backend {
                p.insert(KEY_BACKEND.to_string(), b.to_string());
            }
            p
        };
        assert_eq!(of_parameters(&params(None)), "local");
        assert_eq!(of_parameters(&params(Some("local"))), "local");
        assert_eq!(of_parameters(&params(Some("nfs"))), "nfs");
        assert_eq!(of_parameters(&params(Some("replicated"))), "replicated");
        assert_eq!(of_parameters(&params(Some("ceph"))), UNKNOWN);
    }
}
