//! Decisions of the node service as pure functions of what is observed (mountinfo), so each
//! rule is tested without mounting anything.

use std::path::Path;

use crate::mountinfo::MountEntry;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountAction {
    /// Nothing is mounted at the target: mount it.
    Mount,
    /// The wanted mount is already there: nothing to do (idempotent retry).
    AlreadyMounted,
    /// Something else is mounted there: refuse (ALREADY_EXISTS per the CSI spec).
    Conflict(String),
}

/// Staging an image volume: the device must be what is mounted at the staging path.
pub fn stage_device(existing: Option<&MountEntry>, device: &Path) -> MountAction {
    match existing {
        None => MountAction::Mount,
        Some(m) if Path::new(&m.source) == device => MountAction::AlreadyMounted,
        Some(m) => MountAction::Conflict(format!(
            "{} is already mounted from {}, not {}",
            m.mount_point.display(),
            m.source,
            device.display()
        )),
    }
}

/// Bind mounts (staging → target, data dir → staging, device node → target). `same_object`
/// says whether what is visible at the target is the wanted source (same device and inode,
/// or the same device node); the read-only state must match too.
pub fn bind(existing: Option<&MountEntry>, same_object: bool, read_only: bool) -> MountAction {
    match existing {
        None => MountAction::Mount,
        Some(m) if same_object => {
            if m.is_read_only() == read_only {
                MountAction::AlreadyMounted
            } else {
                MountAction::Conflict(format!(
                    "{} is already mounted {}; the request asks for {}",
                    m.mount_point.display(),
                    if m.is_read_only() {
                        "read-only"
                    } else {
                        "read-write"
                    },
                    if read_only { "read-only" } else { "read-write" }
                ))
            }
        }
        Some(m) => MountAction::Conflict(format!(
            "{} is already mounted from another volume ({}{})",
            m.mount_point.display(),
            m.source,
            m.root.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn entry(source: &str, dev: (u32, u32), root: &str, ro: bool) -> MountEntry {
        MountEntry {
            mount_id: 40,
            parent_id: 1,
            major_minor: dev,
            root: PathBuf::from(root),
            mount_point: PathBuf::from("/var/lib/kubelet/x"),
            options: vec![if ro { "ro" } else { "rw" }.to_string()],
            fs_type: "ext4".into(),
            source: source.into(),
            super_options: vec!["rw".into()],
        }
    }

    #[test]
    fn staging() {
        let dev = Path::new("/dev/loop3");
        assert_eq!(stage_device(None, dev), MountAction::Mount);
        assert_eq!(
            stage_device(Some(&entry("/dev/loop3", (7, 3), "/", false)), dev),
            MountAction::AlreadyMounted
        );
        assert!(matches!(
            stage_device(Some(&entry("/dev/loop4", (7, 4), "/", false)), dev),
            MountAction::Conflict(_)
        ));
    }

    #[test]
    fn binds() {
        assert_eq!(bind(None, false, false), MountAction::Mount);
        let rw = entry("/dev/loop3", (7, 3), "/", false);
        assert_eq!(bind(Some(&rw), true, false), MountAction::AlreadyMounted);
        assert!(matches!(
            bind(Some(&rw), true, true),
            MountAction::Conflict(_)
        ));
        assert!(matches!(
            bind(Some(&rw), false, false),
            MountAction::Conflict(_)
        ));
        let ro = entry("/dev/loop3", (7, 3), "/", true);
        assert_eq!(bind(Some(&ro), true, true), MountAction::AlreadyMounted);
    }
}
