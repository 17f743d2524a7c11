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
//! and writes the new size to `actual` after each round ([`host`], which
//! also holds the balloon lock and the PFN buffers of [`buffers`]). The
//! host can ask for memory statistics on the stats queue at any time
//! ([`stats`]). Balloon pages stay movable: compaction migrates them
//! through [`migrate`]. While the balloon is adjusting, the device holds a
//! wakeup event ([`wakeup`]).
//!
//! Optional features, as in C: deflate on OOM ([`oom`]), free page
//! reporting ([`reporting`]), free page hinting for live migration
//! ([`hinting`]), page poisoning ([`poison`]); and system sleep.
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
mod poison;
mod reporting;
mod stats;
mod wakeup;

use crate::{
    bindings::uapi,
    compat::Param,
    mm::{
        balloon::BalloonDevInfo,
        oom as oom_notifier,
        page_reporting,
        shrinker, //
    },
    virtio::{
        self,
        Features, //
    },
    virtio_device_table,
};
use core::pin::Pin;
use device::Balloon;
use hinting::FreePageHints;
use host::Host;
use kernel::{
    device::Core,
    prelude::*,
    sync::Arc,
    time::Delta, //
};

/// Virtqueue indexes, in the order of the virtio spec (5.5.2).
mod vq {
    pub(super) const INFLATE: usize = 0;
    pub(super) const DEFLATE: usize = 1;
    pub(super) const STATS: usize = 2;
    pub(super) const FREE_PAGE: usize = 3;
    pub(super) const REPORTING: usize = 4;
}

const _: () = assert!(crate::logic::pfn::BALLOON_PFN_SHIFT == uapi::VIRTIO_BALLOON_PFN_SHIFT);
const _: () = assert!(crate::logic::stats::tag::NR == uapi::VIRTIO_BALLOON_S_NR as usize);

/// The kernel's list of the pages a balloon holds, whose migration goes
/// through the host.
type BalloonList = BalloonDevInfo<Arc<Host>>;

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

/// The driver's data for one device: the balloon, and the kernel
/// registrations that call into it, unregistered (first) when it is dropped.
#[pin_data]
pub(crate) struct BalloonDevice {
    /// Free page reporting (`VIRTIO_BALLOON_F_REPORTING`).
    reporting: Option<Pin<KBox<page_reporting::Registration<Arc<Host>>>>>,
    /// Deflate on OOM (`VIRTIO_BALLOON_F_DEFLATE_ON_OOM`).
    oom: Option<Pin<KBox<oom_notifier::Registration<Arc<Balloon>>>>>,
    /// Hinted blocks are reclaimable (`VIRTIO_BALLOON_F_FREE_PAGE_HINT`).
    shrinker: Option<Pin<KBox<shrinker::Registration<Arc<FreePageHints>>>>>,
    balloon: Arc<Balloon>,
}

impl BalloonDevice {
    /// Registers what the negotiated features call for.
    fn new(dev: &virtio::Device<Core<'_>>, balloon: Arc<Balloon>) -> Result<Self> {
        let props = *balloon.host().props();
        let reporting = if props.reporting {
            let capacity = dev.sg_vq(vq::REPORTING)?.size();
            Some(KBox::pin_init(
                page_reporting::Registration::new(
                    reporting::REPORTING_ORDER,
                    capacity,
                    balloon.host().clone(),
                ),
                GFP_KERNEL,
            )?)
        } else {
            None
        };
        let oom = if props.deflate_on_oom {
            Some(KBox::pin_init(
                oom_notifier::Registration::new(oom::OOM_NOTIFY_PRIORITY, balloon.clone()),
                GFP_KERNEL,
            )?)
        } else {
            None
        };
        let shrinker = match balloon.hints() {
            Some(hints) => Some(KBox::pin_init(
                shrinker::Registration::new(c"virtio-balloon-rs", hints.clone()),
                GFP_KERNEL,
            )?),
            None => None,
        };
        Ok(Self {
            reporting,
            oom,
            shrinker,
            balloon,
        })
    }
}

#[vtable]
impl virtio::Driver for VirtioBalloon {
    type IdInfo = ();
    type Data<'bound> = BalloonDevice;

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
            .and_then(|balloon| BalloonDevice::new(dev, balloon))
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
