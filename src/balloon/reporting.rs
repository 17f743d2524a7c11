// SPDX-License-Identifier: GPL-2.0

//! Free page reporting (`VIRTIO_BALLOON_F_REPORTING`, virtio spec 5.5.6.7;
//! C's `virtballoon_free_page_report()`).
//!
//! The page allocator hands batches of free pages to the driver, which
//! passes them to the host on the reporting queue; the host releases their
//! backing memory. The pages are the allocator's: the driver only waits
//! until the host has processed them.
//!
//! Inflating reports its whole blocks on the same queue first
//! ([`report_blocks`]), so that a host backed by huge pages frees them as
//! such (see [`super::inflate`]).

use super::{
    host::Host,
    lists::BLOCK_PAGES,
    perf::Counter,
    round::RoundContext,
    vq, //
};
use crate::{
    mm::{
        balloon::{
            BalloonBlock,
            BlockReport, //
        },
        page_reporting::{
            Report,
            ReportedPages, //
        },
    },
    virtio::NotReturned,
};
use kernel::{
    prelude::*,
    sync::atomic::{
        Atomic,
        Relaxed, //
    },
};

/// Smallest order of the blocks to report: 2 MiB, what a host with 4 KiB
/// pages can discard whole ([`crate::logic::pfn::host_huge_order`]), for
/// every guest page size. The page allocator's default, `pageblock_order`,
/// is that only with 4 KiB pages: 32 MiB with 16 KiB pages, 512 MiB with
/// 64 KiB, where a guest's free memory seldom holds such blocks and the
/// host gets next to nothing back. C overrides it only with 64 KiB pages on
/// arm64 (order 5); with 16 KiB pages ours deliberately differs from C,
/// which on Debian's arm64-16k kernel reports 32 MiB blocks. The first
/// registration in a boot fixes the order for the boot
/// (`page_reporting_order`, which an administrator may set).
pub(super) const REPORTING_ORDER: Option<u32> = Some(crate::logic::pfn::host_huge_order(
    kernel::page::PAGE_SHIFT as u32,
    crate::bindings::VB_MAX_PAGE_ORDER,
));

impl Report for Host {
    fn report(&self, pages: &ReportedPages<'_>) -> Result {
        let dev = self.binding().try_access().ok_or(ENODEV)?;
        let q = dev.sg_vq(vq::REPORTING)?;
        q.transfer_inbuf(pages).inspect_err(|e| {
            // EBUSY: the device still has a block report it kept, which was
            // logged then; the page allocator tries again later.
            if *e != EBUSY {
                dev_warn!(
                    dev.as_ref(),
                    "free page report of {} blocks failed: {:?}\n",
                    pages.len(),
                    e
                );
            }
        })
    }
}

/// Most blocks reported at once (`PAGE_REPORTING_CAPACITY` in
/// `include/linux/page_reporting.h`, what the page allocator's own reports
/// use).
pub(super) const REPORT_BLOCKS_MAX: usize = 32;

/// Reports `blocks`, whole, on the free page reporting queue, so that a
/// host backed by huge pages can discard them as such; they go on to be
/// ballooned (reported ones pass through `reported`, which has room for
/// them all). The blocks are ours alone until they are ballooned, and the
/// host may discard balloon pages anyway; a failure only costs the host
/// those huge pages, so this never waits for anything but its own report:
/// not for a host marked unresponsive, not behind the page allocator's
/// report in progress, not again after a report failed (`failed`, logged
/// once), and not once unbinding has begun.
///
/// A report waits for the host at most `host_timeout_ms`: the size work is
/// freezable, and the system cannot suspend while it waits. A report the
/// host keeps longer stays the device's (logged): its blocks are neither
/// ballooned nor reused until the device gives them back (they are freed
/// then) or is reset (unbind, suspend), and no block is reported meanwhile.
pub(super) fn report_blocks(
    ctx: &RoundContext<'_>,
    blocks: &mut KVec<BalloonBlock>,
    reported: &mut KVec<BalloonBlock>,
    report: &mut Option<KBox<BlockReport>>,
    failed: &Atomic<bool>,
) {
    let (dev, host) = (ctx.dev, ctx.host);
    if failed.load(Relaxed) || host.is_marked_unresponsive() {
        return;
    }
    let Ok(q) = dev.sg_vq(vq::REPORTING) else {
        return;
    };
    let per_report = (q.size() as usize).min(REPORT_BLOCKS_MAX);
    if per_report == 0 {
        return;
    }
    while !blocks.is_empty() && !host.binding().is_revoked() {
        let mut r = match report.take() {
            Some(r) => r,
            None => match BlockReport::new(REPORT_BLOCKS_MAX) {
                Ok(r) => r,
                Err(_) => break,
            },
        };
        let n = r.fill(blocks, per_report);
        match q.try_transfer_owned(r, host.timeout()) {
            Ok(mut r) => {
                host.perf().add(Counter::ReportedBlocks, n as u64);
                r.empty_into(reported);
                *report = Some(r);
            }
            Err(NotReturned {
                err,
                sg: Some(mut r),
            }) => {
                r.empty_into(blocks);
                *report = Some(r);
                // EBUSY: the page allocator reports free pages right now, or
                // the device still has a report; ENODEV: unbinding began or
                // the queue is gone. Skip.
                if err != EBUSY && err != ENODEV && !failed.xchg(true, Relaxed) {
                    dev_warn!(
                        dev.as_ref(),
                        "reporting {} inflated blocks on the reporting queue failed ({:?}): not \
                         reporting blocks any more\n",
                        n,
                        err
                    );
                }
                break;
            }
            Err(NotReturned { sg: None, .. }) => {
                host.perf().add(Counter::KeptReports, 1);
                dev_warn!(
                    dev.as_ref(),
                    "the device kept a report of {} inflated blocks ({} KiB) beyond {} ms: they \
                     stay the device's until it returns them or is reset, and no block is \
                     reported meanwhile\n",
                    n,
                    (n * BLOCK_PAGES) << (kernel::page::PAGE_SHIFT - 10),
                    host.timeout().as_millis()
                );
                break;
            }
        }
    }
    // There is room: `blocks` held them all before.
    while let Some(block) = reported.pop() {
        if let Err(e) = blocks.push_within_capacity(block) {
            drop(e);
        }
    }
}
