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

/// Smallest order of the blocks to report: the page allocator's default
/// (`pageblock_order`), except with 64 KiB base pages on arm64, where that
/// would be 512 MiB and reporting would effectively never run (C uses 5,
/// 2 MiB, there).
pub(super) const REPORTING_ORDER: Option<u32> = if cfg!(all(CONFIG_ARM64, CONFIG_ARM64_64K_PAGES)) {
    Some(5)
} else {
    None
};

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
