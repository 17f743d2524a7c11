//! Byte sizes: constants, parsing of `512M`-style sizes and formatting.

use anyhow::{bail, Context, Result};

/// One kibibyte.
pub const KIB: u64 = 1024;
/// One mebibyte.
pub const MIB: u64 = 1024 * KIB;
/// One gibibyte.
pub const GIB: u64 = 1024 * MIB;
/// The balloon's page size (virtio balloon PFNs are always 4 KiB).
pub const PAGE_SIZE: u64 = 4 * KIB;

/// Parses a size such as `512M`, `1G`, `1.5G`, `4096`, `64k` or `2GiB`
/// (binary units; a plain number is bytes).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => 1024 * GIB,
        other => bail!("bad size {s:?}: unknown unit {other:?} (use K, M or G)"),
    };
    if num.is_empty() {
        bail!("bad size {s:?}: no number");
    }
    if num.contains('.') {
        let v: f64 = num.parse().with_context(|| format!("bad size {s:?}"))?;
        Ok((v * mult as f64).round() as u64)
    } else {
        let v: u64 = num.parse().with_context(|| format!("bad size {s:?}"))?;
        v.checked_mul(mult)
            .with_context(|| format!("size {s:?} overflows"))
    }
}

/// Formats a byte count for humans, e.g. `256.0 MiB (268435456 B)`.
pub fn format_bytes(b: u64) -> String {
    let (v, u) = if b >= GIB {
        (b as f64 / GIB as f64, "GiB")
    } else if b >= MIB {
        (b as f64 / MIB as f64, "MiB")
    } else if b >= KIB {
        (b as f64 / KIB as f64, "KiB")
    } else {
        return format!("{b} B");
    };
    format!("{v:.1} {u} ({b} B)")
}

/// Formats a signed byte difference, e.g. `-256.0 MiB (-268435456 B)`.
pub fn format_delta(d: i64) -> String {
    if d < 0 {
        format!("-{}", format_bytes(d.unsigned_abs())).replace("(", "(-")
    } else {
        format!("+{}", format_bytes(d as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 * MIB);
        assert_eq!(parse_size("1G").unwrap(), GIB);
        assert_eq!(parse_size("1.5g").unwrap(), 3 * GIB / 2);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64KiB").unwrap(), 64 * KIB);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
        assert_eq!(format_bytes(256 * MIB), "256.0 MiB (268435456 B)");
        assert_eq!(format_delta(-(MIB as i64)), "-1.0 MiB (-1048576 B)");
    }
}
