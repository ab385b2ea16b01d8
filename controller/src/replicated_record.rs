//! The controller's record of one replicated volume, kept under
//! `<state-dir>/controller/replicated/` (see `Records`).
//!
//! It names every node asked to hold a replica and is written before any of them is
//! asked (state `Creating`), so after `kill -9` no replica exists that no record names:
//! reconciliation can always find and undo them. What the StorageClass asked is kept
//! whole, which is what makes CreateVolume idempotent by name (same parameters, same
//! volume; other parameters, ALREADY_EXISTS).

use serde::{Deserialize, Serialize};
use warren_core::ids::{Key, ReplicatedSnapshotId, ReplicatedVolumeId, SnapshotId, VolumeId};
use warren_core::params::{DataLocality, ReplicaEndpoint, ReplicatedParams};

use crate::record_dir::Record;
use crate::records::State;

/// One replica: the node that holds it and where its replica service listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaLocation {
    pub node: String,
    /// `HOST:PORT` of the node's replica service.
    pub endpoint: String,
}

/// The core's `DataLocality`, in the record's JSON as the StorageClass spells it.
#[derive(Serialize, Deserialize)]
#[serde(remote = "DataLocality", rename_all = "kebab-case")]
enum DataLocalityDef {
    Disabled,
    BestEffort,
    Strict,
}

/// What a new replicated volume was filled from (CreateVolume's content source).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicatedSource {
    /// Restored from a snapshot of a replicated volume.
    Snapshot(ReplicatedSnapshotId),
    /// Cloned from a replicated volume.
    Volume(ReplicatedVolumeId),
    /// Restored from a local (image) volume's snapshot.
    LocalSnapshot(SnapshotId),
    /// Cloned from a local (image) volume.
    LocalVolume(VolumeId),
}

impl ReplicatedSource {
    /// The ID as the CO gave it.
    pub fn id(&self) -> String {
        match self {
            ReplicatedSource::Snapshot(id) => id.to_string(),
            ReplicatedSource::Volume(id) => id.to_string(),
            ReplicatedSource::LocalSnapshot(id) => id.to_string(),
            ReplicatedSource::LocalVolume(id) => id.to_string(),
        }
    }

    pub fn is_snapshot(&self) -> bool {
        matches!(
            self,
            ReplicatedSource::Snapshot(_) | ReplicatedSource::LocalSnapshot(_)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicatedRecord {
    pub id: ReplicatedVolumeId,
    pub name: String,
    pub capacity_bytes: u64,
    /// The nodes chosen at creation, in placement order.
    pub replicas: Vec<ReplicaLocation>,
    /// How many replicas the StorageClass asked for (`replicas`).
    pub replica_count: u8,
    pub fs_type: Option<String>,
    #[serde(with = "DataLocalityDef")]
    pub data_locality: DataLocality,
    /// `spreadKey` and `spreadRequired`, kept so a retry with another spread is refused.
    pub spread_key: Option<String>,
    pub spread_required: bool,
    /// Bytes per second a rebuild may copy; 0: unlimited.
    pub rebuild_rate: u64,
    /// Created for raw block access.
    pub block: bool,
    /// What it is filled from, before it is `Ready`.
    #[serde(default)]
    pub source: Option<ReplicatedSource>,
    pub state: State,
}

impl ReplicatedRecord {
    /// Whether this record was made from the same StorageClass parameters and size.
    pub fn same_request(
        &self,
        params: &ReplicatedParams,
        capacity_bytes: u64,
        source: Option<&ReplicatedSource>,
    ) -> bool {
        self.capacity_bytes == capacity_bytes
            && self.source.as_ref() == source
            && self.replica_count == params.replicas
            && self.fs_type == params.fs_type
            && self.data_locality == params.data_locality
            && self.spread_key.as_deref() == params.spread.as_ref().map(|s| s.key.as_str())
            && self.spread_required == params.spread.as_ref().is_some_and(|s| s.required)
            && self.rebuild_rate == params.rebuild_rate
    }

    /// The node names, in placement order: every replica's `members` at creation.
    pub fn nodes(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.node.clone()).collect()
    }

    pub fn endpoints(&self) -> Vec<ReplicaEndpoint> {
        self.replicas
            .iter()
            .map(|r| ReplicaEndpoint {
                node: r.node.clone(),
                endpoint: r.endpoint.clone(),
            })
            .collect()
    }
}

impl Record for ReplicatedRecord {
    fn key(&self) -> &Key {
        &self.id.key
    }
    fn name(&self) -> Option<&str> {
        Some(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Records;
    use warren_core::params::Spread;

    #[test]
    fn survives_reopen_and_compares_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::open(dir.path()).unwrap();
        let rec = ReplicatedRecord {
            id: ReplicatedVolumeId::new(Key::random()),
            name: "pvc-r".into(),
            capacity_bytes: 1 << 30,
            replicas: vec![ReplicaLocation {
                node: "n1".into(),
                endpoint: "10.0.0.1:7460".into(),
            }],
            replica_count: 1,
            fs_type: Some("xfs".into()),
            data_locality: DataLocality::Strict,
            spread_key: None,
            spread_required: false,
            rebuild_rate: 0,
            block: false,
            source: None,
            state: State::Creating,
        };
        records.put_replicated(&rec).unwrap();
        drop(records);
        let reopened = Records::open(dir.path()).unwrap();
        assert_eq!(reopened.replicated_by_name("pvc-r"), Some(rec.clone()));
        assert!(reopened.volume_by_name("pvc-r").is_none());
        let raw = std::fs::read_to_string(
            dir.path()
                .join(format!("controller/replicated/{}.json", rec.id.key)),
        )
        .unwrap();
        assert!(raw.contains("\"strict\""), "{raw}");

        let mut params = ReplicatedParams {
            replicas: 1,
            fs_type: Some("xfs".into()),
            data_locality: DataLocality::Strict,
            spread: None,
            rebuild_rate: 0,
        };
        assert!(rec.same_request(&params, 1 << 30, None));
        assert!(!rec.same_request(&params, 2 << 30, None));
        params.spread = Some(Spread {
            key: "zone".into(),
            required: false,
        });
        assert!(!rec.same_request(&params, 1 << 30, None));
    }
}
