// SPDX-License-Identifier: GPL-2.0

//! Blocks of free pages and NUMA nodes.

use crate::bindings;
use core::ptr::NonNull;
use kernel::bindings as kb;

/// A NUMA node with memory.
///
/// # Invariants
///
/// `self.0` is the id of a node that had memory when it was looked up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Node(i32);

impl Node {
    /// The nearest node with memory to the current CPU (`numa_mem_id()`).
    pub(crate) fn local() -> Node {
        // SAFETY: Always safe to call.
        let nid = unsafe { bindings::rust_vb_numa_mem_id() };
        // INVARIANT: `numa_mem_id()` is a node with memory.
        Node(nid)
    }

    /// The nodes that have memory, in order (`for_each_node_state(N_MEMORY)`).
    pub(crate) fn with_memory() -> impl Iterator<Item = Node> {
        let mut nid = -1;
        core::iter::from_fn(move || {
            // SAFETY: Reads the node state mask; always safe to call.
            nid = unsafe { bindings::rust_vb_next_memory_node(nid) };
            // INVARIANT: `nid` was in the node mask of nodes with memory.
            (0..bindings::VB_MAX_NUMNODES)
                .contains(&nid)
                .then_some(Node(nid))
        })
    }

    /// The nodes that have memory, the local one ([`Node::local`]) first,
    /// then the others in order: where an allocation for this CPU should
    /// look.
    pub(crate) fn local_first() -> impl Iterator<Item = Node> {
        let local = Node::local();
        core::iter::once(local).chain(Self::with_memory().filter(move |n| *n != local))
    }

    /// The node's id.
    pub(crate) fn id(self) -> i32 {
        self.0
    }
}

/// An owned block of `2^order` contiguous pages in the kernel's linear
/// mapping, taken from free memory only.
///
/// # Invariants
///
/// `page` is the head of an order-`order` allocation we own, not in high
/// memory.
pub(crate) struct PageBlock {
    page: NonNull<kb::page>,
    order: u32,
}

// SAFETY: Pages we own can be freed from any thread.
unsafe impl Send for PageBlock {}
// SAFETY: `&PageBlock` only reads the block's address.
unsafe impl Sync for PageBlock {}

impl PageBlock {
    /// Allocates a block of `2^order` pages if free memory has one: no
    /// reclaim, no retry, no warning, no emergency reserves (C's
    /// `__GFP_NORETRY | __GFP_NOWARN | __GFP_NOMEMALLOC`, no zone modifier).
    pub(crate) fn alloc_free(order: u32) -> Option<Self> {
        // SAFETY: Always safe to call.
        let page = unsafe { kb::alloc_pages(bindings::VB_GFP_FREE_BLOCK, order) };
        // INVARIANT: A fresh allocation of that order; the flags have no `__GFP_HIGHMEM`.
        NonNull::new(page).map(|page| Self { page, order })
    }

    /// Its memory: start and length in bytes.
    pub(crate) fn region(&self) -> (NonNull<u8>, usize) {
        // SAFETY: The block's pages are allocated and, not being high memory, mapped.
        let addr = unsafe { bindings::rust_vb_page_address(self.page.as_ptr()) };
        (
            NonNull::new(addr.cast()).unwrap_or(NonNull::dangling()),
            kernel::page::PAGE_SIZE << self.order,
        )
    }
}

impl Drop for PageBlock {
    fn drop(&mut self) {
        // SAFETY: By the type invariant we own this allocation of this order.
        unsafe { kb::__free_pages(self.page.as_ptr(), self.order) };
    }
}
