// SPDX-License-Identifier: GPL-2.0

//! What the balloon holds: its pages, on two of the kernel's balloon lists
//! (C has one, `vb_dev_info`).
//!
//! Inflating takes whole blocks of [`BLOCK_ORDER`] (2 MiB, the host's huge
//! page size) while the guest's free memory has them at hand
//! ([`super::inflate`]); their pages go on the *blocks* list, the pages
//! taken one at a time on the *singles* list. Deflating empties the blocks
//! list first: those pages go back to the page allocator block by block, so
//! the guest regains whole huge pages (and its THPs), and the host
//! repopulates whole huge pages rather than pieces of many.
//!
//! Both lists count in `NR_BALLOON_PAGES` and, without deflate-on-OOM,
//! leave `MemTotal`; compaction migrates pages of either through the same
//! handler ([`super::migrate`]). A page migrated out of a block is replaced
//! on the blocks list by its new page: it is then deflated early, which
//! costs nothing.

use super::host::Host;
use crate::mm::balloon::{
    BalloonDevInfo,
    BalloonPage, //
};
use kernel::{
    prelude::*,
    sync::Arc, //
};

/// Order of the blocks inflating takes whole: 2 MiB, the host huge page
/// size on x86-64 and 4 KiB-page arm64 (order 9 with 4 KiB pages, 7 with
/// 16 KiB, 5 with 64 KiB), and at most the page allocator's largest order.
pub(super) const BLOCK_ORDER: u32 = crate::logic::pfn::host_huge_order(
    kernel::page::PAGE_SHIFT as u32,
    crate::bindings::VB_MAX_PAGE_ORDER,
);

/// Guest pages in a block.
pub(super) const BLOCK_PAGES: usize = 1 << BLOCK_ORDER;

/// Balloon pages (4 KiB, the device's unit for `num_pages`, `actual` and
/// PFNs) per guest page: 1 with 4 KiB pages, 4 with 16 KiB, 16 with 64 KiB.
pub(super) const BALLOON_PAGES_PER_PAGE: u32 =
    crate::logic::pfn::pages_per_page(kernel::page::PAGE_SHIFT as u32);
const _: () = assert!(BALLOON_PAGES_PER_PAGE > 0);

/// The kernel's list of the pages a balloon holds, whose migration goes
/// through the host.
type BalloonList = BalloonDevInfo<Arc<Host>>;

/// Which list pages go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ListKind {
    /// Pages of whole blocks.
    Blocks,
    /// Pages taken one at a time.
    Singles,
}

/// The balloon's pages.
#[pin_data]
pub(super) struct Lists {
    /// Pages of whole blocks: deflated first.
    #[pin]
    blocks: BalloonList,
    /// Pages taken one at a time.
    #[pin]
    singles: BalloonList,
}

impl Lists {
    /// Two empty lists whose pages `host` migrates; with
    /// `adjust_managed_page_count`, ballooned pages leave `MemTotal`.
    pub(super) fn new(adjust_managed_page_count: bool, host: Arc<Host>) -> impl PinInit<Self> {
        pin_init!(Self {
            blocks <- BalloonDevInfo::new(adjust_managed_page_count, host.clone()),
            singles <- BalloonDevInfo::new(adjust_managed_page_count, host),
        })
    }

    /// Puts all of `pages` on the `kind` list, leaving the vector empty.
    pub(super) fn enqueue(&self, kind: ListKind, pages: &mut KVec<BalloonPage>) {
        match kind {
            ListKind::Blocks => self.blocks.enqueue(pages),
            ListKind::Singles => self.singles.enqueue(pages),
        }
    }

    /// Takes up to `n` pages off the lists, the blocks list first,
    /// appending them to `into` within its capacity. Returns the list the
    /// pages would go back to (blocks if any came from there, so that pages
    /// the host refused keep their place at the front of a deflate).
    /// Fewer than asked if the rest is isolated for migration right now.
    pub(super) fn dequeue(&self, into: &mut KVec<BalloonPage>, n: usize) -> ListKind {
        let got = self.blocks.dequeue(into, n);
        self.singles.dequeue(into, n - got);
        if got > 0 {
            ListKind::Blocks
        } else {
            ListKind::Singles
        }
    }
}
