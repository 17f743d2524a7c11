// SPDX-License-Identifier: GPL-2.0

//! Inflating: taking pages from the guest (C's `fill_balloon()`).
//!
//! One round fills up to `depth` PFN buffers of 256 pages, then hands them
//! to the host at once ([`Pipeline`]). Each page goes on the balloon list
//! before the host hears of it, as in C.

use super::{
    device::{
        Balloon,
        Locked,
        PfnBuffer, //
    },
    perf::{
        Counter,
        Stopwatch, //
    },
    queue::Pipeline,
    vq,
};
use crate::{
    kext::{
        self,
        balloon::BalloonPage, //
    },
    logic::{
        pfn::{
            PfnBatch,
            PushError,
            PFNS_PER_BUFFER, //
        },
        target::{
            batch_pages,
            inflate_allowance,
            reserve_pages, //
        },
    },
    virtio,
};
use kernel::{
    device::Bound,
    prelude::*,
    sync::{
        atomic::Relaxed,
        Arc, //
    },
    time::{
        delay::fsleep,
        Delta, //
    },
};

/// How long to back off when no page can be allocated, as C does.
const OUT_OF_PUFF_BACKOFF_MS: i64 = 200;

impl Balloon {
    /// Guest pages the balloon may take now, with `ballooned` balloon pages
    /// inflated, without cutting into the reserve the guest needs to keep
    /// running; logs when it starts and stops holding back.
    fn inflate_allowance(&self, dev: &virtio::Device<Bound>, ballooned: u32) -> usize {
        let guest_pages = self.guest_pages(ballooned);
        let ballooned = u64::from(ballooned / self.props.per_page.max(1));
        let shift = kernel::page::PAGE_SHIFT as u32;
        let reserve = reserve_pages(
            guest_pages,
            shift,
            crate::module_parameters::min_available_mib.value(),
        );
        let allowance = inflate_allowance(kext::mm::available_pages(), reserve);
        let holding = allowance == 0;
        if self.holding.xchg(holding, Relaxed) != holding {
            if holding {
                dev_warn!(
                    dev.as_ref(),
                    "holding the balloon at {} MiB: inflating further would leave the guest less \
                     than {} MiB available\n",
                    ballooned << shift >> 20,
                    reserve << shift >> 20
                );
            } else {
                dev_info!(dev.as_ref(), "inflating again\n");
            }
        }
        usize::try_from(allowance).unwrap_or(usize::MAX)
    }

    /// Logs an allocation failure, rate-limited.
    fn out_of_puff(&self, dev: &virtio::Device<Bound>) {
        let fails = self.out_of_puff.fetch_add(1, Relaxed) + 1;
        if fails.is_power_of_two() {
            dev_info!(
                dev.as_ref(),
                "Out of puff! Can't get {} pages ({} times)\n",
                self.props.per_page,
                fails
            );
        }
    }

    /// Allocates up to `want` guest pages (in bulk) into `buf` and the
    /// balloon list; returns the batch and whether allocation fell short.
    fn fill_buffer(
        self: &Arc<Self>,
        dev: &virtio::Device<Bound>,
        locked: &mut Locked,
        buf: &mut PfnBuffer,
        want: usize,
    ) -> (PfnBatch, bool) {
        let sw = Stopwatch::start();
        let mut batch = PfnBatch::new(kernel::page::PAGE_SHIFT as u32, self.props.endian);
        let failed = BalloonPage::alloc_bulk(&mut locked.filling, want) < want;
        // Pages whose frame number the host cannot be told are dropped
        // (freed) here; `want` never exceeds one buffer.
        locked
            .filling
            .retain(|page| match batch.push(buf, page.pfn()) {
                Ok(()) => true,
                Err(PushError::Unreachable) => {
                    dev_warn!(
                        dev.as_ref(),
                        "page frame {:#x} is beyond 32-bit balloon PFNs, not inflating it\n",
                        page.pfn()
                    );
                    false
                }
                Err(PushError::Full) => false,
            });
        // One round of the balloon lock for the whole buffer.
        match self.pages.enqueue_all(self, &mut locked.filling) {
            Ok(()) => locked.num_pages += batch.len() as u32,
            // `pages` is our own field, so this does not happen; should it,
            // the pages are freed and not announced.
            Err(_) => {
                locked.filling.clear();
                batch.clear();
            }
        }
        sw.stop(&self.perf, Counter::InflateAllocNs);
        (batch, failed)
    }

    /// Inflates by up to `depth` buffers of `num` balloon pages in all;
    /// returns how many balloon pages the host was told about.
    ///
    /// The buffers are filled first and handed to the host with one
    /// notification; the guest then sleeps while the host releases their
    /// memory. Filling while the host works does not pay off: QEMU frees
    /// each page with its own `madvise()` while holding its big lock, so a
    /// busy guest only slows the host down (TLB shootdowns) and stalls on
    /// the lock itself.
    pub(super) fn fill_balloon(self: &Arc<Self>, dev: &virtio::Device<Bound>, num: u32) -> u32 {
        let per = self.props.per_page;
        let mut locked = self.locked.lock();
        let mut pipe = match Pipeline::<PfnBuffer>::new(dev, vq::INFLATE, self.props.depth) {
            Ok(pipe) => pipe,
            Err(e) => {
                dev_warn!(dev.as_ref(), "inflate queue unavailable: {:?}\n", e);
                return 0;
            }
        };
        let mut sent = 0u32;
        let mut starved = false;
        while pipe.has_room() && sent < num && !starved {
            let want = batch_pages(num - sent, per, PFNS_PER_BUFFER)
                .min(self.inflate_allowance(dev, locked.num_pages));
            if want == 0 {
                // Holding at the reserve.
                starved = true;
                break;
            }
            let buf = locked.take_inflate_buffer();
            let Some(mut buf) = buf else {
                break;
            };
            let (batch, failed) = self.fill_buffer(dev, &mut locked, &mut buf, want);
            if failed {
                self.out_of_puff(dev);
                starved = true;
            } else {
                self.out_of_puff.store(0, Relaxed);
            }
            if batch.is_empty() {
                let _ = locked.inflate_pool.push_within_capacity(buf);
                break;
            }
            sent += batch.len() as u32;
            self.perf.add(Counter::InflatePages, batch.len() as u64);
            self.perf.add(Counter::InflateBuffers, 1);
            // We should always be able to add a buffer to a queue with room
            // for `depth` of them.
            if let Err(rejected) = pipe.queue(buf, batch.bytes()) {
                dev_warn!(
                    dev.as_ref(),
                    "inflate queue refused PFNs: {:?}\n",
                    rejected.err
                );
                let _ = locked.inflate_pool.push_within_capacity(rejected.buf);
                break;
            }
        }
        pipe.kick(&self.perf);
        while pipe.in_flight() > 0 {
            match pipe.complete(&self.perf, Counter::InflateWaitNs) {
                Ok(buf) => {
                    let _ = locked.inflate_pool.push_within_capacity(buf);
                }
                Err(e) => dev_warn!(dev.as_ref(), "inflate queue lost a buffer: {:?}\n", e),
            }
        }
        drop(locked);
        if starved {
            // Out of memory or at the reserve: let the guest breathe, as C does.
            fsleep(Delta::from_millis(OUT_OF_PUFF_BACKOFF_MS));
        }
        sent
    }
}
