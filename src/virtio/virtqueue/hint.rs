// SPDX-License-Identifier: GPL-2.0

//! Free page hints: memory named to the device without lending it.

use crate::mm::PageBlock;
use core::ptr::NonNull;

/// A block of free memory named to a balloon device's free page hint queue
/// ([`Virtqueue::add_hint`](super::Virtqueue::add_hint)).
///
/// The virtio spec (5.5.6.8) lets the driver reuse hinted pages while the
/// hint is still queued: the device only records them, and may discard the
/// content of a page the guest has not written since the hint, which is
/// content no user of free memory relies on. So a hint does not own its
/// memory; the [`PageBlock`] it was made from may be freed at any time.
///
/// # Invariants
///
/// `start..start + len` was the memory of a [`PageBlock`] (linear mapping,
/// page aligned, so bit 0 of `start` is clear) when the hint was made.
pub struct PageHint {
    start: NonNull<u8>,
    len: usize,
}

impl PageHint {
    /// A hint naming the memory of `block`.
    pub(crate) fn of(block: &PageBlock) -> Self {
        let (start, len) = block.region();
        // INVARIANT: The block's memory, page aligned in the linear mapping (`PageBlock`).
        Self { start, len }
    }

    pub(super) fn region(&self) -> (NonNull<u8>, usize) {
        (self.start, self.len)
    }
}
