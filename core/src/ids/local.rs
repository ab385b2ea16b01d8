//! Local volume and snapshot IDs. Like csi-driver-nfs, the ID carries what a node needs to act on
//! it without asking anyone: the backend, the layout, the node that holds the data and a
//! random 128-bit key used as the on-disk directory name. Parsing is strict, so an ID can
//! never smuggle a path component (`..`, `/`, NUL) into a path.
//!
//! Format: `local#<layout>#<node>#<32 lowercase hex>`; snapshots: `snap#<layout>#<node>#<hex>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::IdKind;
use crate::error::Error;
use crate::validate::validate_node_id;

/// How a local volume's bytes are kept on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// A preallocated image file attached through a loop device: capacity is enforced by
    /// the file system's size, and raw block access is possible.
    Image,
    /// A plain directory, like rancher's local-path-provisioner: no capacity enforcement.
    Dir,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Image => "image",
            Layout::Dir => "dir",
        }
    }
}

impl FromStr for Layout {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "image" => Ok(Layout::Image),
            "dir" => Ok(Layout::Dir),
            other => Err(Error::InvalidArgument(format!(
                "unknown layout {other:?}: expected \"image\" or \"dir\""
            ))),
        }
    }
}

/// The on-disk key of a volume or snapshot: 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key(String);

impl Key {
    pub fn random() -> Key {
        Key(uuid::Uuid::new_v4().simple().to_string())
    }
    pub fn parse(s: &str) -> Option<Key> {
        (s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Key(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Shared shape of volume and snapshot IDs; `PREFIX` tells them apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectId<const SNAPSHOT: bool> {
    pub layout: Layout,
    pub node: String,
    pub key: Key,
}

pub type VolumeId = ObjectId<false>;
pub type SnapshotId = ObjectId<true>;

/// Longest ID accepted; far above anything Warren makes (~300 bytes with a 253-byte node).
const MAX_ID_LEN: usize = 512;

impl<const SNAPSHOT: bool> ObjectId<SNAPSHOT> {
    const PREFIX: &'static str = if SNAPSHOT {
        IdKind::LocalSnapshot.prefix()
    } else {
        IdKind::LocalVolume.prefix()
    };
    const WHAT: &'static str = if SNAPSHOT { "snapshot" } else { "volume" };

    pub fn new(layout: Layout, node: &str, key: Key) -> Self {
        ObjectId {
            layout,
            node: node.to_string(),
            key,
        }
    }

    /// Parses an ID from a request. A malformed ID can never name an object Warren made,
    /// so callers map the error to what the spec asks (often NOT_FOUND, see `parse_or_not_found`).
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "malformed {} id {:?}: {why}",
                Self::WHAT,
                truncate(s)
            ))
        };
        if s.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{} id is required",
                Self::WHAT
            )));
        }
        if s.len() > MAX_ID_LEN {
            return Err(bad("too long"));
        }
        let parts: Vec<&str> = s.split('#').collect();
        let [prefix, layout, node, key] = parts[..] else {
            return Err(bad("expected 4 '#'-separated parts"));
        };
        if prefix != Self::PREFIX {
            return Err(bad("wrong prefix"));
        }
        let layout = layout.parse().map_err(|_| bad("unknown layout"))?;
        validate_node_id(node).map_err(|_| bad("bad node name"))?;
        let key = Key::parse(key).ok_or_else(|| bad("bad key"))?;
        Ok(ObjectId {
            layout,
            node: node.to_string(),
            key,
        })
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

impl<const SNAPSHOT: bool> fmt::Display for ObjectId<SNAPSHOT> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}#{}#{}#{}",
            Self::PREFIX,
            self.layout.as_str(),
            self.node,
            self.key
        )
    }
}

impl<const SNAPSHOT: bool> TryFrom<String> for ObjectId<SNAPSHOT> {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::parse(&s)
    }
}

impl<const SNAPSHOT: bool> From<ObjectId<SNAPSHOT>> for String {
    fn from(id: ObjectId<SNAPSHOT>) -> String {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_id_round_trips() {
        let id = VolumeId::new(Layout::Image, "node-a.example", Key::random());
        let text = id.to_string();
        assert!(text.starts_with("local#image#node-a.example#"));
        assert_eq!(VolumeId::parse(&text).unwrap(), id);
        // A volume id is not a snapshot id.
        assert!(SnapshotId::parse(&text).is_err());
    }

    #[test]
    fn malformed_ids_are_refused() {
        let key = "0123456789abcdef0123456789abcdef";
        for bad in [
            String::new(),
            "local#image#node".into(),
            format!("local#image#node#{key}#x"),
            format!("local#image#../etc#{key}"),
            format!("local#image#a/b#{key}"),
            format!("local#image#node#{}", "../../../../etc/passwd0000000000"),
            format!("local#image#no\0de#{key}"),
            format!("local#zfs#node#{key}"),
            format!("local#image#node#{}", key.to_uppercase()),
            format!("local#image#{}#{key}", "n".repeat(600)),
        ] {
            assert!(VolumeId::parse(&bad).is_err(), "accepted {bad:?}");
        }
    }
}
