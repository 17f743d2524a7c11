// SPDX-License-Identifier: GPL-2.0

//! Balloon page lists (`include/linux/balloon.h`, `mm/balloon.c`).
//!
//! A [`BalloonDevInfo`] is the kernel's book-keeper of the pages a balloon
//! holds: pages are linked through their own `lru` field (no per-page
//! metadata of the driver's), counted in `NR_BALLOON_PAGES`, optionally
//! taken out of the managed page count, and, with `CONFIG_BALLOON_MIGRATION`,
//! stay movable: compaction may ask the driver to swap a ballooned page for
//! another ([`MigratePage`]).
//!
//! A [`BalloonPage`] is a page allocated for the balloon that is not on the
//! list: freshly allocated, or dequeued to be freed. Dropping it frees it.

use super::embed::{
    is_field_of,
    owner_of,
    Embeds, //
};
use crate::bindings;
use core::{
    marker::{
        PhantomData,
        PhantomPinned, //
    },
    mem::MaybeUninit,
    ptr::NonNull,
};
use kernel::{
    bindings as kb,
    ffi::c_int,
    prelude::*,
    sync::Arc,
    types::Opaque, //
};

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
}

/// A page owned by the balloon driver that is not on a balloon list.
///
/// # Invariants
///
/// `self.0` is a page from `balloon_page_alloc()` (or dequeued from a
/// balloon list) on which we own the one reference, not on any list.
#[repr(transparent)]
pub(crate) struct BalloonPage(NonNull<kb::page>);

// SAFETY: A page we own can be handed to any thread.
unsafe impl Send for BalloonPage {}

impl BalloonPage {
    /// Allocates up to `n` (at most 256) movable pages for the balloon with
    /// `balloon_page_alloc()`'s flags in one call (`alloc_pages_bulk()`),
    /// appending them to `into` within its capacity. Returns how many were
    /// allocated.
    ///
    /// Fewer than asked does not mean memory is short: the bulk allocator
    /// only takes pages from the per-CPU free lists of a local zone that is
    /// above its low watermark plus `n`; otherwise (a zone full of page
    /// cache, a contended per-CPU lock, a short local NUMA node) it
    /// allocates a single page through the normal path, which may reclaim.
    /// Zero means that single allocation failed too.
    ///
    /// `node` is the NUMA node to prefer; `None` is the local one. The bulk
    /// allocator takes from another node only one page at a time.
    pub(crate) fn alloc_bulk(into: &mut KVec<BalloonPage>, n: usize, node: Option<Node>) -> usize {
        const MAX: usize = 256;
        let n = n.min(into.capacity() - into.len()).min(MAX);
        if n == 0 {
            return 0;
        }
        let mut raw = [core::ptr::null_mut::<kb::page>(); MAX];
        let nid = node.map_or(bindings::VB_NUMA_NO_NODE, |n| n.0);
        // SAFETY: `raw` has room for `n` page pointers, all null, which `alloc_pages_bulk` fills
        // with pages we then own; `nid` is a node with memory or `NUMA_NO_NODE`.
        unsafe {
            bindings::rust_vb_balloon_pages_bulk(nid, n as kernel::ffi::c_ulong, raw.as_mut_ptr())
        };
        let mut got = 0;
        for page in raw.iter().take(n).filter_map(|p| NonNull::new(*p)) {
            // INVARIANT: A freshly allocated page we own. It fits: `n` is
            // within the spare capacity.
            if let Err(e) = into.push_within_capacity(BalloonPage(page)) {
                drop(e);
            }
            got += 1;
        }
        got
    }

    /// Allocates one movable page for the balloon (`balloon_page_alloc()`,
    /// what the C driver allocates with): the page allocator may reclaim
    /// (once: `__GFP_NORETRY`) and compact to find it, but never dips into
    /// emergency reserves. `None` when even that fails.
    pub(crate) fn alloc() -> Option<BalloonPage> {
        // SAFETY: Always safe to call; a returned page is ours.
        let page = unsafe { bindings::balloon_page_alloc() };
        // INVARIANT: A freshly allocated page we own, on no list.
        NonNull::new(page).map(BalloonPage)
    }

    /// The page's frame number, in guest pages.
    pub(crate) fn pfn(&self) -> u64 {
        page_pfn(self.0)
    }

    /// Frees all of `pages` in one batch (`release_pages()`), leaving the
    /// vector empty.
    pub(crate) fn release_all(pages: &mut KVec<BalloonPage>) {
        let n = pages.len();
        if n == 0 {
            return;
        }
        // CAST: `BalloonPage` is a transparent wrapper of a non-null `struct page` pointer.
        let arg = bindings::release_pages_arg {
            pages: pages.as_mut_ptr().cast::<*mut kb::page>(),
        };
        // SAFETY: The array holds `n` pages on each of which we own one reference (type
        // invariant); `release_pages` drops those references, freeing the pages.
        unsafe { bindings::release_pages(arg, n as i32) };
        // The references are gone: take the elements out without dropping them.
        for page in pages.drain_all() {
            core::mem::forget(page);
        }
    }

    fn into_raw(self) -> *mut kb::page {
        let page = self.0.as_ptr();
        core::mem::forget(self);
        page
    }
}

impl Drop for BalloonPage {
    fn drop(&mut self) {
        // SAFETY: By the type invariant we own the page's reference; dropping it frees the page.
        unsafe { bindings::put_page(self.0.as_ptr()) };
    }
}

fn page_pfn(page: NonNull<kb::page>) -> u64 {
    // SAFETY: `page` is a valid `struct page`.
    unsafe { bindings::rust_vb_page_to_pfn(page.as_ptr()) as u64 }
}

/// A page the balloon core passes to [`MigratePage::migrate_page`], valid
/// for the duration of the call.
pub(crate) struct PageRef<'a>(NonNull<kb::page>, PhantomData<&'a kb::page>);

impl PageRef<'_> {
    /// The page's frame number, in guest pages.
    pub(crate) fn pfn(&self) -> u64 {
        page_pfn(self.0)
    }
}

/// Balloon page migration on behalf of compaction.
pub(crate) trait MigratePage: Sync {
    /// Called with `old` isolated from the balloon and `new` a fresh page:
    /// tell the host that `new` is now ballooned and `old` is not.
    ///
    /// Return `Ok(())` once both are done; the balloon core then puts `new`
    /// on the list and frees `old`. Return [`EAGAIN`] to have compaction put
    /// `old` back and retry later, [`ENOENT`] if `old` was deflated but `new`
    /// could not be inflated.
    fn migrate_page(&self, new: PageRef<'_>, old: PageRef<'_>) -> Result;
}

/// A balloon's page list (`struct balloon_dev_info`), embedded in its owner `T`.
///
/// # Invariants
///
/// `raw` was initialized by `balloon_devinfo_init()`; while pages are on
/// its list or isolated, their `private` field points to `raw`, so it stays
/// pinned, inside a live `T`, until they are gone (ensured by `Drop`). `raw`
/// is the first field of this `repr(C)` struct, so its address is the
/// address of the `BalloonDevInfo`.
#[repr(C)]
#[pin_data(PinnedDrop)]
pub(crate) struct BalloonDevInfo<T: MigratePage + Embeds<Self>> {
    #[pin]
    raw: Opaque<bindings::balloon_dev_info>,
    #[pin]
    _pin: PhantomPinned,
    _owner: PhantomData<T>,
}

// SAFETY: The page list is protected by the balloon core's own lock.
unsafe impl<T: MigratePage + Embeds<Self>> Send for BalloonDevInfo<T> {}
// SAFETY: The page list is protected by the balloon core's own lock.
unsafe impl<T: MigratePage + Embeds<Self>> Sync for BalloonDevInfo<T> {}

impl<T: MigratePage + Embeds<Self>> BalloonDevInfo<T> {
    /// Creates an empty balloon. With `adjust_managed_page_count`, ballooned
    /// pages are taken out of the managed page count (`MemTotal` shrinks).
    pub(crate) fn new(adjust_managed_page_count: bool) -> impl PinInit<Self> {
        pin_init!(Self {
            raw <- Opaque::ffi_init(move |slot: *mut bindings::balloon_dev_info| {
                // SAFETY: `slot` is valid for writes; `balloon_devinfo_init` initializes all of
                // it (empty list, no callback).
                unsafe { bindings::balloon_devinfo_init(slot) };
                // SAFETY: `slot` was just initialized.
                unsafe {
                    (*slot).adjust_managed_page_count = adjust_managed_page_count;
                    (*slot).migratepage = Some(Self::migratepage_callback);
                }
            }),
            _pin: PhantomPinned,
            _owner: PhantomData,
        })
    }

    /// Puts all of `pages` on the balloon list with one round of the balloon
    /// lock (`balloon_page_list_enqueue()`), leaving the vector empty. `self`
    /// must be the `BalloonDevInfo` field of `owner`; otherwise nothing is
    /// enqueued and [`EINVAL`] returned.
    pub(crate) fn enqueue_all(&self, owner: &Arc<T>, pages: &mut KVec<BalloonPage>) -> Result {
        if !is_field_of(self, owner) {
            return Err(EINVAL);
        }
        let mut head = MaybeUninit::<kb::list_head>::uninit();
        let head = head.as_mut_ptr();
        // SAFETY: `head` is a valid, unmoving list head for the rest of this function.
        unsafe { bindings::INIT_LIST_HEAD(head) };
        for page in pages.drain_all() {
            // SAFETY: The page is ours and on no list (type invariant of `BalloonPage`); its
            // `lru` links it into `head`, which takes over our reference.
            unsafe { bindings::list_add_tail(bindings::rust_vb_page_lru(page.into_raw()), head) };
        }
        // SAFETY: `self.raw` is initialized and pinned inside the `Arc`ed `owner` (checked
        // above), which it keeps alive while pages are listed; every page on `head` came from
        // `BalloonPage`. The call moves them all onto the balloon list.
        unsafe { bindings::balloon_page_list_enqueue(self.raw.get(), head) };
        Ok(())
    }

    /// Takes up to `n` pages off the balloon list with one round of the
    /// balloon lock (`balloon_page_list_dequeue()`), appending them to
    /// `into` within its capacity. Returns how many; fewer than asked if the
    /// rest is isolated for migration. Unlike `balloon_page_dequeue()` this
    /// never treats an empty balloon as a bug.
    pub(crate) fn dequeue_many(&self, into: &mut KVec<BalloonPage>, n: usize) -> usize {
        let n = n.min(into.capacity() - into.len());
        if n == 0 {
            return 0;
        }
        let mut head = MaybeUninit::<kb::list_head>::uninit();
        let head = head.as_mut_ptr();
        // SAFETY: `head` is a valid, unmoving list head for the rest of this function.
        unsafe { bindings::INIT_LIST_HEAD(head) };
        // SAFETY: `self.raw` is initialized (type invariant); the dequeued pages are linked into
        // `head` and their references become ours.
        let got = unsafe { bindings::balloon_page_list_dequeue(self.raw.get(), head, n) };
        // SAFETY: `head` is a valid list.
        while unsafe { bindings::list_empty(head) } == 0 {
            // SAFETY: The list is not empty, so `next` is a page's `lru`; unlinking it makes the
            // page ours alone.
            let page = unsafe {
                let lru = (*head).next;
                bindings::list_del(lru);
                bindings::rust_vb_lru_page(lru)
            };
            if let Some(page) = NonNull::new(page) {
                // INVARIANT: Dequeued, off every list, our reference. There is room: at most `n`
                // pages, within the spare capacity.
                if let Err(e) = into.push_within_capacity(BalloonPage(page)) {
                    drop(e);
                }
            }
        }
        got
    }

    /// Takes a page off the balloon list (`balloon_page_dequeue()`).
    ///
    /// Returns `None` if every remaining page is isolated for migration at
    /// the moment. The caller must know that pages are ballooned: the
    /// balloon core treats dequeuing from an empty balloon as a bug.
    pub(crate) fn dequeue(&self) -> Option<BalloonPage> {
        // SAFETY: `self.raw` is initialized (type invariant).
        let page = unsafe { bindings::balloon_page_dequeue(self.raw.get()) };
        // INVARIANT: A dequeued page is off the list, and its list reference is now ours.
        NonNull::new(page).map(BalloonPage)
    }

    /// Number of pages compaction has isolated from the list.
    fn isolated_pages(&self) -> usize {
        // SAFETY: `self.raw` is initialized; a racy read of a counter is only used to wait.
        unsafe { core::ptr::read_volatile(&(*self.raw.get()).isolated_pages) as usize }
    }

    extern "C" fn migratepage_callback(
        info: *mut bindings::balloon_dev_info,
        newpage: *mut kb::page,
        page: *mut kb::page,
        _mode: kb::migrate_mode,
    ) -> c_int {
        // CAST: `raw` is the first field of a `repr(C)` `BalloonDevInfo<T>`.
        let this = info.cast::<Self>();
        // SAFETY: The balloon core passes the `raw` field of the `BalloonDevInfo<T>` that holds
        // the page, which lies in a live `T` that outlives its pages (type invariant).
        let owner: &T = unsafe { owner_of::<T, Self>(this) };
        let (Some(new), Some(old)) = (NonNull::new(newpage), NonNull::new(page)) else {
            return EINVAL.to_errno();
        };
        match owner.migrate_page(PageRef(new, PhantomData), PageRef(old, PhantomData)) {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }
}

#[pinned_drop]
impl<T: MigratePage + Embeds<Self>> PinnedDrop for BalloonDevInfo<T> {
    fn drop(self: Pin<&mut Self>) {
        // Pages still on the list point back at us: a driver must deflate
        // before it goes away. As a last resort, release them here (the host
        // is not told) rather than leave dangling pointers behind.
        let leaked = self.release_all();
        if leaked > 0 {
            pr_err!("balloon list dropped with {leaked} pages still on it; freed them\n");
        }
    }
}

impl<T: MigratePage + Embeds<Self>> BalloonDevInfo<T> {
    /// Frees every page on the list, after waiting for isolated ones to come
    /// back; returns how many there were.
    fn release_all(&self) -> usize {
        let mut freed = 0usize;
        loop {
            while self.isolated_pages() > 0 {
                kernel::time::delay::fsleep(kernel::time::Delta::from_millis(10));
            }
            // SAFETY: `self.raw` is initialized; checking list emptiness under no lock is fine
            // here: nothing enqueues any more and isolated pages were put back or migrated.
            let empty = unsafe { bindings::list_empty(&(*self.raw.get()).pages) } != 0;
            if empty {
                return freed;
            }
            if let Some(page) = self.dequeue() {
                drop(page);
                freed += 1;
            }
        }
    }
}

#[kunit_tests(virtio_balloon_rs_balloon_pages)]
mod tests {
    use super::*;
    use crate::impl_embeds;

    // The driver may be inflating or deflating while these run (they run
    // when the module loads), so they check the list, not global counters
    // such as MemTotal; the QEMU tests check those end to end.

    #[pin_data]
    struct Owner {
        #[pin]
        pages: BalloonDevInfo<Owner>,
    }

    impl MigratePage for Owner {
        fn migrate_page(&self, _new: PageRef<'_>, _old: PageRef<'_>) -> Result {
            Err(EAGAIN)
        }
    }

    impl_embeds!(Owner {
        pages: BalloonDevInfo<Owner>
    });

    fn owner(adjust: bool) -> Result<Arc<Owner>> {
        Arc::pin_init(
            pin_init!(Owner {
                pages <- BalloonDevInfo::new(adjust),
            }),
            GFP_KERNEL,
        )
    }

    /// Allocates `n` balloon pages.
    fn pages(n: usize) -> Result<KVec<BalloonPage>> {
        let mut v = KVec::with_capacity(n, GFP_KERNEL)?;
        if BalloonPage::alloc_bulk(&mut v, n, None) < n {
            return Err(ENOMEM);
        }
        Ok(v)
    }

    #[test]
    fn enqueued_pages_come_back_last_in_first_out() -> Result {
        let o = owner(true)?;
        let mut v = pages(2)?;
        let (pa, pb) = (v[0].pfn(), v[1].pfn());
        assert!(pa > 0 && pb > 0 && pa != pb);
        o.pages.enqueue_all(&o, &mut v)?;
        assert!(v.is_empty());
        assert_eq!(o.pages.dequeue().ok_or(ENOENT)?.pfn(), pb);
        assert_eq!(o.pages.dequeue().ok_or(ENOENT)?.pfn(), pa);
        assert_eq!(o.pages.release_all(), 0);
        Ok(())
    }

    #[test]
    fn enqueue_refuses_a_list_that_is_not_the_owners() -> Result {
        let a = owner(false)?;
        let b = owner(false)?;
        let mut v = pages(1)?;
        let pfn = v[0].pfn();
        assert!(a.pages.enqueue_all(&b, &mut v).is_err());
        // The page is still ours, not on either list.
        assert!(v.len() == 1 && v[0].pfn() == pfn);
        assert_eq!(a.pages.release_all(), 0);
        assert_eq!(b.pages.release_all(), 0);
        Ok(())
    }

    #[test]
    fn dequeue_many_takes_what_enqueue_all_put() -> Result {
        let o = owner(true)?;
        let mut v = pages(8)?;
        o.pages.enqueue_all(&o, &mut v)?;
        assert_eq!(o.pages.dequeue_many(&mut v, 5), 5);
        assert_eq!(v.len(), 5);
        BalloonPage::release_all(&mut v);
        assert!(v.is_empty());
        assert_eq!(o.pages.release_all(), 3);
        Ok(())
    }

    #[test]
    fn pages_left_on_the_list_are_released() -> Result {
        let o = owner(true)?;
        let mut v = pages(4)?;
        o.pages.enqueue_all(&o, &mut v)?;
        assert_eq!(o.pages.release_all(), 4);
        assert_eq!(o.pages.release_all(), 0);
        Ok(())
    }
}
