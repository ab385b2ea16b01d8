//! Kubernetes resource quantities ("10Gi", "1.5G", "500M", "1e9") to bytes and back.
//! Sizes are rounded up to whole bytes, as Kubernetes does for storage.

use crate::error::{Error, Result};

/// Bytes of a quantity, rounded up. Negative, fractional-below-a-byte-only or malformed
/// quantities are refused.
pub fn parse_bytes(quantity: &str) -> Result<u64> {
    let bad = || Error::Invalid(format!("{quantity:?} is not a storage quantity"));
    let q = quantity.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number = number.strip_prefix('+').unwrap_or(number);
    if number.is_empty() || number.starts_with('-') {
        return Err(bad());
    }
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 18 {
        return Err(bad());
    }
    let digits: u128 = format!("{whole}{frac}").parse().map_err(|_| bad())?;
    // value = digits / 10^frac * 2^bin * 10^dec
    let (bin, dec): (u32, i32) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        s if s.starts_with(['e', 'E']) => (0, s[1..].parse().map_err(|_| bad())?),
        _ => return Err(bad()),
    };
    let exp10 = dec - frac.len() as i32;
    if !(-40..=30).contains(&exp10) {
        return Err(bad());
    }
    let mut numerator = digits.checked_shl(bin).ok_or_else(bad)?;
    let mut denominator: u128 = 1;
    if exp10 >= 0 {
        numerator = numerator
            .checked_mul(10u128.pow(exp10 as u32))
            .ok_or_else(bad)?;
    } else {
        denominator = 10u128.pow((-exp10) as u32);
    }
    let bytes = numerator.div_ceil(denominator);
    u64::try_from(bytes).map_err(|_| bad())
}

/// The canonical quantity for a byte count: the largest binary unit that divides it.
pub fn format_bytes(bytes: u64) -> String {
    for (shift, unit) in [(50, "Pi"), (40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
        if bytes != 0 && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_kubernetes_accepts() {
        assert_eq!(parse_bytes("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("100Mi").unwrap(), 100 << 20);
        assert_eq!(parse_bytes("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_bytes("500M").unwrap(), 500_000_000);
        assert_eq!(parse_bytes("1e9").unwrap(), 1_000_000_000);
        assert_eq!(parse_bytes("1E3").unwrap(), 1000);
        assert_eq!(parse_bytes("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("+2Ki").unwrap(), 2048);
        // Below a byte rounds up, like Kubernetes.
        assert_eq!(parse_bytes("1500m").unwrap(), 2);
        assert_eq!(parse_bytes("0.1").unwrap(), 1);
        assert_eq!(parse_bytes("0").unwrap(), 0);
    }

    #[test]
    fn refuses_nonsense() {
        for bad in [
            "",
            "-1Gi",
            "Gi",
            "1Gb",
            "1..5",
            "1.2.3",
            "1e99",
            "99999999999Ei",
            "x",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn formats_canonically() {
        assert_eq!(format_bytes(1 << 30), "1Gi");
        assert_eq!(format_bytes(3 << 29), "1536Mi");
        assert_eq!(format_bytes(1000), "1000");
        assert_eq!(format_bytes(0), "0");
        for n in [1u64 << 20, 5 << 30, 12345, 7 << 40] {
            assert_eq!(parse_bytes(&format_bytes(n)).unwrap(), n);
        }
    }
}
