//! `replicated#<key>`: a replicated volume. The key (32 lowercase hex digits) is also the
//! replica name on every node that holds one, so it is safe as a path component and on
//! the replication wire. The ID carries no node: which nodes hold replicas changes over
//! the volume's life (ModifyVolume, re-replication), so the volume context and the
//! replicas' own committed membership say where they are, not the ID.
//!
//! `replsnap#<volume key>#<snapshot key>`: a snapshot of a replicated volume, kept beside
//! the volume's replicas on the nodes that held them when it was taken. It names its
//! volume so a node can find the replica it was copied from without asking anyone.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{IdKind, Key};
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ReplicatedVolumeId {
    pub key: Key,
}

impl ReplicatedVolumeId {
    pub fn new(key: Key) -> Self {
        ReplicatedVolumeId { key }
    }

    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::InvalidArgument(format!(
                "malformed replicated volume id {:?}: expected replicated#<32 hex digits>",
                s.chars().take(80).collect::<String>()
            ))
        };
        let rest = s
            .strip_prefix(IdKind::Replicated.prefix())
            .and_then(|r| r.strip_prefix('#'))
            .ok_or_else(bad)?;
        Key::parse(rest).map(Self::new).ok_or_else(bad)
    }

    /// The name of this volume's replica on every node (and the engine's volume name).
    pub fn replica_name(&self) -> &str {
        self.key.as_str()
    }
}

impl fmt::Display for ReplicatedVolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", IdKind::Replicated.prefix(), self.key)
    }
}

impl TryFrom<String> for ReplicatedVolumeId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::parse(&s)
    }
}

impl From<ReplicatedVolumeId> for String {
    fn from(id: ReplicatedVolumeId) -> String {
        id.to_string()
    }
}

/// A snapshot of a replicated volume: `replsnap#<volume key>#<snapshot key>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ReplicatedSnapshotId {
    pub volume: ReplicatedVolumeId,
    pub key: Key,
}

impl ReplicatedSnapshotId {
    pub fn new(volume: ReplicatedVolumeId, key: Key) -> Self {
        ReplicatedSnapshotId { volume, key }
    }

    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::InvalidArgument(format!(
                "malformed replicated snapshot id {:?}: expected replsnap#<32 hex digits>#<32 hex digits>",
                s.chars().take(80).collect::<String>()
            ))
        };
        let rest = s
            .strip_prefix(IdKind::ReplicatedSnapshot.prefix())
            .and_then(|r| r.strip_prefix('#'))
            .ok_or_else(bad)?;
        let (volume, key) = rest.split_once('#').ok_or_else(bad)?;
        let volume = Key::parse(volume).ok_or_else(bad)?;
        let key = Key::parse(key).ok_or_else(bad)?;
        Ok(Self::new(ReplicatedVolumeId::new(volume), key))
    }

    /// The snapshot's name on every node that keeps a copy (a path component, and a name
    /// on the replication wire): its own key.
    pub fn snapshot_name(&self) -> &str {
        self.key.as_str()
    }
}

impl fmt::Display for ReplicatedSnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}#{}#{}",
            IdKind::ReplicatedSnapshot.prefix(),
            self.volume.key,
            self.key
        )
    }
}

impl TryFrom<String> for ReplicatedSnapshotId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::parse(&s)
    }
}

impl From<ReplicatedSnapshotId> for String {
    fn from(id: ReplicatedSnapshotId) -> String {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let id = ReplicatedVolumeId::new(Key::random());
        let text = id.to_string();
        assert!(text.starts_with("replicated#"));
        assert_eq!(ReplicatedVolumeId::parse(&text).unwrap(), id);
        assert_eq!(IdKind::of(&text), Some(IdKind::Replicated));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(
            serde_json::from_str::<ReplicatedVolumeId>(&json).unwrap(),
            id
        );
        for bad in [
            "replicated#",
            "replicated#../../etc",
            "replicated#0123456789ABCDEF0123456789abcdef",
            "replicated#0123456789abcdef0123456789abcdef#x",
            "local#image#n#0123456789abcdef0123456789abcdef",
            "",
        ] {
            let err = ReplicatedVolumeId::parse(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn snapshot_ids_round_trip_and_refuse_anything_else() {
        let volume = ReplicatedVolumeId::new(Key::random());
        let id = ReplicatedSnapshotId::new(volume.clone(), Key::random());
        let text = id.to_string();
        assert!(text.starts_with(&format!("replsnap#{}#", volume.key)));
        assert_eq!(ReplicatedSnapshotId::parse(&text).unwrap(), id);
        assert_eq!(IdKind::of(&text), Some(IdKind::ReplicatedSnapshot));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(
            serde_json::from_str::<ReplicatedSnapshotId>(&json).unwrap(),
            id
        );
        let key = id.key.as_str();
        for bad in [
            format!("replsnap#{key}"),
            format!("replsnap#{key}#{key}#{key}"),
            format!("replsnap#../x#{key}"),
            format!("replicated#{key}#{key}"),
            format!("snap#image#n1#{key}"),
            String::new(),
        ] {
            assert!(ReplicatedSnapshotId::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
