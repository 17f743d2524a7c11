// SPDX-License-Identifier: GPL-2.0

//! Free page reporting (`VIRTIO_BALLOON_F_REPORTING`, virtio spec 5.5.6.6;
//! C's `virtballoon_free_page_report()`).
//!
//! The page allocator hands batches of free pages to the driver, which
//! passes them to the host on the reporting queue; the host releases their
//! backing memory. The pages are the allocator's: the driver only waits
//! until the host has processed them.

use super::{
    device::Balloon,
    vq, //
};
use crate::kext::page_reporting::{
    ReportHandler,
    ReportedPages, //
};
use kernel::prelude::*;

impl ReportHandler for Balloon {
    fn report(&self, pages: &ReportedPages<'_>) -> Result {
        let dev = self.binding.access().ok_or(ENODEV)?;
        let q = dev.sg_vq(vq::REPORTING)?;
        q.transfer_inbuf(pages).inspect_err(|e| {
            dev_warn!(
                dev.as_ref(),
                "free page report of {} blocks failed: {:?}\n",
                pages.len(),
                e
            );
        })
    }
}
