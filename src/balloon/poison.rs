// SPDX-License-Identifier: GPL-2.0

//! Page poisoning (`VIRTIO_BALLOON_F_PAGE_POISON`; C's
//! `virtballoon_validate()` and the `poison_val` write in probe).
//!
//! When the guest poisons or zeroes freed pages, reported free pages must
//! keep that content: the driver tells the host the expected value. When it
//! cannot (the feature is missing) reporting is turned off, since the host
//! could hand back pages with other content.

use crate::{
    bindings::uapi::{
        self,
        virtio_balloon_config, //
    },
    mm::stat,
    virtio::{
        self,
        ConfigField,
        Features, //
    },
    virtio_config_field,
};
use kernel::{
    device::Bound,
    prelude::*, //
};

/// What freed pages contain, for the host (present with
/// `VIRTIO_BALLOON_F_PAGE_POISON`, which the layout says).
pub(super) const POISON_VAL: ConfigField<virtio_balloon_config, u32> =
    virtio_config_field!(virtio_balloon_config, poison_val);

/// Adjusts the features to the guest's poisoning (during `validate`).
pub(super) fn validate(features: &mut Features<'_>) {
    if !stat::want_init_on_free() && !stat::page_poisoning_enabled() {
        features.clear(uapi::VIRTIO_BALLOON_F_PAGE_POISON);
    } else if !features.has(uapi::VIRTIO_BALLOON_F_PAGE_POISON) {
        features.clear(uapi::VIRTIO_BALLOON_F_REPORTING);
    }
}

/// The value freed pages hold: zero with `init_on_free`, else the poison byte.
pub(super) fn poison_val() -> u32 {
    if stat::want_init_on_free() {
        0
    } else {
        u32::from_ne_bytes([stat::PAGE_POISON; 4])
    }
}

/// Tells the host what freed pages contain.
pub(super) fn write_poison_val(dev: &virtio::Device<Bound>) {
    if let Err(e) = dev.config_write(POISON_VAL, poison_val()) {
        dev_warn!(dev.as_ref(), "cannot write poison_val: {:?}\n", e);
    }
}
