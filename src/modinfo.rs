// SPDX-License-Identifier: GPL-2.0

//! Module information `module!` does not write: the version
//! (`MODULE_VERSION()` in C, `include/linux/moduleparam.h`).

/// The bytes of `s`, which must be `N` bytes long, as an array (a
/// `.modinfo` entry is an array of bytes, not a reference).
pub(crate) const fn modinfo_bytes<const N: usize>(s: &str) -> [u8; N] {
    let b = s.as_bytes();
    assert!(b.len() == N);
    let mut a = [0u8; N];
    let mut i = 0;
    while i < N {
        a[i] = b[i];
        i += 1;
    }
    a
}

/// Writes `version=<version>` into the module's `.modinfo` section, as C's
/// `MODULE_VERSION(version)` does for a loadable module: `modinfo -F
/// version` and `/sys/module/<name>/version` show it.
macro_rules! module_version {
    ($version:literal) => {
        // As `module!` writes its entries: kept by the compiler, not
        // retained by the linker (`used(linker)` would mark the section
        // SHF_GNU_RETAIN, unlike C's `.modinfo`).
        #[cfg(MODULE)]
        #[link_section = ".modinfo"]
        #[used(compiler)]
        static __MODULE_VERSION: [u8; concat!("version=", $version, "\0").len()] =
            $crate::modinfo::modinfo_bytes(concat!("version=", $version, "\0"));
    };
}
pub(crate) use module_version;
