//! What the node hands mount(2) for an NFS volume. The node image has no mount.nfs, so
//! Warren does its job: the kernel's text options, with the server's address resolved
//! (`addr=`, and `mountaddr=` for v3, which the kernel requires when mount.nfs is not
//! there), the version, and `nolock` for v3 (there is no rpc.statd in the node plugin).
//! The StorageClass's `mountOptions` are checked against a list of what makes sense for a
//! volume; options Warren sets itself, or unknown ones, are refused rather than passed to
//! the kernel to fail (or worse, succeed differently) at mount time.

use std::net::IpAddr;

use crate::error::{Error, Result};
use crate::params::{NfsParams, NfsVersion};

/// Generic mount flags that may come as options; they go into mount(2)'s flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    pub read_only: bool,
    pub noatime: bool,
    pub nodiratime: bool,
    pub relatime: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRequest {
    /// `server:/share/subDir`, as /proc/mounts will show it.
    pub source: String,
    /// Always "nfs": the kernel picks v3 or v4.x from `vers=`.
    pub fs_type: &'static str,
    pub flags: Flags,
    /// The kernel's text options.
    pub data: String,
}

/// NFS options a StorageClass may set: bare words, and `key=value` keys.
const WORDS: &[&str] = &[
    "hard",
    "soft",
    "softerr",
    "intr",
    "nointr",
    "ac",
    "noac",
    "cto",
    "nocto",
    "sharecache",
    "nosharecache",
    "resvport",
    "noresvport",
    "fsc",
    "nofsc",
    "lock",
    "nolock",
    "acl",
    "noacl",
    "rdirplus",
    "nordirplus",
];
const KEYS: &[&str] = &[
    "timeo",
    "retrans",
    "rsize",
    "wsize",
    "acregmin",
    "acregmax",
    "acdirmin",
    "acdirmax",
    "actimeo",
    "retry",
    "lookupcache",
    "local_lock",
    "nconnect",
    "max_connect",
    "sec",
    "proto",
    "port",
    "mountport",
    "mountproto",
    "xprtsec",
    "write",
];
/// Options Warren sets itself.
const OURS: &[&str] = &[
    "addr",
    "mountaddr",
    "clientaddr",
    "vers",
    "nfsvers",
    "minorversion",
];

/// Builds the mount of `params`' sub-directory. `server_addr` is the server's address,
/// resolved by the caller (a name resolution must not happen inside mount(2));
/// `class_options` are the StorageClass's `mountOptions` (each may hold several,
/// comma-separated) and the capability's mount flags.
pub fn mount_request(
    params: &NfsParams,
    server_addr: IpAddr,
    class_options: &[String],
    read_only: bool,
) -> Result<MountRequest> {
    let mut flags = Flags {
        read_only,
        ..Flags::default()
    };
    let mut version = params.version;
    let mut version_given: Option<String> = None;
    let mut chosen: Vec<String> = Vec::new();
    for option in class_options.iter().flat_map(|o| o.split(',')) {
        let option = option.trim();
        if option.is_empty() {
            continue;
        }
        let (key, value) = match option.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (option, None),
        };
        match (key, value) {
            ("ro", None) => flags.read_only = true,
            ("rw", None) => {}
            ("noatime", None) => flags.noatime = true,
            ("nodiratime", None) => flags.nodiratime = true,
            ("relatime", None) => flags.relatime = true,
            ("nosuid", None) => flags.nosuid = true,
            ("nodev", None) => flags.nodev = true,
            ("noexec", None) => flags.noexec = true,
            ("vers" | "nfsvers", Some(v)) => {
                let asked = NfsVersion::parse(v).map_err(|_| {
                    Error::InvalidArgument(format!(
                        "mount option {key}={v}: expected 3, 4.0, 4.1 or 4.2"
                    ))
                })?;
                if let Some(before) = &version_given {
                    if *before != v {
                        return Err(Error::InvalidArgument(format!(
                            "mount options give two NFS versions: {before} and {v}"
                        )));
                    }
                }
                version_given = Some(v.to_string());
                version = asked;
            }
            (k, _) if OURS.contains(&k) => {
                return Err(Error::InvalidArgument(format!(
                    "mount option {option:?} is set by Warren (from the StorageClass's server \
                     and nfsVersion parameters)"
                )))
            }
            (k, None) if WORDS.contains(&k) => chosen.push(option.to_string()),
            (k, Some(v)) if KEYS.contains(&k) && valid_value(v) => chosen.push(option.to_string()),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "mount option {option:?} is not one Warren passes to an NFS mount"
                )))
            }
        }
    }
    let mut data = vec![
        format!("vers={}", version.as_mount_option()),
        format!("addr={server_addr}"),
    ];
    if version == NfsVersion::V3 {
        data.push(format!("mountaddr={server_addr}"));
        if !chosen
            .iter()
            .any(|o| o == "lock" || o == "nolock" || o.starts_with("local_lock="))
        {
            // Locks stay on this node: there is no rpc.statd for NLM.
            data.push("nolock".into());
        }
    }
    data.extend(chosen);
    let share = params.share.trim_end_matches('/');
    Ok(MountRequest {
        source: format!("{}:{share}/{}", params.server, params.sub_dir),
        fs_type: "nfs",
        flags,
        data: data.join(","),
    })
}

/// A value that cannot smuggle another option or a path into the option string.
fn valid_value(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::OnDelete;

    fn params(version: NfsVersion) -> NfsParams {
        NfsParams {
            server: "nfs.example.com".into(),
            share: "/srv/nfs".into(),
            sub_dir: "shop/pvc-1".into(),
            on_delete: OnDelete::Delete,
            version,
            mount_permissions: None,
        }
    }

    fn options(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn v4_and_v3_get_what_the_kernel_needs_without_mount_nfs() {
        let addr: IpAddr = "10.0.0.5".parse().unwrap();
        let m = mount_request(&params(NfsVersion::V4_1), addr, &[], false).unwrap();
        assert_eq!(m.source, "nfs.example.com:/srv/nfs/shop/pvc-1");
        assert_eq!(m.fs_type, "nfs");
        assert_eq!(m.data, "vers=4.1,addr=10.0.0.5");
        assert_eq!(m.flags, Flags::default());

        let m = mount_request(
            &params(NfsVersion::V3),
            addr,
            &options(&["hard,timeo=600", "noatime"]),
            true,
        )
        .unwrap();
        assert_eq!(
            m.data,
            "vers=3,addr=10.0.0.5,mountaddr=10.0.0.5,nolock,hard,timeo=600"
        );
        assert!(m.flags.read_only && m.flags.noatime);

        // The class's nfsvers wins over the parameter's default; lock choice is kept.
        let m = mount_request(
            &params(NfsVersion::V4_1),
            addr,
            &options(&["nfsvers=3", "local_lock=all"]),
            false,
        )
        .unwrap();
        assert_eq!(
            m.data,
            "vers=3,addr=10.0.0.5,mountaddr=10.0.0.5,local_lock=all"
        );
        let v6: IpAddr = "fd00::5".parse().unwrap();
        let m = mount_request(&params(NfsVersion::V4_2), v6, &[], false).unwrap();
        assert_eq!(m.data, "vers=4.2,addr=fd00::5");
    }

    #[test]
    fn options_warren_sets_or_does_not_know_are_refused() {
        let addr: IpAddr = "10.0.0.5".parse().unwrap();
        for bad in [
            "addr=1.2.3.4",
            "clientaddr=1.2.3.4",
            "vers=5",
            "nfsvers=3,vers=4.1",
            "bind",
            "timeo=1,addr=evil",
            "sec=sys/../x",
            "rsize=",
            "context=system_u:object_r:nfs_t:s0",
        ] {
            let got = mount_request(&params(NfsVersion::V4_1), addr, &options(&[bad]), false);
            assert!(got.is_err(), "{bad:?} was accepted: {got:?}");
        }
    }
}
