// SPDX-License-Identifier: GPL-2.0

//! Deflating: giving pages back to the guest (C's `leak_balloon()`).
//!
//! Pages leave the balloon list into the buffer that names them and are
//! freed only when the host has returned that buffer: the host always hears
//! of a page before the guest reuses it (`VIRTIO_BALLOON_F_MUST_TELL_HOST`;
//! C tells the host in every case too). Up to `depth` buffers are in flight.

use super::{
    device::{
        Balloon,
        DeflateBuffer, //
    },
    perf::{
        Counter,
        Stopwatch, //
    },
    queue::Pipeline,
    vq,
};
use crate::{
    kext::balloon::BalloonPage,
    logic::{
        pfn::{
            PfnBatch,
            PFNS_PER_BUFFER, //
        },
        target::batch_pages,
    },
    virtio,
};
use kernel::{
    device::Bound,
    prelude::*, //
};

impl Balloon {
    /// Frees the pages `buf` carries, in one batch.
    fn release_pages(&self, buf: &mut DeflateBuffer) {
        let sw = Stopwatch::start();
        BalloonPage::release_all(buf.ctx());
        sw.stop(&self.perf, Counter::DeflateFreeNs);
    }

    /// Deflates by up to `2 * depth` buffers of `num` balloon pages in all,
    /// up to `depth` of them in flight; returns how many balloon pages were
    /// given back. Allocates nothing
    /// unless a vanished queue took buffers with it.
    pub(super) fn leak_balloon(&self, dev: &virtio::Device<Bound>, num: u32) -> u32 {
        let per = self.props.per_page;
        let mut locked = self.locked.lock();
        // We can't release more pages than taken.
        let num = num.min(locked.num_pages);
        if num == 0 {
            return 0;
        }
        let mut pipe = match Pipeline::<DeflateBuffer>::new(dev, vq::DEFLATE, self.props.depth) {
            Ok(pipe) => pipe,
            Err(e) => {
                dev_warn!(dev.as_ref(), "deflate queue unavailable: {:?}\n", e);
                return 0;
            }
        };
        let shift = kernel::page::PAGE_SHIFT as u32;
        // A round ends after `2 * depth` buffers, so that `actual` follows
        // and a new target is seen every few dozen MiB, as the inflate side.
        let mut budget = 2 * self.props.depth;
        let mut sent = 0u32;
        loop {
            while pipe.has_room() && sent < num && budget > 0 {
                budget -= 1;
                let buf = locked.take_deflate_buffer();
                let Some(mut buf) = buf else {
                    break;
                };
                let mut batch = PfnBatch::new(shift, self.props.endian);
                let want = batch_pages(num - sent, per, PFNS_PER_BUFFER);
                // One round of the balloon lock for the whole buffer. The
                // balloon holds `num_pages`, so fewer pages than asked means
                // the rest is isolated for migration right now.
                self.pages.dequeue_many(buf.ctx(), want);
                let (pfns, pages) = buf.parts();
                for page in pages.iter() {
                    // Every ballooned page was reachable when inflated.
                    let _ = batch.push(pfns, page.pfn());
                }
                if batch.is_empty() {
                    let _ = locked.deflate_pool.push_within_capacity(buf);
                    break;
                }
                locked.num_pages -= batch.len() as u32;
                sent += batch.len() as u32;
                self.perf.add(Counter::DeflatePages, batch.len() as u64);
                self.perf.add(Counter::DeflateBuffers, 1);
                if let Err(mut rejected) = pipe.send(buf, batch.bytes(), &self.perf) {
                    // The host cannot be told: give the pages back anyway,
                    // as C does.
                    dev_warn!(
                        dev.as_ref(),
                        "deflate queue refused PFNs: {:?}\n",
                        rejected.err
                    );
                    self.release_pages(&mut rejected.buf);
                    let _ = locked.deflate_pool.push_within_capacity(rejected.buf);
                    break;
                }
            }
            if pipe.in_flight() == 0 {
                break;
            }
            match pipe.complete(&self.perf, Counter::DeflateWaitNs) {
                Ok(mut buf) => {
                    // Only now give the pages back to the page allocator.
                    self.release_pages(&mut buf);
                    let _ = locked.deflate_pool.push_within_capacity(buf);
                }
                // The queue went away with the buffer, which freed its pages.
                Err(e) => dev_warn!(dev.as_ref(), "deflate queue lost a buffer: {:?}\n", e),
            }
        }
        sent
    }
}
