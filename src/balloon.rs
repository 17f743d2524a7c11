// SPDX-License-Identifier: GPL-2.0

//! The virtio memory balloon driver (virtio spec 5.5), behaving like
//! `drivers/virtio/virtio_balloon.c`.
//!
//! The host writes a target balloon size (`num_pages`) to the configuration
//! space. On each configuration change a work item on the freezable system
//! workqueue moves the balloon towards it one round at a time
//! ([`device`], C's `update_balloon_size_func()`):
//!
//! - inflate ([`inflate`], C's `fill_balloon()`): allocate movable pages,
//!   put them on the kernel's balloon list, send their PFNs on the inflate
//!   queue and wait for the host;
//! - deflate ([`deflate`], C's `leak_balloon()`): take pages off the list,
//!   send their PFNs on the deflate queue, then free them;
//!
//! Both take one [`round`] context (device, host side, lists, patience),
//! the balloon lock and a number of pages; both send their buffers through
//! a [`pipeline`] and end by writing the new size to `actual` under the
//! lock ([`host`]: configuration, the balloon lock, the PFN buffers of
//! [`buffers`]). The
//! host can ask for memory statistics on the stats queue at any time
//! ([`stats`]). Balloon pages stay movable: compaction migrates them
//! through [`migrate`]. While the balloon is adjusting, the device holds a
//! wakeup event ([`wakeup`]).
//!
//! Optional features, as in C: deflate on OOM ([`oom`]), free page
//! reporting ([`reporting`]), free page hinting for live migration
//! ([`hinting`]), page poisoning ([`poison`]); and system sleep. The
//! driver's data for a device is the balloon with the kernel registrations
//! these features call for ([`registrations`]); [`vq`] names the queues.
//! This file only declares the parts and wires them to the virtio bus.
//!
//! All of this is safe Rust over `crate::virtio` and `crate::mm`; the
//! compiler checks it (`deny(unsafe_code)` below).
#![deny(unsafe_code)]

mod buffers;
mod deflate;
mod device;
mod hinting;
mod host;
mod inflate;
mod lists;
mod migrate;
mod oom;
mod perf;
mod pipeline;
mod poison;
mod registrations;
mod reporting;
mod round;
mod stats;
mod vq;
mod wakeup;

use crate::{
    bindings::uapi,
    compat::Param,
    virtio::{
        self,
        Features, //
    },
    virtio_device_table,
};
use core::pin::Pin;
use device::Balloon;
use kernel::{
    device::Core,
    prelude::*,
    time::Delta, //
};
use registrations::Registrations;

const _: () = assert!(crate::logic::pfn::BALLOON_PFN_SHIFT == uapi::VIRTIO_BALLOON_PFN_SHIFT);
const _: () = assert!(crate::logic::stats::tag::NR == uapi::VIRTIO_BALLOON_S_NR as usize);

/// The virtio balloon driver.
pub(crate) struct VirtioBalloon;

virtio_device_table!(
    VIRTIO_BALLOON_ID_TABLE,
    <VirtioBalloon as virtio::Driver>::IdInfo,
    [(
        virtio::DeviceId::new(uapi::VIRTIO_ID_BALLOON, virtio::ANY_VENDOR),
        ()
    )]
);

#[vtable]
impl virtio::Driver for VirtioBalloon {
    type IdInfo = ();
    type Data<'bound> = Registrations;

    const ID_TABLE: virtio::IdTable<Self::IdInfo> = VIRTIO_BALLOON_ID_TABLE;

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

    fn probe<'bound>(
        dev: &'bound virtio::Device<Core<'_>>,
        _id_info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        // Set up at once; a `Result` is an initializer.
        Balloon::probe(dev, Self::host_timeout())
            .and_then(|balloon| Registrations::new(dev, balloon))
    }

    fn ready(dev: &virtio::Device<Core<'_>>, data: Pin<&Self::Data<'_>>) {
        data.balloon.ready(dev);
    }

    fn config_changed(dev: &virtio::Device, data: Pin<&Self::Data<'_>>) {
        data.balloon.changed(dev);
    }

    fn vq_callback(dev: &virtio::Device, data: Pin<&Self::Data<'_>>, index: usize) {
        if index == vq::STATS {
            data.balloon.stats_request(dev);
        }
    }

    fn unbind(dev: &virtio::Device<Core<'_>>, data: Pin<&Self::Data<'_>>) {
        data.balloon.remove(dev);
    }

    fn freeze(dev: &virtio::Device<Core<'_>>, data: Pin<&Self::Data<'_>>) -> Result {
        data.balloon.freeze(dev)
    }

    fn restore(dev: &virtio::Device<Core<'_>>, data: Pin<&Self::Data<'_>>) -> Result {
        data.balloon.restore(dev)
    }

    fn shutdown(dev: &virtio::Device<Core<'_>>, data: Pin<&Self::Data<'_>>) {
        data.balloon.quiesce(dev);
    }

    fn host_timeout() -> Delta {
        Delta::from_millis(
            crate::module_parameters::host_timeout_ms
                .get()
                .max(1)
                .into(),
        )
    }
}
