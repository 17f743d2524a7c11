// SPDX-License-Identifier: GPL-2.0

//! Whole blocks of pages for a balloon: allocated in one piece, split into
//! [`BalloonPage`]s, or reported whole to a device that may discard them.

use super::{
    super::page::Node,
    BalloonPage, //
};
use crate::bindings;
use core::ptr::NonNull;
use kernel::{
    bindings as kb,
    prelude::*, //
};

/// A block of `2^order` contiguous pages allocated for a balloon in one
/// piece, not yet split into [`BalloonPage`]s. Dropping it frees it whole.
///
/// A balloon that takes whole host-huge-page-sized blocks lets the host free
/// whole huge pages, and keeps the host's huge pages whole for the memory the
/// guest keeps (the Hyper-V balloon takes 2 MiB blocks the same way).
///
/// # Invariants
///
/// `page` is the first page of a non-compound allocation of order `order`
/// that we own.
pub(crate) struct BalloonBlock {
    page: NonNull<kb::page>,
    order: u32,
}

// SAFETY: Pages we own can be handed to any thread.
unsafe impl Send for BalloonBlock {}

impl BalloonBlock {
    /// Allocates a block of `2^order` movable pages on `node` if its free
    /// memory has one at hand above the zone's low watermark: no reclaim,
    /// no compaction, no kswapd wakeup, no memory below the low watermark
    /// (which the guest's own allocations would then reclaim for), no
    /// emergency reserves, no other node. `None` otherwise.
    pub(crate) fn alloc(node: Node, order: u32) -> Option<Self> {
        if order > bindings::VB_MAX_PAGE_ORDER {
            return None;
        }
        // SAFETY: Always safe to call; `node` has memory (type invariant of `Node`).
        let page = unsafe { bindings::rust_vb_balloon_block_alloc(node.id(), order) };
        // INVARIANT: A fresh non-compound allocation of that order (no `__GFP_COMP`).
        NonNull::new(page).map(|page| Self { page, order })
    }

    /// Its number of pages.
    pub(crate) fn pages(&self) -> usize {
        1 << self.order
    }

    /// Splits the block into its pages, appended to `into` in ascending
    /// frame order (`split_page()`); gives it back if `into` lacks room.
    #[doc(alias = "split_page")]
    pub(crate) fn split_into(self, into: &mut KVec<BalloonPage>) -> Result<(), Self> {
        let n = self.pages();
        if into.capacity() - into.len() < n {
            return Err(self);
        }
        let (head, order) = (self.page, self.order);
        core::mem::forget(self);
        // SAFETY: `head` is the first page of a non-compound allocation of order `order` that we
        // own (type invariant); afterwards each of its pages carries one reference, ours.
        unsafe { bindings::split_page(head.as_ptr(), order) };
        for i in 0..n {
            // SAFETY: The block's `struct page`s are contiguous, as `split_page()` relies on.
            let page = unsafe { head.add(i) };
            // INVARIANT: One page of the split block: ours, on no list. There is room (checked).
            if let Err(e) = into.push_within_capacity(BalloonPage(page)) {
                drop(e);
            }
        }
        Ok(())
    }
}

impl Drop for BalloonBlock {
    fn drop(&mut self) {
        // SAFETY: By the type invariant we own this allocation of this order.
        unsafe { kb::__free_pages(self.page.as_ptr(), self.order) };
    }
}

/// Whole [`BalloonBlock`]s for a device that may overwrite or discard
/// them (free page reporting of ballooned blocks), with the scatterlist
/// entries that describe them, one entry per block. It owns the blocks:
/// dropping it frees them.
///
/// # Invariants
///
/// The first `blocks.len()` entries of `table` are initialized and describe
/// the blocks of `blocks`, in order, whole; when there are blocks, the last
/// of those entries ends the list (`sg_mark_end()`).
pub(crate) struct BlockReport {
    blocks: KVec<BalloonBlock>,
    table: KVec<kb::scatterlist>,
}

// SAFETY: It owns its blocks and entries, which any thread may use or free.
unsafe impl Send for BlockReport {}

impl BlockReport {
    /// An empty report with room for `n` blocks.
    pub(crate) fn new(n: usize) -> Result<KBox<Self>> {
        let mut table = KVec::with_capacity(n, GFP_KERNEL)?;
        while table.len() < n {
            table.push(pin_init::zeroed(), GFP_KERNEL)?;
        }
        // INVARIANT: No block, nothing to describe.
        Ok(KBox::new(
            Self {
                blocks: KVec::with_capacity(n, GFP_KERNEL)?,
                table,
            },
            GFP_KERNEL,
        )?)
    }

    /// Moves blocks from the end of `from` into the report, as many as it
    /// has room for and at most `max` in all, and describes them; returns
    /// how many it holds.
    pub(crate) fn fill(&mut self, from: &mut KVec<BalloonBlock>, max: usize) -> usize {
        while self.blocks.len() < self.table.len().min(max) {
            let Some(block) = from.pop() else {
                break;
            };
            // There is room: `blocks` has the capacity of `table`.
            if let Err(e) = self.blocks.push_within_capacity(block) {
                // Not reached; the block goes back.
                let _ = from.push_within_capacity(e.0);
                break;
            }
        }
        self.describe();
        self.blocks.len()
    }

    /// Describes the blocks held, one entry each, the last ending the list.
    fn describe(&mut self) {
        let n = self.blocks.len();
        if n > 0 {
            // SAFETY: `table` has at least `n` entries (`blocks` never holds more); this marks
            // entry `n - 1` as the end.
            unsafe { bindings::sg_init_table(self.table.as_mut_ptr(), n as u32) };
        }
        for (sg, block) in self.table.iter_mut().zip(self.blocks.iter()) {
            let len = (kernel::page::PAGE_SIZE << block.order) as u32;
            // SAFETY: `sg` is an initialized entry; the block is `len` bytes of pages we own.
            unsafe { bindings::sg_set_page(sg, block.page.as_ptr(), len, 0) };
        }
        // INVARIANT: The first `n` entries describe the `n` blocks, in order, the last ending the
        // list.
    }

    /// Gives every block back, appended to `into` within its capacity
    /// (what does not fit stays in the report).
    pub(crate) fn empty_into(&mut self, into: &mut KVec<BalloonBlock>) {
        while let Some(block) = self.blocks.pop() {
            if let Err(e) = into.push_within_capacity(block) {
                // No room: keep it.
                let _ = self.blocks.push_within_capacity(e.0);
                break;
            }
        }
        // What is left must end the list where it ends now.
        self.describe();
    }

    /// The entries and their number.
    pub(crate) fn raw(&self) -> (*mut kb::scatterlist, usize) {
        (self.table.as_ptr().cast_mut(), self.blocks.len())
    }
}
