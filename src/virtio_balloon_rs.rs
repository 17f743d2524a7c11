// SPDX-License-Identifier: GPL-2.0

//! Virtio memory balloon driver.

use kernel::prelude::*;

mod bindings;

module! {
    type: VirtioBalloonModule,
    name: "virtio_balloon_rs",
    authors: ["virtio_balloon_rs developers"],
    description: "Virtio memory balloon driver (Rust)",
    license: "GPL",
}

struct VirtioBalloonModule;

impl kernel::Module for VirtioBalloonModule {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        Ok(Self)
    }
}
