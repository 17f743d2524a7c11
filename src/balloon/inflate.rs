// SPDX-License-Identifier: GPL-2.0

//! Inflating: taking pages from the guest (C's `fill_balloon()`).
//!
//! One round allocates the pages of up to `depth` PFN buffers of 256 pages,
//! then puts them on the balloon list and hands the buffers to the host at
//! once ([`Pipeline`]). As in C, pages are allocated without the balloon
//! lock held: the allocation may reclaim, and reclaim may call the OOM
//! notifier, which takes that lock. Each page goes on the balloon list
//! before the host hears of it, as in C.

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
        balloon::{
            BalloonPage,
            Node, //
        },
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

/// Why an inflate round stopped before its target.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Short {
    /// Inflating further would cut into the guest's reserve.
    Hold,
    /// A single-page allocation failed, even after reclaim.
    OutOfPuff,
}

/// Pages allocated for one inflate round, before the host hears of them.
///
/// Only the size work uses this, and it allocates into it without holding
/// the balloon lock.
pub(super) struct Staging {
    /// Allocated, not yet on the balloon list: room for `depth` buffers.
    pages: KVec<BalloonPage>,
    /// The pages of the buffer being filled.
    buffer: KVec<BalloonPage>,
}

impl Staging {
    /// Room for `depth` buffers of pages.
    pub(super) fn new(depth: usize) -> Result<Self> {
        Ok(Self {
            pages: KVec::with_capacity(depth * PFNS_PER_BUFFER, GFP_KERNEL)?,
            buffer: KVec::with_capacity(PFNS_PER_BUFFER, GFP_KERNEL)?,
        })
    }
}

/// Allocates `n` pages for the balloon into `into`, which must have room:
/// in bulk while the page allocator has them at hand, on the local NUMA
/// node first, then on the others; else one at a time through the normal
/// allocation path, which reclaims page cache and swaps as C's
/// `balloon_page_alloc()` does. Returns how many: fewer than `n` only when
/// a single-page allocation failed.
///
/// A short bulk allocation is not a shortage: the bulk allocator serves
/// only a zone of the preferred node that is above its low watermark plus
/// the request, and otherwise hands out one page at a time (which may
/// reclaim).
fn alloc_pages(into: &mut KVec<BalloonPage>, n: usize) -> usize {
    let start = into.len();
    let need = |into: &KVec<BalloonPage>| n - (into.len() - start);
    while need(into) > 0 {
        let before = into.len();
        let local = Node::local();
        BalloonPage::alloc_bulk(into, need(into), Some(local));
        for node in Node::with_memory().filter(|n| *n != local) {
            if need(into) == 0 {
                break;
            }
            BalloonPage::alloc_bulk(into, need(into), Some(node));
        }
        if into.len() > before {
            continue;
        }
        // Nothing from the bulk allocator, not even through its own
        // single-page fallback: one more try with reclaim, as C would.
        let Some(page) = BalloonPage::alloc() else {
            break;
        };
        if into.push_within_capacity(page).is_err() {
            break;
        }
    }
    into.len() - start
}

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
        let allowance = inflate_allowance(
            kext::mm::available_pages(),
            kext::mm::swappable_pages(),
            reserve,
        );
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

    /// Allocates the guest pages of up to `depth` buffers for `num` balloon
    /// pages into `pages`, without the balloon lock. Returns why it stopped
    /// short, if it did.
    fn alloc_round(
        &self,
        dev: &virtio::Device<Bound>,
        pages: &mut KVec<BalloonPage>,
        num: u32,
    ) -> Option<Short> {
        let per = self.props.per_page.max(1);
        let ballooned = self.locked.lock().num_pages;
        let sw = Stopwatch::start();
        let mut left = num;
        let mut short = None;
        for _ in 0..self.props.depth {
            if left == 0 {
                break;
            }
            let want =
                batch_pages(left, per, PFNS_PER_BUFFER).min(self.inflate_allowance(dev, ballooned));
            if want == 0 {
                short = Some(Short::Hold);
                break;
            }
            let got = alloc_pages(pages, want);
            left = left.saturating_sub(got as u32 * per);
            if got < want {
                short = Some(Short::OutOfPuff);
                break;
            }
        }
        sw.stop(&self.perf, Counter::InflateAllocNs);
        match short {
            Some(Short::OutOfPuff) => self.out_of_puff(dev),
            _ => self.out_of_puff.store(0, Relaxed),
        }
        short
    }

    /// Inflates by up to `depth` buffers of `num` balloon pages in all;
    /// returns how many balloon pages the host was told about.
    ///
    /// The pages are allocated first, then put on the balloon list and
    /// handed to the host with one notification; the guest then sleeps
    /// while the host releases their memory. Filling while the host works
    /// does not pay off: QEMU frees each page with its own `madvise()` while
    /// holding its big lock, so a busy guest only slows the host down (TLB
    /// shootdowns) and stalls on the lock itself.
    pub(super) fn fill_balloon(self: &Arc<Self>, dev: &virtio::Device<Bound>, num: u32) -> u32 {
        let mut staging = self.staging.lock();
        let Staging { pages, buffer } = &mut *staging;
        let short = self.alloc_round(dev, pages, num);
        let sent = self.tell_host_inflated(dev, pages, buffer);
        // Pages the queue did not take were never announced: free them.
        pages.clear();
        drop(staging);
        if short.is_some() {
            // Out of memory or at the reserve: let the guest breathe, as C does.
            fsleep(Delta::from_millis(OUT_OF_PUFF_BACKOFF_MS));
        }
        sent
    }

    /// Puts `pages` on the balloon list, one buffer at a time through
    /// `buffer`, and tells the host; returns how many balloon pages it was
    /// told about.
    fn tell_host_inflated(
        self: &Arc<Self>,
        dev: &virtio::Device<Bound>,
        pages: &mut KVec<BalloonPage>,
        buffer: &mut KVec<BalloonPage>,
    ) -> u32 {
        if pages.is_empty() {
            return 0;
        }
        let shift = kernel::page::PAGE_SHIFT as u32;
        let per_buffer = PFNS_PER_BUFFER / self.props.per_page.max(1) as usize;
        let mut locked = self.locked.lock();
        let mut pipe = match Pipeline::<PfnBuffer>::new(dev, vq::INFLATE, self.props.depth) {
            Ok(pipe) => pipe,
            Err(e) => {
                dev_warn!(dev.as_ref(), "inflate queue unavailable: {:?}\n", e);
                return 0;
            }
        };
        let mut sent = 0u32;
        while pipe.has_room() && !pages.is_empty() {
            let Some(mut buf) = locked.take_inflate_buffer() else {
                break;
            };
            let mut batch = PfnBatch::new(shift, self.props.endian);
            while buffer.len() < per_buffer {
                let Some(page) = pages.pop() else {
                    break;
                };
                match batch.push(&mut buf, page.pfn()) {
                    Ok(()) => {
                        // Room for `per_buffer` pages.
                        let _ = buffer.push_within_capacity(page);
                    }
                    Err(PushError::Unreachable) => {
                        // Freed here, never announced.
                        dev_warn!(
                            dev.as_ref(),
                            "page frame {:#x} is beyond 32-bit balloon PFNs, not inflating it\n",
                            page.pfn()
                        );
                    }
                    Err(PushError::Full) => break,
                }
            }
            // One round of the balloon lock for the whole buffer.
            if self.pages.enqueue_all(self, buffer).is_err() {
                // `pages` is our own field, so this does not happen; should
                // it, the pages are freed and not announced.
                buffer.clear();
                batch.clear();
            }
            if batch.is_empty() {
                let _ = locked.inflate_pool.push_within_capacity(buf);
                continue;
            }
            locked.num_pages += batch.len() as u32;
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
        sent
    }
}
