//! Target and staging paths come from the CO. Warren only ever mounts on, creates or removes
//! paths under the kubelet directory; anything else is refused before any I/O on it.

use std::path::{Path, PathBuf};

use warren_core::Error as CoreError;

use crate::error::Result;

/// Longest path accepted (Linux PATH_MAX).
const MAX_PATH_LEN: usize = 4096;

/// Checks that `path` (from a request field named `field`) is an absolute, normalized path
/// strictly below `root`, and that no existing ancestor is a symlink leading out of it.
pub fn check_under_root(field: &str, path: &str, root: &Path) -> Result<PathBuf> {
    let bad = |why: String| CoreError::InvalidArgument(format!("{field} {path:?}: {why}"));
    if path.is_empty() {
        return Err(CoreError::InvalidArgument(format!("{field} is required")).into());
    }
    if path.len() > MAX_PATH_LEN || path.contains('\0') {
        return Err(bad("too long or contains NUL".into()).into());
    }
    let candidate = Path::new(path);
    if !candidate.is_absolute() {
        return Err(bad("must be absolute".into()).into());
    }
    // Check the raw segments: `Path::components` silently drops inner "." segments.
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err(bad("must not contain '.' or '..'".into()).into());
    }
    if !candidate.starts_with(root) || candidate == root {
        return Err(bad(format!(
            "is not below the kubelet directory {}",
            root.display()
        ))
        .into());
    }
    // Symlinks: the deepest existing ancestor must still resolve inside the root. Only
    // ancestors at or below the root count: above it lies the host's own layout, and a
    // root that does not exist yet has nothing below it to escape through.
    let real_root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let mut existing = candidate.parent();
    while let Some(dir) = existing.filter(|dir| dir.starts_with(root)) {
        if let Ok(real) = dir.canonicalize() {
            if !real.starts_with(&real_root) {
                return Err(bad(format!(
                    "resolves outside {} through a symlink",
                    root.display()
                ))
                .into());
            }
            break;
        }
        existing = dir.parent();
    }
    Ok(candidate.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_under_the_kubelet_dir() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("kubelet");
        std::fs::create_dir_all(root.join("pods/u1/volumes")).unwrap();
        let ok = root.join("pods/u1/volumes/kubernetes.io~csi/pv/mount");
        assert!(check_under_root("target_path", ok.to_str().unwrap(), &root).is_ok());
        let outside = dir.path().join("elsewhere");
        for bad in [
            String::new(),
            "relative/path".into(),
            "/etc/passwd".into(),
            format!("{}/pods/../../etc", root.display()),
            format!("{}/./pods", root.display()),
            root.display().to_string(),
            format!("{}x/pods", root.display()),
            format!("{}/pods/\0", root.display()),
            format!("{}/{}", root.display(), "a".repeat(5000)),
        ] {
            assert!(
                check_under_root("target_path", &bad, &root).is_err(),
                "accepted {bad:?}"
            );
        }
        // A symlink inside the root that points outside is refused.
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("pods/escape")).unwrap();
        let through = root.join("pods/escape/mount");
        let err = check_under_root("target_path", through.to_str().unwrap(), &root).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn a_kubelet_dir_that_does_not_exist_yet_is_no_escape() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("not-yet/kubelet");
        let path = root.join("plugins/x/globalmount");
        assert!(check_under_root("staging_target_path", path.to_str().unwrap(), &root).is_ok());
    }
}
