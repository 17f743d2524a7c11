// SPDX-License-Identifier: GPL-2.0

//! The stats queue (virtio spec 5.5.6.3; C's `stats_request()` and
//! `stats_handle_request()`).
//!
//! The queue runs backwards: the driver keeps one buffer queued, and the
//! host "requests" statistics by returning it. The interrupt queues a work
//! item that refills the buffer with fresh values and queues it again.

use super::{
    device::{
        Balloon,
        StatsBuffer, //
    },
    vq,
    wakeup::WakeupSignal,
};
use crate::{
    kext,
    logic::stats::{
        tag,
        STAT_BYTES, //
    },
    virtio,
};
use kernel::{
    device::{
        Bound,
        Core, //
    },
    prelude::*,
    sync::Arc,
    workqueue, //
};

impl Balloon {
    /// Fills `buf` with current statistics; returns their size in bytes.
    fn stats_fill(&self, buf: &mut StatsBuffer) -> usize {
        let stats = kext::mm::mem_stats();
        let n = stats.encode(kernel::page::PAGE_SHIFT as u32, self.props.endian, buf);
        n.min(tag::NR) * STAT_BYTES
    }

    /// Queues the first statistics buffer during probe.
    pub(super) fn stats_prime(&self, dev: &virtio::Device<Core<'_>>) -> Result {
        let mut buf = KBox::new([0; tag::NR * STAT_BYTES], GFP_KERNEL)?;
        let len = self.stats_fill(&mut buf);
        let vq = dev.vq::<StatsBuffer>(vq::STATS)?;
        vq.add_outbuf(buf, len)?;
        vq.kick();
        Ok(())
    }

    /// The host returned the statistics buffer (interrupt context).
    pub(super) fn stats_request(self: &Arc<Self>, dev: &virtio::Device<Bound>) {
        let stopped = self.stop_update.lock();
        if !*stopped {
            self.wakeup.start(dev, WakeupSignal::Stats);
            let _ = workqueue::system_freezable().enqueue::<Arc<Balloon>, 1>(self.clone());
        }
    }

    /// Refills the returned buffer and gives it back to the host.
    pub(super) fn stats_handle_request(&self, dev: &virtio::Device<Bound>) {
        let Ok(vq) = dev.vq::<StatsBuffer>(vq::STATS) else {
            return;
        };
        // The host may "request" at any time, even with nothing returned.
        let Some((mut buf, _)) = vq.get_buf() else {
            return;
        };
        let len = self.stats_fill(&mut buf);
        if let Err(rejected) = vq.add_outbuf(buf, len) {
            dev_warn!(
                dev.as_ref(),
                "cannot queue statistics: {:?}\n",
                rejected.err
            );
            return;
        }
        vq.kick();
    }
}
