//! The volume ID of an NFS volume carries everything DeleteVolume, snapshots and the node
//! need — server, share, sub-directory and what to do on delete — so the controller keeps
//! no state for NFS volumes (and loses none when its pod moves), as csi-driver-nfs does:
//!
//! ```text
//! nfs#<server>#<share>#<sub-directory>#<onDelete>
//! ```
//!
//! `#` and `%` inside a field are percent-escaped. A parsed ID is checked as strictly as
//! the StorageClass parameters it came from, so a forged ID can never name a path outside
//! its share.

use warren_core::ids::IdKind;

use crate::error::{Error, Result};
use crate::params::{self, NfsParams, OnDelete};

const PREFIX: &str = IdKind::NfsVolume.prefix();
/// The longest ID Warren accepts (the same bound as its local volume IDs).
const MAX_LEN: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsVolumeId {
    pub server: String,
    pub share: String,
    pub sub_dir: String,
    pub on_delete: OnDelete,
}

impl NfsVolumeId {
    pub fn of(params: &NfsParams) -> Self {
        NfsVolumeId {
            server: params.server.clone(),
            share: params.share.clone(),
            sub_dir: params.sub_dir.clone(),
            on_delete: params.on_delete,
        }
    }

    pub fn parse(id: &str) -> Result<Self> {
        let bad = |why: &str| Error::InvalidArgument(format!("malformed NFS volume id: {why}"));
        if id.len() > MAX_LEN {
            return Err(bad("too long"));
        }
        let parts: Vec<&str> = id.split('#').collect();
        let [prefix, server, share, sub_dir, on_delete] = parts[..] else {
            return Err(bad("expected nfs#server#share#sub-directory#onDelete"));
        };
        if prefix != PREFIX {
            return Err(bad("wrong prefix"));
        }
        let on_delete = match on_delete {
            "delete" => OnDelete::Delete,
            "retain" => OnDelete::Retain,
            "archive" => OnDelete::Archive,
            _ => return Err(bad("unknown onDelete")),
        };
        // The same checks as the StorageClass parameters: a forged id cannot escape.
        let check = |e: Error| bad(&e.to_string());
        let sub_dir = params::checked_sub_dir(&unescape(sub_dir)?).map_err(check)?;
        if sub_dir.contains("${") {
            return Err(bad("unexpanded placeholder"));
        }
        Ok(NfsVolumeId {
            server: params::server_name(&unescape(server)?).map_err(check)?,
            share: params::share_path(&unescape(share)?).map_err(check)?,
            sub_dir,
            on_delete,
        })
    }
}

impl std::fmt::Display for NfsVolumeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on_delete = match self.on_delete {
            OnDelete::Delete => "delete",
            OnDelete::Retain => "retain",
            OnDelete::Archive => "archive",
        };
        write!(
            f,
            "{PREFIX}#{}#{}#{}#{on_delete}",
            escape(&self.server),
            escape(&self.share),
            escape(&self.sub_dir)
        )
    }
}

/// A snapshot of an NFS volume: a copy of its sub-directory made on the same server, in
/// `<share>/.warren-snapshots/<key>` (32 lowercase hex digits, random). The ID names the
/// export and the key, so deleting it or restoring from it needs no record:
///
/// ```text
/// nfssnap#<server>#<share>#<key>
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsSnapshotId {
    pub server: String,
    pub share: String,
    pub key: String,
}

/// Where snapshots live on the export. No volume's sub-directory may start with it
/// (`params::checked_sub_dir`), so a volume can never be, or hold, a snapshot.
pub const SNAPSHOTS_DIR: &str = ".warren-snapshots";
const SNAPSHOT_PREFIX: &str = IdKind::NfsSnapshot.prefix();

impl NfsSnapshotId {
    /// A new snapshot of `volume`, kept on the same export.
    pub fn new(volume: &NfsVolumeId, key: &str) -> Self {
        NfsSnapshotId {
            server: volume.server.clone(),
            share: volume.share.clone(),
            key: key.to_string(),
        }
    }

    /// The snapshot's directory, relative to the share.
    pub fn sub_dir(&self) -> String {
        format!("{SNAPSHOTS_DIR}/{}", self.key)
    }

    pub fn parse(id: &str) -> Result<Self> {
        let bad = |why: &str| Error::InvalidArgument(format!("malformed NFS snapshot id: {why}"));
        if id.len() > MAX_LEN {
            return Err(bad("too long"));
        }
        let parts: Vec<&str> = id.split('#').collect();
        let [prefix, server, share, key] = parts[..] else {
            return Err(bad("expected nfssnap#server#share#key"));
        };
        if prefix != SNAPSHOT_PREFIX {
            return Err(bad("wrong prefix"));
        }
        if key.len() != 32
            || !key
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("the key is not 32 lowercase hex digits"));
        }
        let check = |e: Error| bad(&e.to_string());
        Ok(NfsSnapshotId {
            server: params::server_name(&unescape(server)?).map_err(check)?,
            share: params::share_path(&unescape(share)?).map_err(check)?,
            key: key.to_string(),
        })
    }
}

impl std::fmt::Display for NfsSnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{SNAPSHOT_PREFIX}#{}#{}#{}",
            escape(&self.server),
            escape(&self.share),
            self.key
        )
    }
}

fn escape(field: &str) -> String {
    field.replace('%', "%25").replace('#', "%23")
}

fn unescape(field: &str) -> Result<String> {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("%25") => out.push('%'),
            Some("%23") => out.push('#'),
            _ => {
                return Err(Error::InvalidArgument(
                    "malformed NFS volume id: bad % escape".into(),
                ))
            }
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(server: &str, share: &str, sub_dir: &str, on_delete: OnDelete) -> NfsVolumeId {
        NfsVolumeId {
            server: server.into(),
            share: share.into(),
            sub_dir: sub_dir.into(),
            on_delete,
        }
    }

    #[test]
    fn round_trips_with_escapes() {
        for v in [
            id("10.0.0.5", "/srv/nfs", "pvc-1", OnDelete::Delete),
            id(
                "nfs.example.com",
                "/",
                "shop/data#1/100%",
                OnDelete::Archive,
            ),
            id("[fd00::5]", "/exports/k8s", "a/b/c", OnDelete::Retain),
        ] {
            let text = v.to_string();
            assert!(warren_core::ids::is_nfs_volume(&text));
            assert_eq!(NfsVolumeId::parse(&text).unwrap(), v, "{text}");
        }
        assert_eq!(
            id("h", "/s", "a#b", OnDelete::Delete).to_string(),
            "nfs#h#/s#a%23b#delete"
        );
    }

    #[test]
    fn forged_or_broken_ids_are_refused() {
        for bad in [
            "",
            "nfs#h#/s#x",
            "local#h#/s#x#delete",
            "nfs#h#/s#../etc#delete",
            "nfs#h#/s#/abs#delete",
            "nfs#h#relative#x#delete",
            "nfs#h#/s#x#shred",
            "nfs#h#/s#a%2#delete",
            "nfs#bad host#/s#x#delete",
            "nfs#h#/s#${pvc.metadata.name}#delete",
        ] {
            assert!(NfsVolumeId::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let long = format!("nfs#h#/s#{}#delete", "a/".repeat(300) + "a");
        assert!(NfsVolumeId::parse(&long).is_err());
    }

    #[test]
    fn snapshot_ids_round_trip_and_forgeries_are_refused() {
        let volume = id("nfs.example.com", "/srv/a#b", "pvc-1", OnDelete::Delete);
        let snap = NfsSnapshotId::new(&volume, "0123456789abcdef0123456789abcdef");
        let text = snap.to_string();
        assert_eq!(
            text,
            "nfssnap#nfs.example.com#/srv/a%23b#0123456789abcdef0123456789abcdef"
        );
        assert!(
            warren_core::ids::is_nfs_snapshot(&text) && !warren_core::ids::is_nfs_volume(&text)
        );
        assert_eq!(NfsSnapshotId::parse(&text).unwrap(), snap);
        assert_eq!(
            snap.sub_dir(),
            ".warren-snapshots/0123456789abcdef0123456789abcdef"
        );
        for bad in [
            "nfssnap#h#/s#../../etc",
            "nfssnap#h#/s#0123456789ABCDEF0123456789abcdef",
            "nfssnap#h#/s#0123",
            "nfssnap#h#rel#0123456789abcdef0123456789abcdef",
            "nfs#h#/s#0123456789abcdef0123456789abcdef",
            "nfssnap#h#/s#0123456789abcdef0123456789abcdef#x",
        ] {
            assert!(NfsSnapshotId::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
