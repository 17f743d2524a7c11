// SPDX-License-Identifier: GPL-2.0

//! Balloon page migration on behalf of compaction (C's
//! `virtballoon_migratepage()`).
//!
//! Ballooned pages stay movable. When compaction wants one of them, the
//! balloon core isolates it and calls [`MigratePage::migrate_page`] with a
//! fresh page: inflate the new page, then deflate the old one, each with one
//! PFN buffer round trip; the core then swaps the pages on the list.

use super::{
    device::Balloon,
    vq, //
};
use crate::{
    kext::balloon::{
        MigratePage,
        PageRef, //
    },
    logic::pfn::PfnBatch,
};
use kernel::prelude::*;

impl MigratePage for Balloon {
    fn migrate_page(&self, new: PageRef<'_>, old: PageRef<'_>) -> Result {
        // Do not wait for the balloon lock: the size work may hold it while
        // it allocates, and compaction may be what that allocation runs.
        // Compaction retries later.
        let Some(mut locked) = self.locked.try_lock() else {
            return Err(EAGAIN);
        };
        let Some(dev) = self.binding.access() else {
            return Err(EAGAIN);
        };
        let Some(mut buf) = Self::take_pfns(&mut locked) else {
            return Err(EAGAIN);
        };
        let shift = kernel::page::PAGE_SHIFT as u32;

        // 1st step: inflate the new page.
        let mut batch = PfnBatch::new(shift, self.props.endian);
        if batch.push(&mut buf, new.pfn()).is_err() {
            locked.pfns = Some(buf);
            return Err(EAGAIN);
        }
        let Some(mut buf) = self.tell_host(&dev, vq::INFLATE, buf, batch.bytes()) else {
            return Err(EAGAIN);
        };

        // 2nd step: deflate the old page.
        let mut batch = PfnBatch::new(shift, self.props.endian);
        // The old page was reachable when it was inflated.
        let _ = batch.push(&mut buf, old.pfn());
        locked.pfns = self.tell_host(&dev, vq::DEFLATE, buf, batch.bytes());
        Ok(())
    }
}
