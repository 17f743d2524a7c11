//! Guest memory statistics as QEMU reports them (`qom-get guest-stats`) and
//! `/proc/meminfo` parsing.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};

/// The balloon's guest statistics (`guest-stats` QOM property).
///
/// QEMU reports a statistic the guest never sent as `-1` (read as
/// 2^64-1): those go to [`GuestStats::unreported`], not to
/// [`GuestStats::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestStats {
    /// Host time (seconds since the epoch) of the guest's last update; 0 if
    /// the guest never sent statistics.
    pub last_update: u64,
    /// Reported statistics by QEMU name (e.g. `stat-free-memory`, bytes;
    /// `stat-minor-faults`, a count).
    pub stats: BTreeMap<String, u64>,
    /// Statistics QEMU knows of but the guest has not reported.
    pub unreported: BTreeSet<String>,
}

impl GuestStats {
    /// Parses the value of `qom-get guest-stats`:
    /// `{"stats": {"stat-free-memory": N, ...}, "last-update": T}`.
    pub fn from_json(v: &serde_json::Value) -> Result<GuestStats> {
        let last_update = v["last-update"]
            .as_u64()
            .with_context(|| format!("no last-update in guest-stats: {v}"))?;
        let Some(map) = v["stats"].as_object() else {
            bail!("no stats object in guest-stats: {v}");
        };
        let mut stats = BTreeMap::new();
        let mut unreported = BTreeSet::new();
        for (k, val) in map {
            match val.as_u64() {
                Some(n) if n != u64::MAX => {
                    stats.insert(k.clone(), n);
                }
                _ => {
                    unreported.insert(k.clone());
                }
            }
        }
        Ok(GuestStats {
            last_update,
            stats,
            unreported,
        })
    }

    /// A reported statistic.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.stats.get(name).copied()
    }

    /// A statistic that must be reported; the error lists what is.
    pub fn require(&self, name: &str) -> Result<u64> {
        self.get(name).with_context(|| {
            format!(
                "guest stat {name} not reported (reported: {:?}; unreported: {:?})",
                self.stats, self.unreported
            )
        })
    }
}

/// Parses `/proc/meminfo` into bytes (`kB` values ×1024; unitless values,
/// e.g. `HugePages_Total`, as they are).
pub fn parse_meminfo(text: &str) -> Result<BTreeMap<String, u64>> {
    let mut m = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (k, rest) = line
            .split_once(':')
            .with_context(|| format!("bad meminfo line {line:?}"))?;
        let mut it = rest.split_whitespace();
        let n: u64 = it
            .next()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("bad meminfo line {line:?}"))?;
        let v = match it.next() {
            Some("kB") => n * 1024,
            None => n,
            Some(u) => bail!("unknown unit {u:?} in meminfo line {line:?}"),
        };
        m.insert(k.trim().to_string(), v);
    }
    if !m.contains_key("MemTotal") {
        bail!("no MemTotal in /proc/meminfo output: {text:?}");
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats() {
        let v = serde_json::json!({
            "stats": {"stat-free-memory": 1000, "stat-swap-in": 18446744073709551615u64},
            "last-update": 17
        });
        let s = GuestStats::from_json(&v).unwrap();
        assert_eq!(s.last_update, 17);
        assert_eq!(s.get("stat-free-memory"), Some(1000));
        assert_eq!(s.get("stat-swap-in"), None);
        assert!(s.unreported.contains("stat-swap-in"));
        assert!(s.require("stat-swap-in").is_err());
    }

    #[test]
    fn meminfo() {
        let m = parse_meminfo("MemTotal:        1004 kB\nHugePages_Total:       0\n").unwrap();
        assert_eq!(m["MemTotal"], 1004 * 1024);
        assert_eq!(m["HugePages_Total"], 0);
        assert!(parse_meminfo("Foo: x\n").is_err());
    }
}
