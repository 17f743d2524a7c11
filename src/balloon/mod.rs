// SPDX-License-Identifier: GPL-2.0

//! The virtio memory balloon driver (virtio spec 5.5), behaving like
//! `drivers/virtio/virtio_balloon.c`.
//!
//! The host writes a target balloon size (`num_pages`) to the configuration
//! space. On each configuration change a work item on the freezable system
//! workqueue moves the balloon towards it one batch at a time:
//!
//! - inflate ([`inflate`], C's `fill_balloon()`): allocate movable pages,
//!   put them on the kernel's balloon list, send their PFNs on the inflate
//!   queue and wait for the host;
//! - deflate ([`deflate`], C's `leak_balloon()`): take pages off the list,
//!   send their PFNs on the deflate queue, then free them;
//!
//! and writes the new size to `actual` after each batch. The host can ask
//! for memory statistics on the stats queue at any time ([`stats`]).
//! Balloon pages stay movable: compaction migrates them through
//! [`migrate`]. While the balloon is adjusting, the device holds a wakeup
//! event ([`wakeup`]).
//!
//! Optional features, as in C: deflate on OOM ([`oom`]), free page
//! reporting ([`reporting`]), free page hinting for live migration
//! ([`hinting`]), page poisoning ([`poison`]); and system sleep ([`pm`]).
//!
//! All of this is safe Rust over the abstractions in `crate::virtio` and
//! `crate::kext`.

mod deflate;
mod device;
mod hinting;
mod inflate;
mod migrate;
mod oom;
mod perf;
mod pm;
mod poison;
mod queue;
mod reporting;
mod stats;
mod wakeup;

use crate::{
    bindings::uapi,
    virtio::{
        self,
        Features, //
    },
    virtio_device_table,
};
use core::pin::Pin;
use device::Balloon;
use kernel::{
    device::{
        Bound,
        Core, //
    },
    prelude::*,
    sync::Arc,
};

/// Virtqueue indexes, in the order of the virtio spec (5.5.2).
mod vq {
    pub(super) const INFLATE: usize = 0;
    pub(super) const DEFLATE: usize = 1;
    pub(super) const STATS: usize = 2;
    pub(super) const FREE_PAGE: usize = 3;
    pub(super) const REPORTING: usize = 4;
}

/// The virtio balloon driver.
pub(crate) struct VirtioBalloon;

virtio_device_table!(
    VIRTIO_BALLOON_ID_TABLE,
    [virtio::DeviceId::new(
        uapi::VIRTIO_ID_BALLOON,
        virtio::ANY_VENDOR
    )]
);

#[vtable]
impl virtio::Driver for VirtioBalloon {
    type Data = Arc<Balloon>;

    const ID_TABLE: virtio::IdTable = &VIRTIO_BALLOON_ID_TABLE;

    const FEATURES: &'static [u32] = &[
        uapi::VIRTIO_BALLOON_F_MUST_TELL_HOST,
        uapi::VIRTIO_BALLOON_F_STATS_VQ,
        uapi::VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
        uapi::VIRTIO_BALLOON_F_FREE_PAGE_HINT,
        uapi::VIRTIO_BALLOON_F_PAGE_POISON,
        uapi::VIRTIO_BALLOON_F_REPORTING,
    ];

    fn validate(features: &mut Features<'_>) -> Result {
        poison::validate(features);
        // No indirect descriptors: page reporting must not allocate memory
        // to queue buffers (C clears them too). The balloon hands
        // guest-physical addresses to the host, not DMA addresses.
        features.clear(uapi::VIRTIO_RING_F_INDIRECT_DESC);
        features.clear(uapi::VIRTIO_F_ACCESS_PLATFORM);
        Ok(())
    }

    fn probe(dev: &virtio::Device<Core<'_>>) -> impl PinInit<Self::Data, Error> {
        Balloon::probe(dev)
    }

    fn ready(dev: &virtio::Device<Core<'_>>, data: Pin<&Self::Data>) {
        data.get_ref().ready(dev);
    }

    fn config_changed(dev: &virtio::Device<Bound>, data: Pin<&Self::Data>) {
        data.get_ref().changed(dev);
    }

    fn vq_callback(dev: &virtio::Device<Bound>, data: Pin<&Self::Data>, index: usize) {
        if index == vq::STATS {
            data.get_ref().stats_request(dev);
        }
    }

    fn unbind(dev: &virtio::Device<Core<'_>>, data: Pin<&Self::Data>) {
        data.get_ref().remove(dev);
    }

    fn freeze(dev: &virtio::Device<Core<'_>>, data: Pin<&Self::Data>) -> Result {
        data.get_ref().freeze(dev)
    }

    fn restore(dev: &virtio::Device<Core<'_>>, data: Pin<&Self::Data>) -> Result {
        data.get_ref().restore(dev)
    }

    fn shutdown(_dev: &virtio::Device<Core<'_>>, data: Pin<&Self::Data>) {
        data.get_ref().quiesce();
    }
}
