// SPDX-License-Identifier: GPL-2.0

//! Buffers of the free page hint queue (`VIRTIO_BALLOON_F_FREE_PAGE_HINT`).
//!
//! While the host migrates the VM it may ask the guest for hints about free
//! memory it need not copy. The driver queues a command id (device-readable)
//! and then blocks of free pages of order `MAX_PAGE_ORDER`
//! (device-writable, though the device only records their addresses).

use crate::{
    bindings,
    virtio::Buffer, //
};
use core::ptr::NonNull;
use kernel::{
    bindings as kb,
    ffi::c_void,
    prelude::*, //
};

/// Order of a hinted block (C's `VIRTIO_BALLOON_HINT_BLOCK_ORDER`).
pub(crate) const HINT_BLOCK_ORDER: u32 = bindings::VB_MAX_PAGE_ORDER;
/// Pages in a hinted block.
pub(crate) const HINT_BLOCK_PAGES: usize = 1 << HINT_BLOCK_ORDER;

/// A block of `HINT_BLOCK_PAGES` free pages taken from the page allocator.
///
/// # Invariants
///
/// `self.0` is the head of an order-`HINT_BLOCK_ORDER` allocation we own.
pub(crate) struct HintBlock(NonNull<kb::page>);

// SAFETY: Pages we own can be freed from any thread.
unsafe impl Send for HintBlock {}

impl HintBlock {
    /// Allocates a block without retrying, warning or using reserves
    /// (C's `VIRTIO_BALLOON_FREE_PAGE_ALLOC_FLAG`); `None` once free memory
    /// has no such block left.
    pub(crate) fn alloc() -> Option<Self> {
        // SAFETY: Always safe to call.
        let page = unsafe { kb::alloc_pages(bindings::VB_GFP_HINT, HINT_BLOCK_ORDER) };
        // INVARIANT: A fresh allocation of that order.
        NonNull::new(page).map(Self)
    }

    fn bytes() -> usize {
        HINT_BLOCK_PAGES << kernel::page::PAGE_SHIFT
    }
}

impl Drop for HintBlock {
    fn drop(&mut self) {
        // SAFETY: By the type invariant we own this allocation of this order.
        unsafe { kb::__free_pages(self.0.as_ptr(), HINT_BLOCK_ORDER) };
    }
}

/// A buffer on the free page hint queue.
pub(crate) enum HintBuffer {
    /// A command id (`__virtio32`), device-readable.
    CmdId(KBox<u32>),
    /// A block of free pages, device-writable.
    Block(HintBlock),
}

/// Token tag of [`HintBuffer::Block`]: `struct page` pointers are aligned,
/// so bit 0 of a token is free.
const BLOCK_TAG: usize = 1;

// SAFETY:
// - `CmdId` covers the boxed `u32` we own; `Block` covers the pages of the block we own, which are
//   in the linear mapping (not highmem: `VB_GFP_HINT` has no `__GFP_HIGHMEM`).
// - Tokens are the box pointer (bit 0 clear: 4-byte aligned) or the page pointer with bit 0 set
//   (8-byte aligned), so `from_token` restores exactly the buffer `into_token` gave away.
unsafe impl Buffer for HintBuffer {
    fn region(&self) -> (NonNull<u8>, usize) {
        match self {
            HintBuffer::CmdId(b) => (NonNull::from(&**b).cast(), size_of::<u32>()),
            HintBuffer::Block(block) => {
                // SAFETY: The block's pages are allocated and in the linear mapping.
                let addr = unsafe { bindings::rust_vb_page_address(block.0.as_ptr()) };
                (
                    NonNull::new(addr.cast()).unwrap_or(NonNull::dangling()),
                    HintBlock::bytes(),
                )
            }
        }
    }

    fn into_token(self) -> NonNull<c_void> {
        match self {
            HintBuffer::CmdId(b) => {
                // SAFETY: `KBox::into_raw` never returns null.
                unsafe { NonNull::new_unchecked(KBox::into_raw(b).cast()) }
            }
            HintBuffer::Block(block) => {
                let page = block.0;
                core::mem::forget(block);
                page.map_addr(|a| a | BLOCK_TAG).cast()
            }
        }
    }

    unsafe fn from_token(token: NonNull<c_void>) -> Self {
        if token.addr().get() & BLOCK_TAG != 0 {
            let page = token
                .as_ptr()
                .map_addr(|a| a & !BLOCK_TAG)
                .cast::<kb::page>();
            // SAFETY: The token is a non-null page pointer with bit 0 set; clearing it gives the
            // page pointer back.
            let page = unsafe { NonNull::new_unchecked(page) };
            // INVARIANT: The token was made from a block we owned by `into_token`.
            HintBuffer::Block(HintBlock(page))
        } else {
            // SAFETY: By the safety requirements `token` came from `KBox::into_raw` of a `u32`.
            HintBuffer::CmdId(unsafe { KBox::from_raw(token.as_ptr().cast()) })
        }
    }
}

#[kunit_tests(virtio_balloon_rs_free_page_hint)]
mod tests {
    use super::*;

    #[test]
    fn command_id_token_round_trip() {
        let Ok(cmd) = KBox::new(0x1234_5678u32, GFP_KERNEL) else {
            return;
        };
        let buf = HintBuffer::CmdId(cmd);
        assert_eq!(buf.region().1, 4);
        let token = buf.into_token();
        // SAFETY: `token` comes from `into_token` just above, used once.
        match unsafe { HintBuffer::from_token(token) } {
            HintBuffer::CmdId(b) => assert_eq!(*b, 0x1234_5678),
            HintBuffer::Block(_) => assert!(false),
        }
    }

    #[test]
    fn block_token_round_trip() -> Result {
        let block = HintBlock::alloc().ok_or(ENOMEM)?;
        let page = block.0;
        let buf = HintBuffer::Block(block);
        assert_eq!(buf.region().1, HINT_BLOCK_PAGES << kernel::page::PAGE_SHIFT);
        let token = buf.into_token();
        assert!(token.addr().get() & BLOCK_TAG != 0);
        // SAFETY: `token` comes from `into_token` just above, used once.
        match unsafe { HintBuffer::from_token(token) } {
            HintBuffer::Block(b) => assert!(b.0 == page),
            HintBuffer::CmdId(_) => assert!(false),
        }
        Ok(())
    }
}
