// SPDX-License-Identifier: GPL-2.0

//! Deflating: giving pages back to the guest (C's `leak_balloon()`).
//!
//! Pages leave the balloon list into the buffer that names them and are
//! freed only when the host has returned that buffer: the host always hears
//! of a page before the guest reuses it (`VIRTIO_BALLOON_F_MUST_TELL_HOST`;
//! C tells the host in every case too). Up to `deflate_depth` buffers are
//! in flight; a buffer the queue refuses puts its pages back on the list.

use super::{
    buffers::DeflateBuffer,
    device::{
        Round,
        Stop, //
    },
    host::{
        Ballooned,
        Host,
        Pipeline, //
    },
    lists::{
        Lists,
        BALLOON_PAGES_PER_PAGE, //
    },
    perf::{
        Counter,
        Stopwatch, //
    },
    vq, //
};
use crate::{
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
    prelude::*,
    time::Delta, //
};

/// Frees the pages of a buffer the host returned, in one batch, and puts
/// the buffer back in the pool.
fn release(host: &Host, b: &mut Ballooned, mut buf: DeflateBuffer) -> u32 {
    let sw = Stopwatch::start();
    let n = buf.ctx().pages().len();
    buf.ctx().release();
    sw.stop(host.perf(), Counter::DeflateFreeNs);
    b.deflate_buffers.put(buf);
    n as u32 * BALLOON_PAGES_PER_PAGE
}

/// Deflates by up to `2 * deflate_depth` buffers of `num` balloon pages in
/// all, up to `deflate_depth` of them in flight, waiting at most `wait`
/// for each (C's `leak_balloon()`). Allocates nothing.
///
/// The caller holds the balloon lock (`b`). `moved` is what left the
/// balloon (the host was told), `acked` what the host returned and the
/// guest got back; buffers the host did not return in time stay queued
/// with their pages.
pub(super) fn leak_balloon(
    host: &Host,
    b: &mut Ballooned,
    lists: &Lists,
    dev: &virtio::Device<Bound>,
    num: u32,
    wait: Delta,
) -> Round {
    let depth = host.batching().deflate_depth;
    // We can't release more pages than taken.
    let num = num.min(b.num_pages);
    if num == 0 {
        return Round::NOTHING;
    }
    let mut pipe = match Pipeline::<DeflateBuffer>::new(
        dev,
        vq::DEFLATE,
        depth,
        wait,
        host.perf(),
        Counter::DeflateWaitNs,
    ) {
        Ok(pipe) => pipe,
        Err(e) => {
            dev_warn!(dev.as_ref(), "deflate queue unavailable: {:?}\n", e);
            return Round {
                stop: Some(Stop::Host),
                ..Round::NOTHING
            };
        }
    };
    let shift = kernel::page::PAGE_SHIFT as u32;
    // A round ends after `2 * depth` buffers, so that `actual` follows and
    // a new target is seen every few dozen MiB, as on the inflate side.
    let mut budget = 2 * depth.get();
    let mut round = Round::NOTHING;
    loop {
        while pipe.has_room() && round.moved < num && budget > 0 && round.stop.is_none() {
            let Some(mut buf) = b.deflate_buffers.take() else {
                break;
            };
            budget -= 1;
            let want = batch_pages(num - round.moved, BALLOON_PAGES_PER_PAGE, PFNS_PER_BUFFER);
            let mut batch = PfnBatch::new(shift, host.negotiated().endian);
            let (pfns, pages) = buf.parts();
            // One round of the balloon core's lock for the whole buffer. The
            // balloon holds `num_pages`, so fewer pages than asked means the
            // rest is isolated for migration right now.
            let home = lists.dequeue(pages.pages(), want);
            for page in pages.pages().iter() {
                // Every ballooned page was reachable when inflated.
                let _ = batch.push(pfns, page.pfn());
            }
            if batch.is_empty() {
                b.deflate_buffers.put(buf);
                break;
            }
            let n = batch.len() as u32;
            b.num_pages -= n;
            match pipe.queue(buf, batch.bytes()) {
                Ok(()) => {
                    round.moved += n;
                    host.perf().add(Counter::DeflatePages, u64::from(n));
                    host.perf().add(Counter::DeflateBuffers, 1);
                }
                Err(mut rejected) => {
                    // The host was not told: the pages stay ballooned.
                    lists.enqueue(home, rejected.buf.ctx().pages());
                    b.num_pages += n;
                    b.deflate_buffers.put(rejected.buf);
                    if rejected.err == ENOSPC && pipe.in_flight() > 0 {
                        // The ring is full of earlier buffers: wait for one.
                        break;
                    }
                    dev_warn!(
                        dev.as_ref(),
                        "deflate queue refused PFNs: {:?}\n",
                        rejected.err
                    );
                    round.stop = Some(Stop::Host);
                }
            }
        }
        pipe.kick();
        if pipe.in_flight() == 0 {
            break;
        }
        match pipe.complete() {
            // Only now give the pages back to the page allocator.
            Ok(buf) => round.acked += release(host, b, buf),
            Err(e) => {
                host.unresponsive(dev, "deflate", e, pipe.timeout());
                round.stop = Some(Stop::Host);
                break;
            }
        }
        if round.moved >= num || budget == 0 || round.stop.is_some() {
            // Collect what is still in flight, then stop.
            while pipe.in_flight() > 0 {
                match pipe.complete() {
                    Ok(buf) => round.acked += release(host, b, buf),
                    Err(e) => {
                        host.unresponsive(dev, "deflate", e, pipe.timeout());
                        round.stop = Some(Stop::Host);
                        break;
                    }
                }
            }
            break;
        }
    }
    round
}
