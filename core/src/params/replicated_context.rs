//! What NodeStageVolume needs to start a replicated volume's engine, carried in the
//! volume context the controller returns (csi-driver-nfs style: the node needs no call
//! back to the controller). The controller writes it once, at CreateVolume.
//!
//! `warren.csi.dev/replicas`: `node=HOST:PORT,...`, the replicas at creation. Later
//! membership changes are recorded on the replicas themselves (their committed member
//! lists), which the engine's start plan trusts over this list.

use std::collections::HashMap;

use crate::error::{Error, Result};

pub const CONTEXT_REPLICAS: &str = "warren.csi.dev/replicas";
pub const CONTEXT_SIZE: &str = "warren.csi.dev/size";
pub const CONTEXT_REBUILD_RATE: &str = "warren.csi.dev/rebuildRate";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplicaEndpoint {
    pub node: String,
    /// `HOST:PORT` of the node's replica service.
    pub endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicatedContext {
    pub replicas: Vec<ReplicaEndpoint>,
    pub size_bytes: u64,
    /// Bytes per second a rebuild may copy; 0: unlimited.
    pub rebuild_rate: u64,
}

impl ReplicatedContext {
    pub fn write(&self, context: &mut HashMap<String, String>) {
        let replicas = self
            .replicas
            .iter()
            .map(|r| format!("{}={}", r.node, r.endpoint))
            .collect::<Vec<_>>()
            .join(",");
        context.insert(CONTEXT_REPLICAS.into(), replicas);
        context.insert(CONTEXT_SIZE.into(), self.size_bytes.to_string());
        context.insert(CONTEXT_REBUILD_RATE.into(), self.rebuild_rate.to_string());
    }

    /// The context of a replicated volume; INVALID_ARGUMENT when a key is missing or
    /// malformed (the CO passed a context Warren did not make).
    pub fn read(context: &HashMap<String, String>) -> Result<Self> {
        let get = |key: &str| {
            context.get(key).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "volume_context has no {key:?}: not a context Warren made for a replicated volume"
                ))
            })
        };
        let replicas = get(CONTEXT_REPLICAS)?
            .split(',')
            .map(|entry| {
                let (node, endpoint) = entry
                    .split_once('=')
                    .filter(|(n, e)| !n.is_empty() && e.contains(':'))
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "{CONTEXT_REPLICAS} entry {entry:?}: expected NODE=HOST:PORT"
                        ))
                    })?;
                crate::validate::validate_node_id(node)?;
                Ok(ReplicaEndpoint {
                    node: node.to_string(),
                    endpoint: endpoint.to_string(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let number = |key: &str| -> Result<u64> {
            get(key)?.parse().map_err(|_| {
                Error::InvalidArgument(format!("{key} in volume_context is not a number"))
            })
        };
        let size_bytes = number(CONTEXT_SIZE)?;
        if size_bytes == 0 || !size_bytes.is_multiple_of(4096) {
            return Err(Error::InvalidArgument(format!(
                "{CONTEXT_SIZE} {size_bytes} is not a positive multiple of 4096"
            )));
        }
        Ok(ReplicatedContext {
            replicas,
            size_bytes,
            rebuild_rate: number(CONTEXT_REBUILD_RATE)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let ctx = ReplicatedContext {
            replicas: vec![
                ReplicaEndpoint {
                    node: "n1".into(),
                    endpoint: "10.0.0.1:7460".into(),
                },
                ReplicaEndpoint {
                    node: "n2".into(),
                    endpoint: "[fd00::2]:7460".into(),
                },
            ],
            size_bytes: 1 << 30,
            rebuild_rate: 0,
        };
        let mut map = HashMap::from([("other".to_string(), "kept".to_string())]);
        ctx.write(&mut map);
        assert_eq!(ReplicatedContext::read(&map).unwrap(), ctx);
        assert_eq!(map["other"], "kept");
        for (key, bad) in [
            (CONTEXT_REPLICAS, "n1"),
            (CONTEXT_REPLICAS, "=1.2.3.4:1"),
            (CONTEXT_REPLICAS, "../x=1.2.3.4:1"),
            (CONTEXT_SIZE, "12"),
            (CONTEXT_SIZE, "x"),
        ] {
            let mut m = map.clone();
            m.insert(key.to_string(), bad.to_string());
            let err = ReplicatedContext::read(&m).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{key}={bad}");
        }
        assert!(ReplicatedContext::read(&HashMap::new()).is_err());
    }
}
