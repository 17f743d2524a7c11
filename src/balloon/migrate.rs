// SPDX-License-Identifier: GPL-2.0

//! Balloon page migration on behalf of compaction (C's
//! `virtballoon_migratepage()`).
//!
//! Ballooned pages stay movable. When compaction wants one of them, the
//! balloon core isolates it and calls [`MigratePage::migrate_page`] with a
//! fresh page: inflate the new page, then deflate the old one, each with one
//! PFN buffer round trip; the core then swaps the pages on the list.

use super::{
    device::{
        Balloon,
        DeflateBuffer,
        PfnBuffer, //
    },
    perf::Counter,
    queue::Pipeline,
    vq,
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
        // Do not wait for the balloon lock: the size work holds it while it
        // allocates, and compaction may be what that allocation runs.
        // Compaction retries later.
        let Some(mut locked) = self.locked.try_lock() else {
            return Err(EAGAIN);
        };
        let Some(dev) = self.binding.access() else {
            return Err(EAGAIN);
        };
        let shift = kernel::page::PAGE_SHIFT as u32;
        let perf = &self.perf;

        // 1st step: inflate the new page.
        let mut buf = locked.inflate_pool.pop().ok_or(EAGAIN)?;
        let mut batch = PfnBatch::new(shift, self.props.endian);
        if batch.push(&mut buf, new.pfn()).is_err() {
            let _ = locked.inflate_pool.push_within_capacity(buf);
            return Err(EAGAIN);
        }
        let mut pipe = Pipeline::<PfnBuffer>::new(&dev, vq::INFLATE, 1)?;
        if let Err(rejected) = pipe.send(buf, batch.bytes(), perf) {
            let _ = locked.inflate_pool.push_within_capacity(rejected.buf);
            return Err(EAGAIN);
        }
        let buf = pipe.complete(perf, Counter::InflateWaitNs)?;
        let _ = locked.inflate_pool.push_within_capacity(buf);

        // 2nd step: deflate the old page (the balloon core frees it).
        let mut buf = locked.deflate_pool.pop().ok_or(EAGAIN)?;
        let mut batch = PfnBatch::new(shift, self.props.endian);
        // The old page was reachable when it was inflated.
        let _ = batch.push(buf.data(), old.pfn());
        let mut pipe = Pipeline::<DeflateBuffer>::new(&dev, vq::DEFLATE, 1)?;
        match pipe.send(buf, batch.bytes(), perf) {
            Ok(()) => {
                if let Ok(buf) = pipe.complete(perf, Counter::DeflateWaitNs) {
                    let _ = locked.deflate_pool.push_within_capacity(buf);
                }
            }
            Err(rejected) => {
                let _ = locked.deflate_pool.push_within_capacity(rejected.buf);
            }
        }
        Ok(())
    }
}
