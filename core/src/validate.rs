//! Checks on names and sizes that come from requests. Everything here is a pure function.

use crate::error::{Error, Result};

/// CSI says names are at most 128 bytes in practice; Kubernetes makes `pvc-<uuid>` (40).
pub const MAX_NAME_LEN: usize = 128;

/// The largest volume Warren will create: 64 TiB. A request above it is a typo or an attack,
/// and an image file of that size would not fit a node anyway.
pub const MAX_VOLUME_BYTES: u64 = 64 << 40;

/// Smallest image volume: below this, ext4 and xfs cannot be made (xfs needs ~300 MiB).
pub const MIN_IMAGE_BYTES: u64 = 16 << 20;

/// Validates a volume or snapshot name from the CO. Names are stored (never used as paths),
/// but refusing path-like and control characters keeps logs and state files clean.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} name is required")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::InvalidArgument(format!(
            "{what} name is {} bytes long; the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if name.contains("..") || name.contains('/') || name.chars().any(|c| c.is_control()) {
        return Err(Error::InvalidArgument(format!(
            "{what} name {name:?} contains '..', '/' or a control character"
        )));
    }
    Ok(())
}

/// Node names are Kubernetes node names: DNS subdomains (RFC 1123), at most 253 bytes.
/// Upper case is allowed because standalone users pick their own node ids.
pub fn validate_node_id(node: &str) -> Result<()> {
    let ok = !node.is_empty()
        && node.len() <= 253
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && !node.starts_with(['.', '-'])
        && !node.contains("..");
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "node id {:?} is not a valid node name (letters, digits, '-', '.', '_'; at most 253 bytes)",
            node.chars().take(64).collect::<String>()
        )))
    }
}

/// Resolves a CSI CapacityRange to a size: the required bytes if given, else the limit,
/// else `default`; then rounded up to `align`. Errors follow the spec: OUT_OF_RANGE when
/// the range cannot be met.
pub fn resolve_capacity(required: i64, limit: i64, default: u64, align: u64) -> Result<u64> {
    if required < 0 || limit < 0 {
        return Err(Error::InvalidArgument(
            "capacity_range values must not be negative".into(),
        ));
    }
    let (required, limit) = (required as u64, limit as u64);
    if limit != 0 && required > limit {
        return Err(Error::InvalidArgument(format!(
            "required_bytes {required} is larger than limit_bytes {limit}"
        )));
    }
    let wanted = match (required, limit) {
        (0, 0) => default,
        (0, l) => l.min(default.max(align)),
        (r, _) => r,
    };
    let size = wanted.div_ceil(align).saturating_mul(align);
    if size > MAX_VOLUME_BYTES {
        return Err(Error::OutOfRange(format!(
            "requested size {wanted} is above Warren's limit of {MAX_VOLUME_BYTES} bytes"
        )));
    }
    if limit != 0 && size > limit {
        return Err(Error::OutOfRange(format!(
            "cannot fit {wanted} bytes rounded to {align}-byte alignment within limit_bytes {limit}"
        )));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("volume", "pvc-0f3c").is_ok());
        for bad in ["", "a/b", "..", "x..y", "nul\0", "tab\t", &"x".repeat(129)] {
            assert!(validate_name("volume", bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn node_ids() {
        assert!(validate_node_id("k3s-edge-01.lan").is_ok());
        for bad in [
            "",
            "-x",
            ".x",
            "a..b",
            "a/b",
            "a b",
            "a#b",
            &"n".repeat(254),
        ] {
            assert!(validate_node_id(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn capacity() {
        const MI: u64 = 1 << 20;
        assert_eq!(resolve_capacity(0, 0, 100 * MI, MI).unwrap(), 100 * MI);
        assert_eq!(resolve_capacity(1, 0, 100 * MI, MI).unwrap(), MI);
        assert_eq!(
            resolve_capacity(0, 10 * MI as i64, 100 * MI, MI).unwrap(),
            10 * MI
        );
        assert_eq!(resolve_capacity(0, 1, 100 * MI, 1).unwrap(), 1);
        // Limit below the aligned size cannot be met.
        assert_eq!(
            resolve_capacity(MI as i64 + 1, MI as i64 + 2, 0, MI)
                .unwrap_err()
                .code(),
            tonic::Code::OutOfRange
        );
        assert_eq!(
            resolve_capacity(i64::MAX, 0, 0, MI).unwrap_err().code(),
            tonic::Code::OutOfRange
        );
        assert_eq!(
            resolve_capacity(-1, 0, 0, MI).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            resolve_capacity(10, 5, 0, 1).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
