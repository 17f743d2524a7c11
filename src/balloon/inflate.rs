// SPDX-License-Identifier: GPL-2.0

//! Inflating: taking pages from the guest (C's `fill_balloon()`).
//!
//! One round allocates the pages of up to `inflate_depth` PFN buffers of
//! 256 pages, then puts them on the balloon lists and hands the buffers to
//! the host at once. As in C, pages are allocated without the balloon lock
//! held: the allocation may reclaim, and reclaim may call the OOM
//! notifier, which takes that lock. A buffer's pages go on a balloon list
//! and into `num_pages` once the inflate queue has accepted the buffer, under
//! the balloon lock; a buffer the queue refuses frees its pages, never
//! announced (C counts them as ballooned).
//!
//! A round takes whole 2 MiB blocks first ([`super::lists::BLOCK_ORDER`])
//! while free memory has them at hand (no reclaim, no compaction: a block
//! never makes inflating slower), then single pages as C does. A block's
//! pages go to the host in ascending order, half a block per buffer, so
//! that hosts backed by huge pages can free whole ones:
//!
//! - THP-backed hosts free the block's huge page and split none of the
//!   huge pages backing the memory the guest keeps;
//! - hugetlbfs-backed hosts only free a huge page whose 512 PFNs arrive in
//!   one element (QEMU) or never (Cloud Hypervisor), so when free page
//!   reporting is negotiated each block is also reported, whole, on the
//!   reporting queue before it is ballooned: QEMU, Cloud Hypervisor and
//!   Firecracker discard an aligned 2 MiB report as one huge page;
//! - Firecracker merges the contiguous PFNs of a buffer into one range.
//!
//! Every element stays a single descriptor of at most 256 PFNs, which all
//! three accept.

use super::{
    buffers::InflateBuffer,
    host::Ballooned,
    lists::{
        ListKind,
        BALLOON_PAGES_PER_PAGE,
        BLOCK_ORDER,
        BLOCK_PAGES, //
    },
    perf::{
        Counter,
        Stopwatch, //
    },
    reporting::{
        report_blocks,
        REPORT_BLOCKS_MAX, //
    },
    round::{
        Round,
        RoundContext,
        Stop, //
    },
};
use crate::{
    compat::Param,
    logic::{
        pfn::{
            PfnBatch,
            PushError,
            PFNS_PER_BUFFER, //
        },
        target::{
            batch_pages,
            held_allowance,
            inflate_allowance,
            reserve_pages,
            RecentReclaim, //
        },
    },
    mm::{
        balloon::{
            BalloonBlock,
            BalloonPage,
            BlockReport, //
        },
        stat,
        Node, //
    },
    virtio,
};
use core::num::NonZeroUsize;
use kernel::{
    device::Bound,
    new_mutex,
    prelude::*,
    sizes::SizeConstants,
    sync::{
        atomic::{
            Atomic,
            Relaxed, //
        },
        Mutex,
        MutexGuard, //
    },
    time::{
        Instant,
        Monotonic, //
    },
};

/// Pages allocated for one inflate round, before the host hears of them.
struct Staging {
    /// Whole blocks, until they are reported and split into `block_pages`.
    blocks: KVec<BalloonBlock>,
    /// Blocks reported, until they all are (room for as many as `blocks`).
    reported: KVec<BalloonBlock>,
    /// The pages of the round's blocks, block after block, in ascending
    /// order within each.
    block_pages: KVec<BalloonPage>,
    /// Pages allocated one at a time (in bulk or singly).
    pages: KVec<BalloonPage>,
    /// The pages of the buffer being filled.
    buffer: KVec<BalloonPage>,
    /// A report to lend the reporting queue: blocks and their entries
    /// (`None` after the device kept one).
    report: Option<KBox<BlockReport>>,
    /// What the guest's reclaim freed lately, while the balloon holds.
    held_reclaim: RecentReclaim,
}

/// The inflating side of a balloon.
#[pin_data]
pub(super) struct Inflater {
    /// Only the size work takes it, before the balloon lock.
    #[pin]
    staging: Mutex<Staging>,
    /// Inflate rounds in a row whose allocations failed, since the last
    /// round that did not fail or the end of the last inflate: sets the
    /// size work's backoff and rate-limits the log.
    out_of_puff: Atomic<u32>,
    /// Whether inflating is held back to keep the guest's reserve, until
    /// the margin is there or this inflate ends.
    holding: Atomic<bool>,
    /// When the inflater was made: the clock of [`Staging::held_reclaim`].
    origin: Instant<Monotonic>,
    /// Whether reporting blocks on the reporting queue failed once.
    report_failed: Atomic<bool>,
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
/// the request, and otherwise allocates one page through the normal path
/// (which may reclaim, on any node). Only a bulk call that allocates
/// nothing is one: that single page failed, reclaim included, which is
/// where C's `fill_balloon()` says "Out of puff"; one attempt, as C's,
/// not one per node.
fn alloc_pages(into: &mut KVec<BalloonPage>, n: usize) -> usize {
    let start = into.len();
    let need = |into: &KVec<BalloonPage>| n - (into.len() - start);
    'pages: while need(into) > 0 {
        for node in Node::local_first() {
            if need(into) == 0 {
                break;
            }
            if BalloonPage::alloc_bulk(into, need(into), Some(node)) == 0 {
                break 'pages;
            }
        }
    }
    into.len() - start
}

/// Allocates a whole block on the local NUMA node, else on another, if
/// one is at hand.
fn alloc_block() -> Option<BalloonBlock> {
    Node::local_first().find_map(|n| BalloonBlock::alloc(n, BLOCK_ORDER))
}

impl Inflater {
    /// Room for `depth` buffers of pages.
    pub(super) fn new(depth: NonZeroUsize) -> impl PinInit<Self, Error> {
        let pages = depth.get() * PFNS_PER_BUFFER;
        try_pin_init!(Self {
            staging <- new_mutex!(Staging {
                blocks: KVec::with_capacity(pages / BLOCK_PAGES + 1, GFP_KERNEL)?,
                reported: KVec::with_capacity(pages / BLOCK_PAGES + 1, GFP_KERNEL)?,
                block_pages: KVec::with_capacity(pages, GFP_KERNEL)?,
                pages: KVec::with_capacity(pages, GFP_KERNEL)?,
                buffer: KVec::with_capacity(PFNS_PER_BUFFER, GFP_KERNEL)?,
                report: Some(BlockReport::new(REPORT_BLOCKS_MAX)?),
                held_reclaim: RecentReclaim::default(),
            }),
            out_of_puff: Atomic::new(0),
            holding: Atomic::new(false),
            origin: Instant::now(),
            report_failed: Atomic::new(false),
        }? Error)
    }

    /// Guest pages the balloon may take now, with `num_pages` balloon pages
    /// inflated and `left` more balloon pages wanted, without cutting into
    /// the reserve the guest needs to keep running; logs when it starts and
    /// stops holding back. Once holding, it waits for a margin the guest
    /// freed of itself, not by reclaim lately (`held_reclaim`,
    /// [`held_allowance`]).
    fn allowance(
        &self,
        ctx: &RoundContext<'_>,
        held_reclaim: &mut RecentReclaim,
        num_pages: u32,
        left: u32,
    ) -> usize {
        let per = BALLOON_PAGES_PER_PAGE;
        let guest_pages = ctx.host.guest_pages(num_pages);
        let shift = kernel::page::PAGE_SHIFT as u32;
        let mib = |guest_pages: u64| (guest_pages << shift) / u64::SZ_1M;
        let reserve = reserve_pages(
            guest_pages,
            shift,
            crate::module_parameters::min_available_mib.get(),
        );
        let mut allowance =
            inflate_allowance(stat::available_pages(), stat::swappable_pages(), reserve);
        let reclaimed = stat::reclaimed_pages();
        let now_ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(0);
        if self.holding.load(Relaxed) {
            let lately = held_reclaim.since(reclaimed, now_ms);
            allowance = held_allowance(allowance, reserve, u64::from(left.div_ceil(per)), lately);
        }
        let holding = allowance == 0;
        if self.holding.xchg(holding, Relaxed) != holding {
            if holding {
                *held_reclaim = RecentReclaim::start(reclaimed, now_ms);
                dev_warn!(
                    ctx.dev.as_ref(),
                    "holding the balloon at {} MiB: inflating further would leave the guest less \
                     than {} MiB available\n",
                    mib(u64::from(num_pages / per)),
                    mib(reserve)
                );
            } else {
                dev_info!(ctx.dev.as_ref(), "inflating again\n");
            }
        }
        usize::try_from(allowance).unwrap_or(usize::MAX)
    }

    /// Rounds in a row whose allocations failed.
    pub(super) fn out_of_puff_rounds(&self) -> u32 {
        self.out_of_puff.load(Relaxed)
    }

    /// The balloon stopped inflating (the target is met, it deflates, or
    /// it was emptied): the next inflate starts with no failure streak
    /// and no hold.
    pub(super) fn end(&self) {
        self.out_of_puff.store(0, Relaxed);
        self.holding.store(false, Relaxed);
    }

    /// Logs an allocation failure, rate-limited.
    fn out_of_puff(&self, dev: &virtio::Device<Bound>) {
        let fails = self.out_of_puff.fetch_add(1, Relaxed) + 1;
        if fails.is_power_of_two() {
            dev_info!(
                dev.as_ref(),
                "Out of puff! Can't get {} pages ({} times)\n",
                BALLOON_PAGES_PER_PAGE,
                fails
            );
        }
    }

    /// Allocates the guest pages of up to `depth` buffers for `num` balloon
    /// pages into `staging`, with `num_pages` balloon pages inflated and
    /// without the balloon lock: whole blocks while they are at hand (two
    /// buffers each), then single pages. Returns why it stopped short, if
    /// it did.
    fn alloc_round(
        &self,
        ctx: &RoundContext<'_>,
        staging: &mut Staging,
        num_pages: u32,
        num: u32,
    ) -> Option<Stop> {
        let batching = ctx.host.batching();
        let per = BALLOON_PAGES_PER_PAGE;
        let sw = Stopwatch::start();
        let mut left = num;
        let mut buffers = batching.inflate_depth.get();
        let mut stop = None;
        if batching.blocks {
            let block = BLOCK_PAGES as u32 * per;
            let buffers_per_block = (BLOCK_PAGES * per as usize).div_ceil(PFNS_PER_BUFFER);
            while left >= block && buffers >= buffers_per_block {
                if self.allowance(ctx, &mut staging.held_reclaim, num_pages, left) < BLOCK_PAGES {
                    break;
                }
                let Some(b) = alloc_block() else {
                    break;
                };
                if let Err(e) = staging.blocks.push_within_capacity(b) {
                    drop(e);
                    break;
                }
                left -= block;
                buffers -= buffers_per_block;
            }
        }
        for _ in 0..buffers {
            if left == 0 {
                break;
            }
            let want = batch_pages(left, per, PFNS_PER_BUFFER).min(self.allowance(
                ctx,
                &mut staging.held_reclaim,
                num_pages,
                left,
            ));
            if want == 0 {
                stop = Some(Stop::Hold);
                break;
            }
            let got = alloc_pages(&mut staging.pages, want);
            left = left.saturating_sub(got as u32 * per);
            if got < want {
                stop = Some(Stop::OutOfPuff);
                break;
            }
        }
        sw.stop(ctx.host.perf(), Counter::InflateAllocNs);
        match stop {
            Some(Stop::OutOfPuff) => self.out_of_puff(ctx.dev),
            _ => self.out_of_puff.store(0, Relaxed),
        }
        stop
    }

    /// Inflates by up to `inflate_depth` buffers of `num` balloon pages in
    /// all (C's `fill_balloon()`), then, if it told the host anything,
    /// writes `actual`.
    ///
    /// The balloon lock (`b`) is let go while the pages are allocated: the
    /// allocation may reclaim, and reclaim may call the OOM notifier, which
    /// takes it. The pages are then put on the balloon list and handed to
    /// the host with one notification, under the lock again; the guest
    /// sleeps while the host releases their memory. Filling while the host
    /// works does not pay off: QEMU frees each page with its own
    /// `madvise()` while holding its big lock, so a busy guest only slows
    /// the host down (TLB shootdowns) and stalls on the lock itself.
    pub(super) fn fill_balloon(
        &self,
        ctx: &RoundContext<'_>,
        b: MutexGuard<'_, Ballooned>,
        num: u32,
    ) -> Round {
        let num_pages = b.num_pages;
        drop(b);
        let mut staging = self.staging.lock();
        let short = self.alloc_round(ctx, &mut staging, num_pages, num);
        let Staging {
            blocks,
            reported,
            block_pages,
            pages,
            buffer,
            report,
            held_reclaim: _,
        } = &mut *staging;
        if !blocks.is_empty() {
            ctx.host
                .perf()
                .add(Counter::InflateBlocks, blocks.len() as u64);
            if ctx.host.batching().report_blocks {
                report_blocks(ctx, blocks, reported, report, &self.report_failed);
            }
            for block in blocks.drain_all() {
                // There is room: the round's pages fit in `block_pages`.
                if let Err(block) = block.split_into(block_pages) {
                    drop(block);
                }
            }
            // `tell_host()` takes pages from the end: ascending order.
            block_pages.reverse();
        }
        let mut round = tell_host(
            ctx,
            [
                (ListKind::Blocks, &mut *block_pages),
                (ListKind::Singles, &mut *pages),
            ],
            buffer,
        );
        // Pages the queue did not take were never announced: free them.
        block_pages.clear();
        pages.clear();
        round.stop = round.stop.or(short);
        round
    }
}

/// Moves pages from the end of `pages` to `buffer` and their PFNs into
/// `buf`, until either is full or `pages` is empty. A page whose PFN the
/// device cannot take is freed, never announced.
fn fill_buffer(
    ctx: &RoundContext<'_>,
    buf: &mut InflateBuffer,
    pages: &mut KVec<BalloonPage>,
    buffer: &mut KVec<BalloonPage>,
) -> PfnBatch {
    let per_buffer = PFNS_PER_BUFFER / BALLOON_PAGES_PER_PAGE as usize;
    let mut batch = PfnBatch::new(
        kernel::page::PAGE_SHIFT as u32,
        ctx.host.negotiated().endian,
    );
    while buffer.len() < per_buffer {
        let Some(page) = pages.pop() else {
            break;
        };
        match batch.push(buf, page.pfn()) {
            Ok(()) => {
                // Room for `per_buffer` pages.
                let _ = buffer.push_within_capacity(page);
            }
            Err(PushError::Unreachable) => {
                dev_warn!(
                    ctx.dev.as_ref(),
                    "page frame {:#x} is beyond 32-bit balloon PFNs, not inflating it\n",
                    page.pfn()
                );
            }
            Err(PushError::Full) => break,
        }
    }
    batch
}

/// Puts the pages of `sources` on their balloon lists, one buffer at a
/// time through `buffer` (each vector from its end), tells the host (C's
/// `tell_host()` on the inflate queue) and writes `actual`, all under the
/// balloon lock.
fn tell_host(
    ctx: &RoundContext<'_>,
    sources: [(ListKind, &mut KVec<BalloonPage>); 2],
    buffer: &mut KVec<BalloonPage>,
) -> Round {
    if sources.iter().all(|(_, pages)| pages.is_empty()) {
        return Round::NOTHING;
    }
    let mut b = ctx.host.lock();
    let mut pipe = match ctx.pipeline::<InflateBuffer>(ctx.host.batching().inflate_depth) {
        Ok(pipe) => pipe,
        Err(stop) => return Round::stopped(stop),
    };
    let mut round = Round::NOTHING;
    'sources: for (kind, pages) in sources {
        while pipe.has_room() && !pages.is_empty() {
            let Some(mut buf) = b.inflate_buffers.take() else {
                break 'sources;
            };
            let batch = fill_buffer(ctx, &mut buf, pages, buffer);
            if batch.is_empty() {
                b.inflate_buffers.put(buf);
                continue;
            }
            if let Err(rejected) = pipe.queue(buf, batch.bytes()) {
                // The host never hears of these pages: they go back to the
                // guest, and `actual` never counts them (C counts them and
                // only warns).
                dev_warn!(
                    ctx.dev.as_ref(),
                    "inflate queue refused PFNs ({:?}): freeing its {} pages, never announced\n",
                    rejected.err,
                    buffer.len()
                );
                buffer.clear();
                b.inflate_buffers.put(rejected.buf);
                round.stop = Some(Stop::Host);
                break 'sources;
            }
            // Queued: the host may read the PFNs from now on (it is notified
            // below). The pages are the balloon's either way; they go on the
            // balloon list (one round of the balloon core's lock for the
            // whole buffer) and into `num_pages` before the balloon lock,
            // which migration and the OOM notifier take, is released.
            ctx.lists.enqueue(kind, buffer);
            let n = batch.len() as u32;
            b.num_pages += n;
            round.moved += n;
            ctx.host.perf().add(Counter::InflatePages, u64::from(n));
            ctx.host.perf().add(Counter::InflateBuffers, 1);
        }
    }
    pipe.kick();
    if let Err(stop) = pipe.drain(|buf| b.inflate_buffers.put(buf)) {
        round.stop = Some(stop);
    }
    round.acked = round.moved;
    ctx.host.publish_actual(ctx.dev, &b);
    round
}
