//! NFS mounts on the node, for `backend: nfs` volumes (a sub-directory of an external
//! server) and for shared volumes of another node (`backend: share`, served by that
//! node's Warren). Stage mounts with the kernel
//! client (`warren_nfs::mount`: under a deadline, never leaving a half-done mount),
//! publish bind-mounts the staged mount, and both look at the mount's health first, so a
//! stale file handle (the export replaced, the server's handles lost) is recovered by
//! mounting again rather than handed to the pod.
//!
//! Nothing here stats a path on an NFS mount directly: that can block for as long as the
//! server is away. Mounts are recognised from mountinfo (which the kernel answers without
//! the server), and health comes from `warren_nfs::probe`, which never waits longer than
//! its deadline.
//!
//! Blocking code, called under the volume's lock.

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use warren_core::capability::{Access, Requested};
use warren_core::storage::Condition;
use warren_core::Error as CoreError;
use warren_nfs::mount::{force_detach, mount, unmount};
use warren_nfs::mount_options::{mount_request, MountRequest};
use warren_nfs::params::{NfsParams, NfsVersion, CONTEXT_NFS_VERSION};
use warren_nfs::probe::{probe, Probe};
use warren_nfs::volume_id::NfsVolumeId;

use crate::decide::{self, MountAction};
use crate::error::Result;
use crate::mounter::Mounter;
use crate::mountinfo::{self, mount_at, MountEntry};
use crate::stage::{conflict, ensure_dir, precondition, remove_target, single_writer_check, Stats};

#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// One kernel mount.
    pub mount: Duration,
    /// One health probe, and one ordinary unmount before it is forced.
    pub probe: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            mount: Duration::from_secs(60),
            probe: Duration::from_secs(5),
        }
    }
}

pub struct NfsStager {
    mounter: std::sync::Arc<dyn Mounter>,
    deadlines: Deadlines,
}

fn is_nfs(m: &MountEntry) -> bool {
    m.fs_type == "nfs" || m.fs_type == "nfs4"
}

fn no_block() -> crate::Error {
    CoreError::InvalidArgument("NFS volumes cannot be used as raw block devices".into()).into()
}

/// The server's address: mount(2) takes an address, and a name must not be resolved
/// inside the kernel's mount (there is no upcall for it in the node's image).
fn server_address(server: &str) -> Result<IpAddr> {
    let bare = server.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse() {
        return Ok(ip);
    }
    (bare, 2049)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .map(|a| a.ip())
        .ok_or_else(|| {
            CoreError::Unavailable(format!("cannot resolve the NFS server name {server:?}")).into()
        })
}

impl NfsStager {
    pub fn new(mounter: std::sync::Arc<dyn Mounter>, deadlines: Deadlines) -> Self {
        NfsStager { mounter, deadlines }
    }

    /// The kernel mount an NFS volume gets, from its ID, the version in its volume
    /// context (4.1 when a hand-made PV gives none) and the class's mount options.
    pub fn nfs_request(
        id: &NfsVolumeId,
        context: &HashMap<String, String>,
        cap: &Requested,
    ) -> Result<MountRequest> {
        let Access::Mount { mount_flags, .. } = &cap.access else {
            return Err(no_block());
        };
        let version = match context.get(CONTEXT_NFS_VERSION) {
            Some(v) => NfsVersion::parse(v).map_err(CoreError::from)?,
            None => NfsVersion::V4_1,
        };
        let params = NfsParams {
            server: id.server.clone(),
            share: id.share.clone(),
            sub_dir: id.sub_dir.clone(),
            on_delete: id.on_delete,
            version,
            mount_permissions: None,
        };
        let addr = server_address(&id.server)?;
        Ok(
            mount_request(&params, addr, mount_flags, cap.read_only_mode())
                .map_err(CoreError::from)?,
        )
    }

    /// The kernel mount of another node's shared volume: NFSv3 from its share
    /// (`endpoint`, `IP:PORT`; one port for MOUNT and NFS) at `/<key>`.
    pub fn share_request(endpoint: &str, key: &str, cap: &Requested) -> Result<MountRequest> {
        let Access::Mount { mount_flags, .. } = &cap.access else {
            return Err(no_block());
        };
        let addr: std::net::SocketAddr = endpoint.parse().map_err(|_| {
            CoreError::InvalidArgument(format!("share endpoint {endpoint:?} is not IP:PORT"))
        })?;
        let params = NfsParams {
            server: addr.ip().to_string(),
            share: "/".into(),
            sub_dir: key.to_string(),
            on_delete: warren_nfs::params::OnDelete::Retain,
            version: NfsVersion::V3,
            mount_permissions: None,
        };
        let port = addr.port();
        let mut options = mount_flags.clone();
        options.extend([
            "proto=tcp".to_string(),
            "mountproto=tcp".to_string(),
            format!("port={port}"),
            format!("mountport={port}"),
        ]);
        Ok(
            mount_request(&params, addr.ip(), &options, cap.read_only_mode())
                .map_err(CoreError::from)?,
        )
    }

    /// Unmounts, waiting for the server at most the probe deadline. A busy mount is left
    /// alone (a pod may still use it) unless its server does not answer: then nothing
    /// can reach it anyway (and Warren's own stuck probe may be what keeps it busy), so
    /// it is forced and detached.
    fn unmount(&self, path: &Path) -> Result<()> {
        let forced = match unmount(path, self.deadlines.probe) {
            Ok(forced) => forced,
            Err(warren_nfs::Error::Mount {
                errno: nix::errno::Errno::EBUSY,
                ..
            }) if !matches!(probe(path, self.deadlines.probe), Probe::Healthy(_)) => {
                force_detach(path);
                true
            }
            Err(e) => return Err(CoreError::from(e).into()),
        };
        if forced {
            tracing::warn!(path = %path.display(), "NFS server did not answer; the mount was forced and detached");
        }
        Ok(())
    }

    pub fn stage(&self, request: &MountRequest, staging: &Path) -> Result<()> {
        let mounts = mountinfo::read()?;
        match mount_at(&mounts, staging) {
            None => {}
            Some(m) if is_nfs(m) && m.source == request.source => {
                match probe(staging, self.deadlines.probe) {
                    Probe::Stale => {
                        tracing::warn!(source = %request.source, "stale NFS file handle at the staging path; mounting again");
                        self.unmount(staging)?;
                    }
                    // Mounted; a server that is slow or away now is the pod's wait, not a
                    // reason to tear down a mount that will come back with it.
                    _ => return Ok(()),
                }
            }
            Some(m) => {
                return Err(conflict(format!(
                    "{} is already mounted from {} ({}), not {}",
                    staging.display(),
                    m.source,
                    m.fs_type,
                    request.source
                )))
            }
        }
        ensure_dir(staging)?;
        mount(request, staging, self.deadlines.mount).map_err(CoreError::from)?;
        Ok(())
    }

    pub fn unstage(&self, staging: &Path) -> Result<()> {
        self.unmount_all_nfs(staging)
    }

    /// Unmounts the NFS mounts stacked at `path`; anything else there is not this
    /// volume's and is left alone (FAILED_PRECONDITION).
    fn unmount_all_nfs(&self, path: &Path) -> Result<()> {
        while let Some(m) = mount_at(&mountinfo::read()?, path).cloned() {
            if !is_nfs(&m) {
                return Err(precondition(format!(
                    "{} holds a {} mount of {}, not this NFS volume",
                    path.display(),
                    m.fs_type,
                    m.source
                )));
            }
            self.unmount(path)?;
        }
        Ok(())
    }

    pub fn publish(
        &self,
        request: &MountRequest,
        staging: &Path,
        target: &Path,
        cap: &Requested,
        read_only: bool,
    ) -> Result<()> {
        if cap.access == Access::Block {
            return Err(no_block());
        }
        let mounts = mountinfo::read()?;
        if !mount_at(&mounts, staging).is_some_and(is_nfs) {
            return Err(precondition(format!(
                "{} is not staged at {}",
                request.source,
                staging.display()
            )));
        }
        if matches!(probe(staging, self.deadlines.probe), Probe::Stale) {
            // Stage again (it mounts afresh), and let the target be bound to the new mount.
            self.stage(request, staging)?;
        }
        let mut mounts = mountinfo::read()?;
        let staged = mount_at(&mounts, staging)
            .cloned()
            .ok_or_else(|| precondition(format!("{} is not staged", request.source)))?;
        let same = |m: &MountEntry| m.major_minor == staged.major_minor && m.root == staged.root;
        if let Some(old) = mount_at(&mounts, target) {
            // Bound to a mount that was replaced, or to a directory the server no longer
            // knows (the new mount may share the old one's superblock and root path, so
            // only the probe can tell): bind again.
            let replaced = is_nfs(old) && old.source == staged.source && !same(old);
            if replaced || matches!(probe(target, self.deadlines.probe), Probe::Stale) {
                self.unmount(target)?;
                mounts = mountinfo::read()?;
            }
        }
        let existing = mount_at(&mounts, target);
        let others = mounts
            .iter()
            .filter(|m| same(m) && m.mount_point != staging && m.mount_point != target);
        single_writer_check(cap, others)?;
        match decide::bind(existing, existing.is_some_and(same), read_only) {
            MountAction::AlreadyMounted => Ok(()),
            MountAction::Conflict(m) => Err(conflict(m)),
            MountAction::Mount => {
                ensure_dir(target)?;
                self.mounter.bind(staging, target, read_only, &[])
            }
        }
    }

    pub fn unpublish(&self, target: &Path) -> Result<()> {
        self.unmount_all_nfs(target)?;
        remove_target(target)
    }

    /// Usage and condition of the mount at `path`. A path where the volume is not mounted
    /// is NOT_FOUND; a server that does not answer, or a stale handle, is an abnormal
    /// condition with no usage.
    pub fn stats(&self, path: &Path) -> Result<(Option<Stats>, Condition)> {
        let mounts = mountinfo::read()?;
        let Some(entry) = mount_at(&mounts, path).filter(|m| is_nfs(m)) else {
            return Err(CoreError::NotFound(format!(
                "the volume is not mounted at {}",
                path.display()
            ))
            .into());
        };
        let server = entry.source.rsplit_once(':').map_or("", |(s, _)| s);
        Ok(match probe(path, self.deadlines.probe) {
            Probe::Healthy(st) => (Some(Stats::of(&st)), Condition::healthy()),
            Probe::Stale => (
                None,
                Condition::abnormal(
                    "stale NFS file handle: the server no longer knows this mount \
                     (restart the pod to mount it again)",
                ),
            ),
            Probe::Unanswered => (
                None,
                Condition::abnormal(format!(
                    "NFS server {server} did not answer within {} s",
                    self.deadlines.probe.as_secs()
                )),
            ),
            Probe::Failed(errno) => (
                None,
                Condition::abnormal(format!("NFS server {server}: {errno}")),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_used_as_they_are_and_names_resolved() {
        assert_eq!(
            server_address("10.0.0.5").unwrap(),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            server_address("[fd00::5]").unwrap(),
            "fd00::5".parse::<IpAddr>().unwrap()
        );
        assert!(server_address("localhost").unwrap().is_loopback());
        let err = server_address("no-such-host.invalid").unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }
}
