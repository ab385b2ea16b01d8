//! Volume and replica names become path components and cross the wire: only a safe
//! alphabet is accepted.

use crate::error::{Error, Result};

const MAX_NAME: usize = 128;

fn check(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what} {name:?}: 1-{MAX_NAME} of [A-Za-z0-9._-], not starting with '.'"
        )))
    }
}

pub fn check_volume(name: &str) -> Result<()> {
    check("volume name", name)
}

pub fn check_replica(name: &str) -> Result<()> {
    check("replica name", name)
}

/// A snapshot's name is a path component under the service's `.snapshots/` directory.
pub fn check_snapshot(name: &str) -> Result<()> {
    check("snapshot name", name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_names() {
        for good in ["pvc-1", "a", "vol_2.x"] {
            assert!(check_volume(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "a\0b",
            &"x".repeat(129),
        ] {
            assert!(check_volume(bad).is_err(), "{bad:?}");
        }
    }
}
