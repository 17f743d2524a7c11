// SPDX-License-Identifier: GPL-2.0

//! The driver's data for one device: the balloon and the kernel
//! registrations the negotiated features call for (C's
//! `virtballoon_probe()` registering free page reporting, the OOM notifier
//! and the free page hinting shrinker; `virtballoon_remove()` unregistering
//! them). Dropping it unregisters them before the balloon goes.

use super::{
    device::Balloon,
    hinting::FreePageHints,
    host::Host,
    oom,
    reporting,
    vq, //
};
use crate::{
    mm::{
        oom as oom_notifier,
        page_reporting,
        shrinker, //
    },
    virtio,
};
use kernel::{
    device::Core,
    prelude::*,
    sync::Arc, //
};

/// The driver's data for one device: the balloon, and the kernel
/// registrations that call into it, unregistered (first) when it is dropped.
#[pin_data]
pub(crate) struct Registrations {
    /// Free page reporting (`VIRTIO_BALLOON_F_REPORTING`).
    reporting: Option<Pin<KBox<page_reporting::Registration<Arc<Host>>>>>,
    /// Deflate on OOM (`VIRTIO_BALLOON_F_DEFLATE_ON_OOM`).
    oom: Option<Pin<KBox<oom_notifier::Registration<Arc<Balloon>>>>>,
    /// Hinted blocks are reclaimable (`VIRTIO_BALLOON_F_FREE_PAGE_HINT`).
    shrinker: Option<Pin<KBox<shrinker::Registration<Arc<FreePageHints>>>>>,
    pub(super) balloon: Arc<Balloon>,
}

impl Registrations {
    /// Registers what the negotiated features call for.
    pub(super) fn new(dev: &virtio::Device<Core<'_>>, balloon: Arc<Balloon>) -> Result<Self> {
        let negotiated = *balloon.host().negotiated();
        let reporting = if negotiated.reporting {
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
        let oom = if negotiated.deflate_on_oom {
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
