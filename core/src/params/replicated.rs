//! StorageClass parameters of `backend: replicated`. Every key is checked here, once, and
//! a contradiction is refused with INVALID_ARGUMENT before anything is placed or made.
//!
//! | key | values | default |
//! |---|---|---|
//! | `replicas` | 1–5 | 2 |
//! | `fsType` | ext4, xfs | ext4 (or the capability's) |
//! | `dataLocality` | `best-effort`, `disabled`, `strict` | `best-effort` |
//! | `spreadKey` | a node label key, e.g. `topology.kubernetes.io/zone` | none |
//! | `spreadRequired` | `true`, `false` (needs `spreadKey`) | `false` |
//! | `rebuildRateMiB` | MiB/s a rebuild may copy, 0 = unlimited | 0 |
//!
//! `dataLocality`: `best-effort` keeps one replica on the node the scheduler chose for the
//! first consumer when it has room; `strict` also pins the volume to its replica nodes (the
//! PV's node affinity), so the engine always has a replica in process; `disabled` places
//! by free space alone, and the volume may be used from any node.

use std::collections::HashMap;

use super::{backend, Backend, KEY_BACKEND, KEY_FS_TYPE};
use crate::error::{Error, Result};

pub const KEY_REPLICAS: &str = "replicas";
pub const KEY_DATA_LOCALITY: &str = "dataLocality";
pub const KEY_SPREAD_KEY: &str = "spreadKey";
pub const KEY_SPREAD_REQUIRED: &str = "spreadRequired";
pub const KEY_REBUILD_RATE: &str = "rebuildRateMiB";

/// Most replicas a volume may ask for: every write waits for all of them.
pub const MAX_REPLICAS: u8 = 5;
const DEFAULT_REPLICAS: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataLocality {
    /// Place by free space only; the volume is usable from any node.
    Disabled,
    /// One replica on the first consumer's node when it has room; usable from any node.
    #[default]
    BestEffort,
    /// As best-effort, and the volume may only be used on a node holding a replica.
    Strict,
}

/// Spread the replicas over the values of a node label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spread {
    pub key: String,
    /// Refuse to place rather than put two replicas under one value.
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicatedParams {
    pub replicas: u8,
    pub fs_type: Option<String>,
    pub data_locality: DataLocality,
    pub spread: Option<Spread>,
    /// Bytes per second a rebuild may copy; 0: unlimited.
    pub rebuild_rate: u64,
}

fn bool_value(key: &str, value: &str) -> Result<bool> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(Error::InvalidArgument(format!(
            "{key} {other:?}: expected \"true\" or \"false\""
        ))),
    }
}

/// A label key as Kubernetes accepts it: an optional DNS prefix and `/`, then a name of
/// at most 63 characters of [A-Za-z0-9._-] that starts and ends alphanumeric.
fn check_label_key(key: &str) -> Result<()> {
    let name = key.rsplit_once('/').map_or(key, |(_, n)| n);
    let prefix_ok = key.rsplit_once('/').is_none_or(|(p, _)| {
        !p.is_empty()
            && p.len() <= 253
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    });
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if prefix_ok && name_ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{KEY_SPREAD_KEY} {key:?} is not a valid node label key"
        )))
    }
}

/// Parses CreateVolume's `parameters` of a `backend: replicated` class.
pub fn parse_replicated_params(params: &HashMap<String, String>) -> Result<ReplicatedParams> {
    if backend(params)? != Backend::Replicated {
        return Err(Error::InvalidArgument(
            "not a backend \"replicated\" class".into(),
        ));
    }
    let mut out = ReplicatedParams {
        replicas: DEFAULT_REPLICAS,
        fs_type: None,
        data_locality: DataLocality::default(),
        spread: None,
        rebuild_rate: 0,
    };
    let mut spread_required = None;
    for (key, value) in params {
        match key.as_str() {
            KEY_BACKEND => {}
            KEY_REPLICAS => {
                out.replicas = match value.parse::<u8>() {
                    Ok(n) if (1..=MAX_REPLICAS).contains(&n) => n,
                    _ => {
                        return Err(Error::InvalidArgument(format!(
                            "replicas {value:?}: expected a whole number from 1 to {MAX_REPLICAS}"
                        )))
                    }
                }
            }
            KEY_FS_TYPE => match value.as_str() {
                "ext4" | "xfs" => out.fs_type = Some(value.clone()),
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "unknown fsType {other:?}: expected \"ext4\" or \"xfs\""
                    )))
                }
            },
            KEY_DATA_LOCALITY => {
                out.data_locality = match value.as_str() {
                    "best-effort" => DataLocality::BestEffort,
                    "disabled" => DataLocality::Disabled,
                    "strict" => DataLocality::Strict,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                    "dataLocality {other:?}: expected \"best-effort\", \"disabled\" or \"strict\""
                )))
                    }
                }
            }
            KEY_SPREAD_KEY => {
                check_label_key(value)?;
                out.spread = Some(Spread {
                    key: value.clone(),
                    required: false,
                });
            }
            KEY_SPREAD_REQUIRED => spread_required = Some(bool_value(key, value)?),
            KEY_REBUILD_RATE => {
                let mib: u64 = value.parse().map_err(|_| {
                    Error::InvalidArgument(format!(
                        "rebuildRateMiB {value:?}: expected a whole number of MiB/s (0: unlimited)"
                    ))
                })?;
                out.rebuild_rate = mib.checked_mul(1 << 20).ok_or_else(|| {
                    Error::InvalidArgument(format!("rebuildRateMiB {value:?} is too large"))
                })?;
            }
            "layout" | "allocation" => {
                return Err(Error::InvalidArgument(format!(
                    "{key:?} is a parameter of local volumes; a replicated volume has none"
                )))
            }
            k if k.starts_with("csi.storage.k8s.io/") => {}
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown parameter {other:?} for backend \"replicated\" (known: backend, \
                     replicas, fsType, dataLocality, spreadKey, spreadRequired, rebuildRateMiB)"
                )))
            }
        }
    }
    match (spread_required, out.spread.as_mut()) {
        (Some(required), Some(spread)) => spread.required = required,
        (Some(true), None) => {
            return Err(Error::InvalidArgument(
                "spreadRequired \"true\" needs spreadKey (the node label to spread over)".into(),
            ))
        }
        _ => {}
    }
    if out.replicas == 1 && out.spread.as_ref().is_some_and(|s| s.required) {
        return Err(Error::InvalidArgument(
            "spreadRequired with replicas 1 has nothing to spread".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        std::iter::once(("backend", "replicated"))
            .chain(pairs.iter().copied())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() {
        let r = parse_replicated_params(&p(&[("csi.storage.k8s.io/pvc/name", "x")])).unwrap();
        assert_eq!(r.replicas, 2);
        assert_eq!(r.data_locality, DataLocality::BestEffort);
        assert_eq!((r.spread, r.fs_type, r.rebuild_rate), (None, None, 0));
    }

    #[test]
    fn every_key() {
        let r = parse_replicated_params(&p(&[
            ("replicas", "3"),
            ("fsType", "xfs"),
            ("dataLocality", "strict"),
            ("spreadKey", "topology.kubernetes.io/zone"),
            ("spreadRequired", "true"),
            ("rebuildRateMiB", "50"),
        ]))
        .unwrap();
        assert_eq!(r.replicas, 3);
        assert_eq!(r.fs_type.as_deref(), Some("xfs"));
        assert_eq!(r.data_locality, DataLocality::Strict);
        assert_eq!(
            r.spread,
            Some(Spread {
                key: "topology.kubernetes.io/zone".into(),
                required: true
            })
        );
        assert_eq!(r.rebuild_rate, 50 << 20);
        let soft = parse_replicated_params(&p(&[("spreadKey", "zone")])).unwrap();
        assert!(!soft.spread.unwrap().required);
    }

    #[test]
    fn bad_and_contradictory_values_are_refused() {
        for bad in [
            p(&[("replicas", "0")]),
            p(&[("replicas", "99")]),
            p(&[("replicas", "-1")]),
            p(&[("replicas", "two")]),
            p(&[("fsType", "btrfs")]),
            p(&[("dataLocality", "yes")]),
            p(&[("spreadKey", "")]),
            p(&[("spreadKey", "a b")]),
            p(&[("spreadKey", "/zone")]),
            p(&[("spreadRequired", "true")]),
            p(&[("spreadRequired", "1"), ("spreadKey", "zone")]),
            p(&[
                ("replicas", "1"),
                ("spreadKey", "zone"),
                ("spreadRequired", "true"),
            ]),
            p(&[("rebuildRateMiB", "fast")]),
            p(&[("rebuildRateMiB", "99999999999999999")]),
            p(&[("layout", "image")]),
            p(&[("replicaz", "2")]),
        ] {
            let err = parse_replicated_params(&bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(!err.to_string().is_empty());
        }
        let local = HashMap::from([("backend".to_string(), "local".to_string())]);
        assert!(parse_replicated_params(&local).is_err());
    }
}
