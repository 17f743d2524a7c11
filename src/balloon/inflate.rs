// SPDX-License-Identifier: GPL-2.0

//! Inflating: taking pages from the guest (C's `fill_balloon()`).
//!
//! One round fills up to `depth` PFN buffers of 256 pages and keeps them in
//! flight ([`Pipeline`]): while the host releases the memory behind one
//! buffer, the guest allocates the pages of the next. Each page goes on
//! the balloon list before the host hears of it, as in C.

use super::{
    device::{
        Balloon,
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
        let ballooned = u64::from(ballooned / self.props.per_page.max(1));
        let guest_pages = if self.props.deflate_on_oom {
            kext::mm::totalram_pages()
        } else {
            kext::mm::totalram_pages() + ballooned
        };
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

    /// Allocates up to `want` guest pages into `buf` and the balloon list;
    /// returns the batch and whether allocation failed.
    fn fill_buffer(
        self: &Arc<Self>,
        dev: &virtio::Device<Bound>,
        num_pages: &mut u32,
        buf: &mut PfnBuffer,
        want: usize,
    ) -> (PfnBatch, bool) {
        let sw = Stopwatch::start();
        let mut batch = PfnBatch::new(kernel::page::PAGE_SHIFT as u32, self.props.endian);
        let mut failed = false;
        for _ in 0..want {
            let Some(page) = BalloonPage::alloc() else {
                failed = true;
                break;
            };
            match batch.push(buf, page.pfn()) {
                Ok(()) => match self.pages.enqueue(self, page) {
                    Ok(()) => *num_pages += self.props.per_page,
                    // `pages` is our own field, so this does not happen;
                    // should it, the page is freed and not announced.
                    Err(_page) => batch.pop_page(),
                },
                Err(PushError::Unreachable) => {
                    dev_warn!(
                        dev.as_ref(),
                        "page frame {:#x} is beyond 32-bit balloon PFNs, not inflating it\n",
                        page.pfn()
                    );
                }
                // `want` never exceeds one buffer.
                Err(PushError::Full) => break,
            }
        }
        sw.stop(&self.perf, Counter::InflateAllocNs);
        (batch, failed)
    }

    /// Inflates by up to `depth` buffers of `num` balloon pages in all;
    /// returns how many balloon pages the host was told about.
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
        loop {
            while pipe.has_room() && sent < num && !starved {
                let want = batch_pages(num - sent, per, PFNS_PER_BUFFER)
                    .min(self.inflate_allowance(dev, locked.num_pages));
                if want == 0 {
                    // Holding at the reserve.
                    starved = true;
                    break;
                }
                let buf = locked
                    .inflate_pool
                    .pop()
                    .or_else(|| KBox::new([0; PFNS_PER_BUFFER], GFP_KERNEL).ok());
                let Some(mut buf) = buf else {
                    break;
                };
                let (batch, failed) = self.fill_buffer(dev, &mut locked.num_pages, &mut buf, want);
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
                // We should always be able to add a buffer to a queue with
                // room for `depth` of them.
                if let Err(rejected) = pipe.send(buf, batch.bytes(), &self.perf) {
                    dev_warn!(
                        dev.as_ref(),
                        "inflate queue refused PFNs: {:?}\n",
                        rejected.err
                    );
                    let _ = locked.inflate_pool.push_within_capacity(rejected.buf);
                    break;
                }
            }
            if pipe.in_flight() == 0 {
                break;
            }
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
