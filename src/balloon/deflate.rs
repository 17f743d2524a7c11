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
    host::Ballooned,
    lists::BALLOON_PAGES_PER_PAGE,
    perf::{
        Counter,
        Stopwatch, //
    },
    pipeline::Pipeline,
    round::{
        Round,
        RoundContext,
        Stop, //
    },
};
use crate::logic::{
    pfn::{
        PfnBatch,
        PFNS_PER_BUFFER, //
    },
    target::batch_pages,
};
use kernel::prelude::*;

/// Frees the pages of a buffer the host returned, in one batch, and puts
/// the buffer back in the pool; returns how many balloon pages that was.
fn release(ctx: &RoundContext<'_>, b: &mut Ballooned, mut buf: DeflateBuffer) -> u32 {
    let sw = Stopwatch::start();
    let n = buf.ctx().pages().len();
    buf.ctx().release();
    sw.stop(ctx.host.perf(), Counter::DeflateFreeNs);
    b.deflate_buffers.put(buf);
    n as u32 * BALLOON_PAGES_PER_PAGE
}

/// Takes up to `left` balloon pages off the lists into `buf` and queues it
/// on `pipe`, without notifying the host. Returns the balloon pages queued:
/// 0 if every page left is isolated for migration right now or the ring is
/// full of earlier buffers; [`Stop::Host`] if the queue refused the buffer.
/// Either way a buffer not queued goes back to the pool, its pages back on
/// their list.
fn queue_buffer(
    ctx: &RoundContext<'_>,
    b: &mut Ballooned,
    pipe: &mut Pipeline<'_, DeflateBuffer>,
    mut buf: DeflateBuffer,
    left: u32,
) -> Result<u32, Stop> {
    let want = batch_pages(left, BALLOON_PAGES_PER_PAGE, PFNS_PER_BUFFER);
    let mut batch = PfnBatch::new(
        kernel::page::PAGE_SHIFT as u32,
        ctx.host.negotiated().endian,
    );
    let (pfns, pages) = buf.parts();
    // One round of the balloon core's lock for the whole buffer. The
    // balloon holds `num_pages`, so fewer pages than asked means the rest
    // is isolated for migration right now.
    let home = ctx.lists.dequeue(pages.pages(), want);
    for page in pages.pages().iter() {
        // Every ballooned page was reachable when inflated.
        let _ = batch.push(pfns, page.pfn());
    }
    if batch.is_empty() {
        b.deflate_buffers.put(buf);
        return Ok(0);
    }
    let n = batch.len() as u32;
    match pipe.queue(buf, batch.bytes()) {
        Ok(()) => {
            b.num_pages -= n;
            ctx.host.perf().add(Counter::DeflatePages, u64::from(n));
            ctx.host.perf().add(Counter::DeflateBuffers, 1);
            Ok(n)
        }
        Err(mut rejected) => {
            // The host was not told: the pages stay ballooned.
            ctx.lists.enqueue(home, rejected.buf.ctx().pages());
            b.deflate_buffers.put(rejected.buf);
            if rejected.err == ENOSPC && pipe.in_flight() > 0 {
                // The ring is full of earlier buffers: wait for one.
                return Ok(0);
            }
            dev_warn!(
                ctx.dev.as_ref(),
                "deflate queue refused PFNs: {:?}\n",
                rejected.err
            );
            Err(Stop::Host)
        }
    }
}

/// Deflates by up to `deflate_round` buffers of `num` balloon pages in
/// all, up to `deflate_depth` of them in flight, waiting at most
/// `ctx.wait` for each (C's `leak_balloon()`), then, if it told the host
/// anything, writes `actual`. Allocates nothing.
///
/// The caller holds the balloon lock (`b`). `moved` is what left the
/// balloon (the host was told), `acked` what the host returned and the
/// guest got back; buffers the host did not return in time stay queued
/// with their pages.
pub(super) fn leak_balloon(ctx: &RoundContext<'_>, b: &mut Ballooned, num: u32) -> Round {
    // We can't release more pages than taken.
    let num = num.min(b.num_pages);
    if num == 0 {
        return Round::NOTHING;
    }
    let depth = ctx.host.batching().deflate_depth;
    let mut pipe = match ctx.pipeline::<DeflateBuffer>(depth) {
        Ok(pipe) => pipe,
        Err(stop) => return Round::stopped(stop),
    };
    // A round ends after `deflate_round` buffers, so that `actual` follows
    // and a new target is seen every few dozen MiB, as on the inflate side.
    let mut budget = ctx.host.batching().deflate_round;
    let mut round = Round::NOTHING;
    loop {
        while pipe.has_room() && round.moved < num && budget > 0 && round.stop.is_none() {
            let Some(buf) = b.deflate_buffers.take() else {
                break;
            };
            budget -= 1;
            match queue_buffer(ctx, b, &mut pipe, buf, num - round.moved) {
                Ok(0) => break,
                Ok(n) => round.moved += n,
                Err(stop) => round.stop = Some(stop),
            }
        }
        pipe.kick();
        if pipe.in_flight() == 0 {
            break;
        }
        // Only once the host returns a buffer are its pages freed. The last
        // pass collects everything still in flight.
        let last = round.moved >= num || budget == 0 || round.stop.is_some();
        let returned = if last {
            pipe.drain(|buf| round.acked += release(ctx, b, buf))
        } else {
            pipe.complete()
                .map(|buf| round.acked += release(ctx, b, buf))
        };
        if let Err(stop) = returned {
            round.stop = Some(stop);
            break;
        }
        if last {
            break;
        }
    }
    ctx.host.publish_actual(ctx.dev, b);
    round
}
