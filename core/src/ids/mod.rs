//! The grammar of every ID Warren hands out, in one place. An ID is `<prefix>#<fields>`;
//! the prefix alone says what kind of object it names ([`IdKind`]), and each kind's
//! fields are parsed by that kind's type:
//!
//! ```text
//! local#<layout>#<node>#<key>            a local volume (also a share's volume)  local::VolumeId
//! snap#<layout>#<node>#<key>             a local volume's snapshot               local::SnapshotId
//! nfs#<server>#<share>#<subdir>#<onDelete>   an NFS volume            warren_nfs::volume_id
//! nfssnap#<server>#<share>#<key>         an NFS volume's snapshot        warren_nfs::volume_id
//! replicated#<key>                      a replicated volume                 replicated::ReplicatedVolumeId
//! replsnap#<volume key>#<key>            a replicated volume's snapshot      replicated::ReplicatedSnapshotId
//! ```
//!
//! The NFS fields are validated by the NFS crate, with the same rules as the StorageClass
//! parameters they came from; what kind an ID is, and which node a local ID names, is
//! decided here and nowhere else.

mod local;
mod replicated;

pub use local::{Key, Layout, ObjectId, SnapshotId, VolumeId};
pub use replicated::{ReplicatedSnapshotId, ReplicatedVolumeId};

/// What a CSI volume or snapshot ID names, told by its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    LocalVolume,
    LocalSnapshot,
    NfsVolume,
    NfsSnapshot,
    Replicated,
    ReplicatedSnapshot,
}

impl IdKind {
    /// The kind whose prefix `id` starts with, or None for an ID Warren cannot have made.
    /// Only the prefix is read: whether the rest is well formed is the kind's parser's call.
    pub fn of(id: &str) -> Option<IdKind> {
        let (prefix, _) = id.split_once('#')?;
        Some(match prefix {
            "local" => IdKind::LocalVolume,
            "snap" => IdKind::LocalSnapshot,
            "nfs" => IdKind::NfsVolume,
            "nfssnap" => IdKind::NfsSnapshot,
            "replicated" => IdKind::Replicated,
            "replsnap" => IdKind::ReplicatedSnapshot,
            _ => return None,
        })
    }

    /// The prefix IDs of this kind start with (without the `#`).
    pub const fn prefix(self) -> &'static str {
        match self {
            IdKind::LocalVolume => "local",
            IdKind::LocalSnapshot => "snap",
            IdKind::NfsVolume => "nfs",
            IdKind::NfsSnapshot => "nfssnap",
            IdKind::Replicated => "replicated",
            IdKind::ReplicatedSnapshot => "replsnap",
        }
    }
}

/// Whether `id` is meant as an NFS volume ID (then the NFS parser says whether it is one).
pub fn is_nfs_volume(id: &str) -> bool {
    IdKind::of(id) == Some(IdKind::NfsVolume)
}

/// Whether `id` is meant as an NFS snapshot ID.
pub fn is_nfs_snapshot(id: &str) -> bool {
    IdKind::of(id) == Some(IdKind::NfsSnapshot)
}

/// Whether `id` is meant as a replicated volume ID.
pub fn is_replicated_volume(id: &str) -> bool {
    IdKind::of(id) == Some(IdKind::Replicated)
}

/// Whether `id` is meant as a replicated volume's snapshot ID.
pub fn is_replicated_snapshot(id: &str) -> bool {
    IdKind::of(id) == Some(IdKind::ReplicatedSnapshot)
}

/// The node a well-formed local volume ID names (a share's volume has one too), else None.
pub fn local_volume_node(id: &str) -> Option<String> {
    VolumeId::parse(id).ok().map(|v| v.node)
}

/// The node a well-formed local snapshot ID names, else None.
pub fn local_snapshot_node(id: &str) -> Option<String> {
    SnapshotId::parse(id).ok().map(|s| s.node)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn kind_is_told_by_the_prefix_alone() {
        let cases = [
            (format!("local#image#n1#{KEY}"), Some(IdKind::LocalVolume)),
            (format!("snap#dir#n1#{KEY}"), Some(IdKind::LocalSnapshot)),
            ("nfs#h#/s#x#delete".to_string(), Some(IdKind::NfsVolume)),
            (format!("nfssnap#h#/s#{KEY}"), Some(IdKind::NfsSnapshot)),
            (format!("replicated#x#{KEY}"), Some(IdKind::Replicated)),
            (String::new(), None),
            ("local".to_string(), None),
            ("#local".to_string(), None),
            ("LOCAL#image#n#k".to_string(), None),
            ("zfs#pool#vol".to_string(), None),
        ];
        for (id, kind) in cases {
            assert_eq!(IdKind::of(&id), kind, "{id:?}");
            if let Some(k) = kind {
                assert!(id.starts_with(&format!("{}#", k.prefix())), "{id:?}");
            }
        }
        assert!(is_nfs_volume("nfs#h#/s#x#delete"));
        assert!(!is_nfs_volume(&format!("nfssnap#h#/s#{KEY}")));
        assert!(is_nfs_snapshot(&format!("nfssnap#h#/s#{KEY}")));
    }

    #[test]
    fn node_of_a_local_id() {
        assert_eq!(
            local_volume_node(&format!("local#image#n2#{KEY}")).as_deref(),
            Some("n2")
        );
        assert_eq!(local_volume_node("local#image#n2#0123"), None);
        assert_eq!(local_volume_node(&format!("snap#image#n2#{KEY}")), None);
        assert_eq!(
            local_snapshot_node(&format!("snap#dir#n3#{KEY}")).as_deref(),
            Some("n3")
        );
    }
}
