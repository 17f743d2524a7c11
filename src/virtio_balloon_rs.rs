// SPDX-License-Identifier: GPL-2.0

//! Virtio memory balloon driver, in Rust.
//!
//! The crate is laid out like a small subsystem plus a driver:
//!
//! - [`bindings`]: bindgen output for the C APIs `kernel::bindings` lacks,
//!   generated at build time;
//! - [`compat`]: what differs between the supported kernels;
//! - [`virtio`]: a safe abstraction of the virtio driver API;
//! - [`mm`] and [`workqueue`]: safe abstractions of other kernel APIs the
//!   driver needs, generic (nothing balloon-specific);
//! - [`logic`]: kernel-independent logic, unit-tested on the host;
//! - [`balloon`]: the driver, in safe Rust only;
//! - [`modinfo`]: the module's version, which `module!` does not write.

mod balloon;
mod bindings;
mod compat;
#[path = "logic/lib.rs"]
mod logic;
mod mm;
mod modinfo;
// Written as a reusable bus abstraction: its `pub` items are its API, not
// all of which this one driver uses.
#[allow(unreachable_pub, dead_code, unused_imports)]
mod virtio;
mod workqueue;

module_virtio_driver! {
    type: balloon::VirtioBalloon,
    name: "virtio_balloon_rs",
    authors: ["virtio_balloon_rs developers"],
    description: "Virtio memory balloon driver (Rust)",
    license: "GPL",
    params: {
        buffers: u32 {
            default: 0,
            description: "PFN buffers (of 256 pages) in flight on the inflate queue, half as many \
                (rounded up) on the deflate queue; 1 behaves like the C driver (one round trip \
                per buffer); 0: 32",
        },
        min_available_mib: u32 {
            default: 0,
            description: "Memory (MiB) the balloon always leaves available to the guest, \
                however much the host asks for; 0: 2% of guest memory, 16 to 512 MiB",
        },
        blocks: u32 {
            default: 1,
            description: "Inflate in whole 2 MiB blocks while free memory has them, and report \
                them on the free page reporting queue when it is negotiated (1); 0: one page \
                at a time, as the C driver",
        },
        host_timeout_ms: u32 {
            default: 10000,
            description: "How long (ms) the device may take to return a buffer before the \
                driver stops asking it anything (pages it holds are then never reused)",
        },
    },
}

// The project's version: the Debian package's (`make deb`) starts with it,
// and Cargo.toml's must be the same (a unit test of `src/logic` checks).
modinfo::module_version!("0.3.0");
