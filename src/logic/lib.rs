// SPDX-License-Identifier: GPL-2.0

//! Kernel-independent logic of the balloon driver.
//!
//! Everything here uses `core` only, so the same files are compiled into the
//! kernel module (as `crate::logic`) and into a host crate
//! (`virtio-balloon-logic`) whose `cargo test` runs their unit tests.
//! Values that come from the host (the target, stats requests, command ids)
//! are checked and clamped here.
#![cfg_attr(not(MODULE), no_std)]
// In the module these items are crate-internal, and some serve only the
// host tests or features the kernel configuration leaves out.
#![cfg_attr(MODULE, allow(unreachable_pub, dead_code))]

#[cfg(test)]
extern crate std;

pub mod pfn;
pub mod stats;
pub mod target;

#[cfg(test)]
mod version {
    /// The module's version (`module_version!` in the crate root, which
    /// `make deb` names the package after) is the workspace's.
    #[test]
    fn module_version_is_the_crates() {
        let root = include_str!("../virtio_balloon_rs.rs");
        let want = std::format!(
            "modinfo::module_version!(\"{}\");",
            env!("CARGO_PKG_VERSION")
        );
        assert!(
            root.lines().any(|l| l.trim() == want),
            "src/virtio_balloon_rs.rs does not say {want}"
        );
    }
}
