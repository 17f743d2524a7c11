// SPDX-License-Identifier: GPL-2.0

//! Balloon page migration on behalf of compaction (C's
//! `virtballoon_migratepage()`).
//!
//! Ballooned pages stay movable. When compaction wants one of them, the
//! balloon core isolates it and asks for a swap with a fresh page: inflate
//! the new page, then deflate the old one, each with one PFN buffer round
//! trip; the core then swaps the pages on the list.
//!
//! Once the host has been told that the new page is ballooned, the swap
//! never fails (as in C): if the old page cannot be deflated, it is kept
//! out of use for good rather than reused behind the host's back.

use super::{
    buffers::{
        BufferPool,
        DeflateBuffer,
        InflateBuffer, //
    },
    host::Host,
    pipeline::{
        PfnQueue,
        Pipeline, //
    },
};
use crate::{
    logic::pfn::PfnBatch,
    mm::balloon::{
        MigratePage,
        Migrated,
        PageRef, //
    },
};
use core::num::NonZeroUsize;

impl MigratePage for Host {
    fn migrate_page(&self, new: PageRef<'_>, old: PageRef<'_>) -> Migrated {
        // Never waits: the size work holds the lock while it waits for the
        // host, and the OOM notifier goes first.
        let Some(mut b) = self.try_lock_or_yield() else {
            return Migrated::Retry;
        };
        if self.is_marked_unresponsive() {
            return Migrated::Retry;
        }
        let Some(dev) = self.binding().try_access() else {
            return Migrated::Retry;
        };
        let one = NonZeroUsize::MIN;
        let (Ok(mut inflate), Ok(mut deflate)) = (
            Pipeline::<InflateBuffer>::new(&dev, self, one, self.timeout()),
            Pipeline::<DeflateBuffer>::new(&dev, self, one, self.timeout()),
        ) else {
            return Migrated::Retry;
        };
        // Both buffers first: after step 1 there is no turning back.
        let Some(mut ibuf) = b.inflate_buffers.take() else {
            return Migrated::Retry;
        };
        let Some(mut dbuf) = b.deflate_buffers.take() else {
            b.inflate_buffers.put(ibuf);
            return Migrated::Retry;
        };
        let endian = self.negotiated().endian;
        let shift = kernel::page::PAGE_SHIFT as u32;

        // 1st step: inflate the new page.
        let mut batch = PfnBatch::new(shift, endian);
        if batch.push(&mut ibuf, new.pfn()).is_err() {
            // Beyond 32-bit balloon PFNs: it cannot be ballooned.
            b.inflate_buffers.put(ibuf);
            b.deflate_buffers.put(dbuf);
            return Migrated::Retry;
        }
        if let Err(rejected) = inflate.queue(ibuf, batch.bytes()) {
            b.inflate_buffers.put(rejected.buf);
            b.deflate_buffers.put(dbuf);
            return Migrated::Retry;
        }
        if round_trip(&mut inflate, &mut b.inflate_buffers) {
            // 2nd step: deflate the old page (the balloon core frees it).
            let mut batch = PfnBatch::new(shift, endian);
            // The old page was reachable when it was inflated.
            let _ = batch.push(dbuf.data(), old.pfn());
            match deflate.queue(dbuf, batch.bytes()) {
                Ok(()) => {
                    if round_trip(&mut deflate, &mut b.deflate_buffers) {
                        return Migrated::Done;
                    }
                }
                Err(rejected) => b.deflate_buffers.put(rejected.buf),
            }
        } else {
            b.deflate_buffers.put(dbuf);
        }
        // The host may hold on to the old page: keep it out of use.
        old.leak();
        Migrated::Done
    }
}

/// Notifies the host of the one buffer just queued on `pipe` and takes it
/// back into `pool`; false (and the host marked unresponsive) if it does
/// not come back in time.
fn round_trip<B: PfnQueue>(pipe: &mut Pipeline<'_, B>, pool: &mut BufferPool<B>) -> bool {
    pipe.kick();
    pipe.complete().map(|buf| pool.put(buf)).is_ok()
}
