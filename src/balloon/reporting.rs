// SPDX-License-Identifier: GPL-2.0

//! Free page reporting (`VIRTIO_BALLOON_F_REPORTING`, virtio spec 5.5.6.7;
//! C's `virtballoon_free_page_report()`).
//!
//! The page allocator hands batches of free pages to the driver, which
//! passes them to the host on the reporting queue; the host releases their
//! backing memory. The pages are the allocator's: the driver only waits
//! until the host has processed them.

use super::{
    host::Host,
    vq, //
};
use crate::mm::page_reporting::{
    Report,
    ReportedPages, //
};
use kernel::prelude::*;

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
