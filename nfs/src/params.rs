//! `backend: nfs` StorageClass parameters, named like csi-driver-nfs's where they mean the
//! same (`server`, `share`, `subDir`, `onDelete`, `mountPermissions`), plus `nfsVersion`.
//! Unknown keys are refused, as for every Warren backend; the `csi.storage.k8s.io/` keys
//! the provisioner adds are read (claim and PV names for `subDir`) or ignored.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// What happens to a volume's sub-directory when the volume is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    /// Removed with everything in it.
    Delete,
    /// Left as it is.
    Retain,
    /// Renamed to `archived-<name>` in the same parent directory.
    Archive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NfsVersion {
    V3,
    V4_0,
    V4_1,
    V4_2,
}

impl NfsVersion {
    /// The `nfsVersion` parameter (and volume-context key) as a StorageClass gives it.
    pub fn parse(value: &str) -> Result<NfsVersion> {
        match value {
            "3" => Ok(NfsVersion::V3),
            "4" | "4.0" => Ok(NfsVersion::V4_0),
            "4.1" => Ok(NfsVersion::V4_1),
            "4.2" => Ok(NfsVersion::V4_2),
            other => Err(Error::InvalidArgument(format!(
                "nfsVersion {other:?}: expected 3, 4.0, 4.1 or 4.2"
            ))),
        }
    }

    /// As the kernel's `vers=` mount option spells it.
    pub fn as_mount_option(self) -> &'static str {
        match self {
            NfsVersion::V3 => "3",
            NfsVersion::V4_0 => "4.0",
            NfsVersion::V4_1 => "4.1",
            NfsVersion::V4_2 => "4.2",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsParams {
    /// Host name or IP address of the NFS server.
    pub server: String,
    /// The exported directory, absolute (`/srv/nfs`).
    pub share: String,
    /// The volume's directory below the share, relative, templates filled in.
    pub sub_dir: String,
    pub on_delete: OnDelete,
    pub version: NfsVersion,
    /// Mode given to the volume's directory (`mountPermissions`, octal); None: the
    /// server's default for a new directory.
    pub mount_permissions: Option<u32>,
}

pub const KEY_SERVER: &str = "server";
pub const KEY_SHARE: &str = "share";
pub const KEY_SUB_DIR: &str = "subDir";
pub const KEY_ON_DELETE: &str = "onDelete";
pub const KEY_NFS_VERSION: &str = "nfsVersion";
pub const KEY_MOUNT_PERMISSIONS: &str = "mountPermissions";
/// The volume-context key that tells the node which NFS version to mount with (the same
/// name as the parameter, so a hand-written PV's `volumeAttributes` can set it too).
pub const CONTEXT_NFS_VERSION: &str = KEY_NFS_VERSION;

const PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
const PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
const PV_NAME: &str = "csi.storage.k8s.io/pv/name";

/// Parses the parameters of a CreateVolume for volume `name` (the CO's name, the default
/// sub-directory). Nothing about the server is checked here: that is `dirops`' job.
pub fn parse(name: &str, params: &HashMap<String, String>) -> Result<NfsParams> {
    let bad = |m: String| Error::InvalidArgument(m);
    let mut server = None;
    let mut share = None;
    let mut sub_dir_template = None;
    let mut on_delete = OnDelete::Delete;
    let mut version = NfsVersion::V4_1;
    let mut mount_permissions = None;
    for (key, value) in params {
        match key.as_str() {
            "backend" => {}
            KEY_SERVER => server = Some(server_name(value)?),
            KEY_SHARE => share = Some(share_path(value)?),
            KEY_SUB_DIR => sub_dir_template = Some(value.clone()),
            KEY_ON_DELETE => {
                on_delete = match value.as_str() {
                    "delete" => OnDelete::Delete,
                    "retain" => OnDelete::Retain,
                    "archive" => OnDelete::Archive,
                    other => {
                        return Err(bad(format!(
                            "onDelete {other:?}: expected \"delete\", \"retain\" or \"archive\""
                        )))
                    }
                }
            }
            KEY_NFS_VERSION => version = NfsVersion::parse(value)?,
            KEY_MOUNT_PERMISSIONS => {
                let mode = u32::from_str_radix(value.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| {
                        bad(format!(
                            "mountPermissions {value:?}: expected an octal mode like 0777"
                        ))
                    })?;
                mount_permissions = Some(mode);
            }
            k if k.starts_with("csi.storage.k8s.io/") => {}
            other => {
                return Err(bad(format!(
                    "unknown parameter {other:?} for backend \"nfs\" (known: server, share, \
                     subDir, onDelete, nfsVersion, mountPermissions)"
                )))
            }
        }
    }
    let server = server.ok_or_else(|| bad("backend \"nfs\" needs the parameter server".into()))?;
    let share = share.ok_or_else(|| bad("backend \"nfs\" needs the parameter share".into()))?;
    let sub_dir = match sub_dir_template {
        Some(template) => expand_sub_dir(&template, params)?,
        None => checked_sub_dir(name)?,
    };
    Ok(NfsParams {
        server,
        share,
        sub_dir,
        on_delete,
        version,
        mount_permissions,
    })
}

/// Fills `${pvc.metadata.name}`, `${pvc.metadata.namespace}` and `${pv.metadata.name}` in
/// a `subDir` template from the names the provisioner passes (external-provisioner's
/// --extra-create-metadata; the edge mode always passes them).
pub fn expand_sub_dir(template: &str, params: &HashMap<String, String>) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| {
            Error::InvalidArgument(format!("subDir {template:?}: unclosed \"${{\""))
        })?;
        let key = match &after[..end] {
            "pvc.metadata.name" => PVC_NAME,
            "pvc.metadata.namespace" => PVC_NAMESPACE,
            "pv.metadata.name" => PV_NAME,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "subDir {template:?}: unknown placeholder ${{{other}}} (known: \
                     ${{pvc.metadata.name}}, ${{pvc.metadata.namespace}}, ${{pv.metadata.name}})"
                )))
            }
        };
        let value = params.get(key).filter(|v| !v.is_empty()).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "subDir {template:?} uses ${{{}}}, but the request carries no {key} \
                 (external-provisioner needs --extra-create-metadata)",
                &after[..end]
            ))
        })?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    checked_sub_dir(&out)
}

/// A sub-directory must stay below the share: relative, no `.` or `..` parts, no empty
/// parts, no NUL, each part at most 255 bytes.
pub(crate) fn checked_sub_dir(path: &str) -> Result<String> {
    let bad = |why: &str| Error::InvalidArgument(format!("sub-directory {path:?}: {why}"));
    if path.is_empty() {
        return Err(bad("empty"));
    }
    if path.starts_with('/') {
        return Err(bad("must be relative to the share"));
    }
    if path.len() > 1024 || path.contains('\0') {
        return Err(bad("too long or contains NUL"));
    }
    if path.split('/').next() == Some(crate::volume_id::SNAPSHOTS_DIR) {
        return Err(bad("reserved for Warren's snapshots"));
    }
    for part in path.split('/') {
        match part {
            "" => return Err(bad("empty path component")),
            "." | ".." => return Err(bad("\".\" and \"..\" are not allowed")),
            p if p.len() > 255 => return Err(bad("a component is longer than 255 bytes")),
            _ => {}
        }
    }
    Ok(path.to_string())
}

pub(crate) fn server_name(value: &str) -> Result<String> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if ok {
        Ok(value.to_string())
    } else {
        Err(Error::InvalidArgument(format!(
            "server {value:?}: expected a host name or an IP address"
        )))
    }
}

pub(crate) fn share_path(value: &str) -> Result<String> {
    if !value.starts_with('/') || value.contains('\0') || value.split('/').any(|p| p == "..") {
        return Err(Error::InvalidArgument(format!(
            "share {value:?}: expected the export's absolute path, like /srv/nfs"
        )));
    }
    // "/srv/nfs/" and "/srv/nfs" are the same export.
    let trimmed = value.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/" } else { trimmed }.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_and_full_parameters() {
        let p = parse(
            "pvc-1",
            &params(&[
                ("backend", "nfs"),
                ("server", "10.0.0.5"),
                ("share", "/srv/nfs/"),
            ]),
        )
        .unwrap();
        assert_eq!(
            p,
            NfsParams {
                server: "10.0.0.5".into(),
                share: "/srv/nfs".into(),
                sub_dir: "pvc-1".into(),
                on_delete: OnDelete::Delete,
                version: NfsVersion::V4_1,
                mount_permissions: None,
            }
        );
        let p = parse(
            "pvc-1",
            &params(&[
                ("server", "nfs.example.com"),
                ("share", "/"),
                (
                    "subDir",
                    "${pvc.metadata.namespace}/${pvc.metadata.name}-${pv.metadata.name}",
                ),
                ("onDelete", "archive"),
                ("nfsVersion", "3"),
                ("mountPermissions", "0777"),
                (PVC_NAME, "data"),
                (PVC_NAMESPACE, "shop"),
                (PV_NAME, "pvc-1"),
            ]),
        )
        .unwrap();
        assert_eq!(p.share, "/");
        assert_eq!(p.sub_dir, "shop/data-pvc-1");
        assert_eq!(p.on_delete, OnDelete::Archive);
        assert_eq!(p.version, NfsVersion::V3);
        assert_eq!(p.mount_permissions, Some(0o777));
    }

    #[test]
    fn bad_parameters_are_refused_with_the_reason() {
        let base = [("server", "10.0.0.5"), ("share", "/srv")];
        let refused = |extra: &[(&str, &str)], want: &str| {
            let mut all = params(&base);
            all.extend(params(extra));
            let err = parse("pvc-1", &all).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        };
        refused(&[("onDelete", "shred")], "onDelete");
        refused(&[("nfsVersion", "5")], "nfsVersion");
        refused(&[("mountPermissions", "rwx")], "mountPermissions");
        refused(&[("mountPermissions", "99999")], "mountPermissions");
        refused(&[("layout", "image")], "unknown parameter \"layout\"");
        refused(&[("subDir", "../escape")], "not allowed");
        refused(&[("subDir", "/abs")], "relative");
        refused(&[("subDir", "a//b")], "empty path component");
        refused(&[("subDir", ".warren-snapshots/x")], "reserved");
        refused(&[("subDir", "${pvc.metadata.uid}")], "unknown placeholder");
        refused(&[("subDir", "${pvc.metadata.name")], "unclosed");
        refused(
            &[("subDir", "${pvc.metadata.name}")],
            "extra-create-metadata",
        );
        refused(&[("server", "evil host")], "server");
        refused(&[("share", "srv")], "absolute");
        refused(&[("share", "/srv/../etc")], "absolute");
        let err = parse("pvc-1", &params(&[("share", "/srv")])).unwrap_err();
        assert!(err.to_string().contains("server"));
        let err = parse("pvc-1", &params(&[("server", "a")])).unwrap_err();
        assert!(err.to_string().contains("share"));
    }

    #[test]
    fn a_placeholder_value_cannot_escape_the_share() {
        let all = params(&[
            ("server", "a"),
            ("share", "/srv"),
            ("subDir", "x/${pvc.metadata.name}"),
            (PVC_NAME, ".."),
        ]);
        assert!(parse("pvc-1", &all).is_err());
    }
}
