// SPDX-License-Identifier: GPL-2.0

//! The buffers the balloon sends to the host, and the pools that keep them
//! so that deflating (on OOM too) never allocates.

use crate::{
    logic::{
        pfn::{
            PfnArray,
            PFNS_PER_BUFFER, //
        },
        stats::StatsArray,
    },
    mm::balloon::BalloonPage,
    virtio::Tagged,
};
use kernel::prelude::*;

/// A PFN buffer for the inflate queue: the pages it names are on the
/// balloon list already.
pub(super) type InflateBuffer = KBox<PfnArray>;

/// A PFN buffer for the deflate queue, carrying the pages it names: they
/// are freed only once the host has acknowledged the buffer.
pub(super) type DeflateBuffer = Tagged<PfnArray, DeflatePages>;

/// A statistics buffer for the stats queue.
pub(super) type StatsBuffer = KBox<StatsArray>;

/// A new inflate buffer.
pub(super) fn inflate_buffer() -> Result<InflateBuffer> {
    Ok(KBox::new([0; PFNS_PER_BUFFER], GFP_KERNEL)?)
}

/// A new deflate buffer, with room for the pages of one buffer.
pub(super) fn deflate_buffer() -> Result<DeflateBuffer> {
    Tagged::new([0; PFNS_PER_BUFFER], DeflatePages::new()?, GFP_KERNEL)
}

/// The pages a deflate buffer names.
///
/// They leave the balloon when the buffer is sent, and go back to the page
/// allocator only through [`DeflatePages::release`], once the host has
/// returned the buffer (`VIRTIO_BALLOON_F_MUST_TELL_HOST`: the host must
/// know before the guest reuses a page). A buffer the host never returned
/// is dropped when the queue is deleted; its pages are then leaked, never
/// reused.
pub(super) struct DeflatePages(KVec<BalloonPage>);

impl DeflatePages {
    fn new() -> Result<Self> {
        Ok(Self(KVec::with_capacity(PFNS_PER_BUFFER, GFP_KERNEL)?))
    }

    /// The pages, to fill (within the capacity of one buffer) or read.
    pub(super) fn pages(&mut self) -> &mut KVec<BalloonPage> {
        &mut self.0
    }

    /// The host returned the buffer: free the pages, in one batch.
    pub(super) fn release(&mut self) {
        BalloonPage::release_all(&mut self.0);
    }
}

impl Drop for DeflatePages {
    fn drop(&mut self) {
        let n = self.0.len();
        if n == 0 {
            return;
        }
        for page in self.0.drain_all() {
            page.leak();
        }
        pr_warn!("{n} deflated pages the host never acknowledged are leaked (MUST_TELL_HOST)\n");
    }
}

/// Buffers not on a queue, ready to be sent.
///
/// Taking never allocates, so it is safe under the balloon lock and on the
/// OOM path; [`BufferPool::refill`] allocates and runs without locks.
pub(super) struct BufferPool<B> {
    free: KVec<B>,
}

impl<B> BufferPool<B> {
    /// A pool of `n` buffers made by `make`.
    pub(super) fn new(n: usize, make: impl FnMut() -> Result<B>) -> Result<Self> {
        let mut pool = Self {
            free: KVec::with_capacity(n, GFP_KERNEL)?,
        };
        pool.refill(make)?;
        Ok(pool)
    }

    /// A buffer, if one is free.
    pub(super) fn take(&mut self) -> Option<B> {
        self.free.pop()
    }

    /// Gives a buffer back. The pool only ever holds the buffers it made,
    /// so there is always room.
    pub(super) fn put(&mut self, buf: B) {
        if let Err(e) = self.free.push_within_capacity(buf) {
            drop(e);
        }
    }

    /// Buffers the pool is missing (lost with a deleted queue).
    pub(super) fn missing(&self) -> usize {
        self.free.capacity() - self.free.len()
    }

    /// Makes the missing buffers with `make`. Allocates: call it without
    /// the balloon lock.
    pub(super) fn refill(&mut self, mut make: impl FnMut() -> Result<B>) -> Result {
        while self.missing() > 0 {
            self.put(make()?);
        }
        Ok(())
    }
}
