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

use crate::error::{Error, Result};
use crate::params::{self, NfsParams, OnDelete};

const PREFIX: &str = "nfs";
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

    /// Whether `id` is meant as an NFS volume ID (then `parse` says whether it is one).
    pub fn is_nfs(id: &str) -> bool {
        id.starts_with("nfs#")
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
            assert!(NfsVolumeId::is_nfs(&text));
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
}
