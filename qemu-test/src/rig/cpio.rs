//! Minimal reader of `newc` cpio archives: lists the names in an initramfs
//! (used to tell whether our module is in it).

use anyhow::{bail, Context, Result};
use std::path::Path;

/// Lists the entry names (without a leading `/`) of an uncompressed newc
/// cpio archive.
pub fn list(path: &Path) -> Result<Vec<String>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    list_bytes(&data).with_context(|| format!("parsing cpio archive {}", path.display()))
}

fn hex(field: &[u8]) -> Result<usize> {
    let s = std::str::from_utf8(field).context("non-ASCII header field")?;
    usize::from_str_radix(s, 16).with_context(|| format!("bad header field {s:?}"))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Lists the entry names of newc cpio data.
pub fn list_bytes(data: &[u8]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut off = 0;
    loop {
        let hdr = data
            .get(off..off + 110)
            .context("truncated archive (no TRAILER!!!)")?;
        if &hdr[..6] != b"070701" && &hdr[..6] != b"070702" {
            bail!("not a newc cpio archive (bad magic at offset {off})");
        }
        let filesize = hex(&hdr[54..62])?;
        let namesize = hex(&hdr[94..102])?;
        let name_bytes = data
            .get(off + 110..off + 110 + namesize)
            .context("truncated name")?;
        let name = String::from_utf8_lossy(name_bytes.strip_suffix(&[0]).unwrap_or(name_bytes))
            .into_owned();
        if name == "TRAILER!!!" {
            return Ok(names);
        }
        names.push(name.trim_start_matches('/').to_string());
        off = align4(off + 110 + namesize);
        off = align4(off + filesize);
    }
}

/// Whether the archive at `path` contains a file whose name ends with
/// `/<file_name>`.
pub fn contains_file(path: &Path, file_name: &str) -> Result<bool> {
    let suffix = format!("/{file_name}");
    Ok(list(path)?.iter().any(|n| n.ends_with(&suffix)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, body: &[u8]) -> Vec<u8> {
        let mut v = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            1,
            0o100644,
            0,
            0,
            1,
            0,
            body.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        )
        .into_bytes();
        v.extend_from_slice(name.as_bytes());
        v.push(0);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v.extend_from_slice(body);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn lists_names() {
        let mut a = entry("/init", b"#!/bin/sh\n");
        a.extend(entry("lib/modules/7.3.4/extra/x.ko", b"abc"));
        a.extend(entry("TRAILER!!!", b""));
        let names = list_bytes(&a).unwrap();
        assert_eq!(names, vec!["init", "lib/modules/7.3.4/extra/x.ko"]);
        assert!(list_bytes(b"garbage").is_err());
    }
}
