// SPDX-License-Identifier: GPL-2.0

//! Balloon page lists (`include/linux/balloon.h`, `mm/balloon.c`).
//!
//! A [`BalloonDevInfo`] is the kernel's book-keeper of the pages a balloon
//! holds: pages are linked through their own `lru` field (no per-page
//! metadata of the driver's), counted in `NR_BALLOON_PAGES`, optionally
//! taken out of the managed page count, and, with `CONFIG_BALLOON_MIGRATION`,
//! stay movable: compaction may ask the list's [`MigratePage`] handler to
//! swap a ballooned page for another.
//!
//! A [`BalloonPage`] is a page allocated for a balloon that is not on a
//! list: freshly allocated, or taken off to be freed. Dropping it frees it.

use super::page::Node;
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
    sync::atomic::{
        Acquire,
        Atomic,
        Release, //
    },
    time::{
        delay::fsleep,
        Delta, //
    },
    types::Opaque,
};

mod block;

pub(crate) use block::{
    BalloonBlock,
    BlockReport, //
};

/// A page owned by a balloon driver that is not on a balloon list.
///
/// # Invariants
///
/// `self.0` is an order-0 page of a movable allocation (`balloon_page_alloc()`'s
/// flags, a [`BalloonBlock`] split with `split_page()`, or taken off a
/// balloon list) on which we own the one reference; it is on no list.
#[repr(transparent)]
pub(crate) struct BalloonPage(NonNull<kb::page>);

// SAFETY: A page we own can be handed to any thread.
unsafe impl Send for BalloonPage {}

impl BalloonPage {
    /// Allocates up to `n` (at most 256) movable pages for a balloon with
    /// `balloon_page_alloc()`'s flags in one call (`alloc_pages_bulk()`),
    /// appending them to `into` within its capacity. Returns how many were
    /// allocated.
    ///
    /// Fewer than asked does not mean memory is short: the bulk allocator
    /// only takes pages from the per-CPU free lists of a zone of the
    /// preferred node that is above its low watermark plus `n`; otherwise
    /// (a zone full of page cache, a contended per-CPU lock, a short node)
    /// it allocates a single page through the normal path, which may
    /// reclaim, and falls back to other nodes. Zero means that single
    /// allocation failed too: what a failed `balloon_page_alloc()` means.
    ///
    /// `node` is the NUMA node to prefer; `None` is the local one.
    #[doc(alias = "alloc_pages_bulk")]
    pub(crate) fn alloc_bulk(into: &mut KVec<BalloonPage>, n: usize, node: Option<Node>) -> usize {
        // The bulk allocator holds the per-CPU list lock for the whole call.
        const MAX: usize = 256;
        let spare = into.spare_capacity_mut();
        let n = n.min(spare.len()).min(MAX);
        if n == 0 {
            return 0;
        }
        // CAST: `BalloonPage` is a transparent wrapper of a `struct page` pointer; the spare
        // capacity is filled in place, without an array on the stack (this runs under reclaim).
        let raw = spare.as_mut_ptr().cast::<*mut kb::page>();
        // SAFETY: `raw` points to `n` writable elements of the spare capacity.
        unsafe { core::ptr::write_bytes(raw, 0, n) };
        let nid = node.map_or(bindings::VB_NUMA_NO_NODE, Node::id);
        // SAFETY: `raw` has room for `n` page pointers, all null, which `alloc_pages_bulk` fills
        // with pages we then own; `nid` is a node with memory or `NUMA_NO_NODE`.
        unsafe { bindings::rust_vb_balloon_pages_bulk(nid, n as kernel::ffi::c_ulong, raw) };
        // The allocator fills the null entries in order; gather whatever it filled at the front
        // all the same, so that only pages are ever counted in.
        let mut got = 0;
        for i in 0..n {
            // SAFETY: `i < n`: within the `n` entries initialized above.
            let page = unsafe { raw.add(i).read() };
            if !page.is_null() {
                // SAFETY: `got <= i < n`: within the same entries.
                unsafe { raw.add(got).write(page) };
                got += 1;
            }
        }
        // INVARIANT: The first `got` spare elements are freshly allocated pages we own, each a
        // valid `BalloonPage`.
        // SAFETY: They are initialized (just above), within the capacity (`got <= n`).
        unsafe { into.inc_len(got) };
        got
    }

    /// The page's frame number, in guest pages.
    pub(crate) fn pfn(&self) -> u64 {
        page_pfn(self.0)
    }

    /// Frees all of `pages` in one batch (`release_pages()`), leaving the
    /// vector empty.
    #[doc(alias = "release_pages")]
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

    /// Gives up the page without freeing it: it stays allocated for good.
    /// For pages a device may still use (virtio's `MUST_TELL_HOST`: a
    /// device that never acknowledged giving them back).
    pub(crate) fn leak(self) {
        core::mem::forget(self);
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

    /// Keeps the page allocated for good, whatever the balloon core does
    /// with it: for a page a device may still own (it was told the page is
    /// ballooned and could not be told otherwise).
    pub(crate) fn leak(&self) {
        // SAFETY: The page is valid during the call; the extra reference is never dropped.
        unsafe { bindings::get_page(self.0.as_ptr()) };
    }
}

/// How a balloon page migration ended, for the balloon core.
pub(crate) enum Migrated {
    /// `new` replaces `old` in the balloon: the core puts `new` on the list
    /// and frees `old`.
    Done,
    /// Nothing happened: the core puts `old` back (and may retry later).
    Retry,
}

/// Balloon page migration on behalf of compaction.
pub(crate) trait MigratePage: Sync {
    /// Called with `old` isolated from the balloon and `new` a fresh page:
    /// tell whoever needs to know that `new` is now ballooned and `old` is
    /// not, and say how far that got.
    fn migrate_page(&self, new: PageRef<'_>, old: PageRef<'_>) -> Migrated;
}

/// A shared handler is a handler.
impl<T: MigratePage + Send> MigratePage for kernel::sync::Arc<T> {
    fn migrate_page(&self, new: PageRef<'_>, old: PageRef<'_>) -> Migrated {
        (**self).migrate_page(new, old)
    }
}

/// A balloon's page list (`struct balloon_dev_info`), with the handler that
/// migrates its pages.
///
/// # Invariants
///
/// `raw` was initialized by `balloon_devinfo_init()` and is the first field
/// of this `repr(C)` struct. `pages` counts the pages whose `private` field
/// points to `raw`: those on its list and those compaction has isolated from
/// it. While it is not zero the list stays pinned (ensured by `PinnedDrop`).
#[repr(C)]
#[pin_data(PinnedDrop)]
pub(crate) struct BalloonDevInfo<H: MigratePage> {
    #[pin]
    raw: Opaque<bindings::balloon_dev_info>,
    handler: H,
    pages: Atomic<usize>,
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: The page list is protected by the balloon core's own lock; the count is atomic; the
// handler is `Sync` (bound of `MigratePage`) and shared only.
unsafe impl<H: MigratePage + Send> Send for BalloonDevInfo<H> {}
// SAFETY: As above.
unsafe impl<H: MigratePage> Sync for BalloonDevInfo<H> {}

impl<H: MigratePage> BalloonDevInfo<H> {
    /// An empty balloon whose pages `handler` migrates. With
    /// `adjust_managed_page_count`, ballooned pages are taken out of the
    /// managed page count (`MemTotal` shrinks).
    pub(crate) fn new(adjust_managed_page_count: bool, handler: H) -> impl PinInit<Self> {
        pin_init!(Self {
            handler,
            pages: Atomic::new(0),
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
        })
    }

    /// Pages that refer to the list: on it, or isolated by compaction.
    pub(crate) fn len(&self) -> usize {
        self.pages.load(Acquire)
    }

    /// Puts all of `pages` on the list with one round of the balloon lock
    /// (`balloon_page_list_enqueue()`), leaving the vector empty.
    pub(crate) fn enqueue(&self, pages: &mut KVec<BalloonPage>) {
        let n = pages.len();
        if n == 0 {
            return;
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
        // INVARIANT: Counted before compaction can see them on the list.
        self.pages.fetch_add(n, Release);
        // SAFETY: `self.raw` is initialized and pinned, and stays so while pages refer to it
        // (type invariant, counted just above); every page on `head` came from `BalloonPage`.
        unsafe { bindings::balloon_page_list_enqueue(self.raw.get(), head) };
    }

    /// Takes up to `n` pages off the list with one round of the balloon
    /// lock (`balloon_page_list_dequeue()`), appending them to `into`
    /// within its capacity. Returns how many; fewer than asked if the rest
    /// is isolated for migration right now.
    pub(crate) fn dequeue(&self, into: &mut KVec<BalloonPage>, n: usize) -> usize {
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
        // INVARIANT: These pages no longer refer to the list.
        self.pages.fetch_sub(got, Release);
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

    /// Takes one page off the list, if one is on it (not isolated).
    fn dequeue_one(&self) -> Option<BalloonPage> {
        let mut head = MaybeUninit::<kb::list_head>::uninit();
        let head = head.as_mut_ptr();
        // SAFETY: `head` is a valid, unmoving list head for the rest of this function.
        unsafe { bindings::INIT_LIST_HEAD(head) };
        // SAFETY: `self.raw` is initialized (type invariant); a dequeued page is linked into
        // `head` and its reference becomes ours.
        let got = unsafe { bindings::balloon_page_list_dequeue(self.raw.get(), head, 1) };
        if got == 0 {
            return None;
        }
        // INVARIANT: The page no longer refers to the list.
        self.pages.fetch_sub(got, Release);
        // SAFETY: One page is on `head`; unlinking it makes it ours alone.
        let page = unsafe {
            let lru = (*head).next;
            bindings::list_del(lru);
            bindings::rust_vb_lru_page(lru)
        };
        // INVARIANT: Dequeued, off every list, our reference.
        NonNull::new(page).map(BalloonPage)
    }

    extern "C" fn migratepage_callback(
        info: *mut bindings::balloon_dev_info,
        newpage: *mut kb::page,
        page: *mut kb::page,
        _mode: kb::migrate_mode,
    ) -> c_int {
        // CAST: `raw` is the first field of a `repr(C)` `BalloonDevInfo<H>`.
        let this = info.cast::<Self>().cast_const();
        // SAFETY: The balloon core passes the `raw` field of the list that holds the isolated
        // page, which stays pinned and alive while the page refers to it (type invariant).
        let this = unsafe { &*this };
        let (Some(new), Some(old)) = (NonNull::new(newpage), NonNull::new(page)) else {
            return EINVAL.to_errno();
        };
        match this
            .handler
            .migrate_page(PageRef(new, PhantomData), PageRef(old, PhantomData))
        {
            // The count stays: `new` takes the place of `old`.
            Migrated::Done => 0,
            Migrated::Retry => EAGAIN.to_errno(),
        }
    }
}

#[pinned_drop]
impl<H: MigratePage> PinnedDrop for BalloonDevInfo<H> {
    fn drop(self: Pin<&mut Self>) {
        // Only shared access from here on: compaction may still call the handler.
        let this: &Self = &self;
        // Pages on the list point back at it: a driver must empty it before
        // it goes away. Pages left over were ballooned, so freeing them
        // could hand out memory a device still owns: take them off the list
        // and leak them. Isolated pages come back (or are migrated) soon.
        let mut leaked = 0usize;
        while this.len() > 0 {
            match this.dequeue_one() {
                Some(page) => {
                    page.leak();
                    leaked += 1;
                }
                // Isolated for migration right now: wait for it.
                None => fsleep(Delta::from_millis(10)),
            }
        }
        if leaked > 0 {
            pr_err!("balloon list dropped with {leaked} pages on it: leaked them\n");
        }
    }
}

#[kunit_tests(virtio_balloon_rs_balloon_pages)]
mod tests {
    use super::*;
    use kernel::sync::Arc;

    // The driver may be inflating or deflating while these run (they run
    // when the module loads), so they check the list, not global counters
    // such as MemTotal; the QEMU tests check those end to end.

    struct NoMigration;

    impl MigratePage for NoMigration {
        fn migrate_page(&self, _new: PageRef<'_>, _old: PageRef<'_>) -> Migrated {
            Migrated::Retry
        }
    }

    fn list(adjust: bool) -> Result<Pin<KBox<BalloonDevInfo<NoMigration>>>> {
        KBox::pin_init(BalloonDevInfo::new(adjust, NoMigration), GFP_KERNEL)
    }

    /// Allocates `n` balloon pages.
    fn pages(n: usize) -> Result<KVec<BalloonPage>> {
        let mut v = KVec::with_capacity(n, GFP_KERNEL)?;
        while v.len() < n {
            let need = n - v.len();
            if BalloonPage::alloc_bulk(&mut v, need, None) == 0 {
                return Err(ENOMEM);
            }
        }
        Ok(v)
    }

    #[test]
    fn enqueued_pages_come_back() -> Result {
        let l = list(true)?;
        let mut v = pages(2)?;
        let (pa, pb) = (v[0].pfn(), v[1].pfn());
        assert!(pa > 0 && pb > 0 && pa != pb);
        l.enqueue(&mut v);
        assert!(v.is_empty());
        assert_eq!(l.len(), 2);
        assert_eq!(l.dequeue(&mut v, 2), 2);
        let (qa, qb) = (v[0].pfn(), v[1].pfn());
        assert!((qa, qb) == (pa, pb) || (qa, qb) == (pb, pa));
        assert_eq!(l.len(), 0);
        BalloonPage::release_all(&mut v);
        Ok(())
    }

    #[test]
    fn dequeue_takes_what_enqueue_put() -> Result {
        let l = list(true)?;
        let mut v = pages(8)?;
        l.enqueue(&mut v);
        assert_eq!(l.dequeue(&mut v, 5), 5);
        assert_eq!(v.len(), 5);
        assert_eq!(l.len(), 3);
        BalloonPage::release_all(&mut v);
        assert!(v.is_empty());
        assert_eq!(l.dequeue(&mut v, 8), 3);
        BalloonPage::release_all(&mut v);
        Ok(())
    }

    #[test]
    fn dequeue_never_overflows_the_vector() -> Result {
        let l = list(false)?;
        let mut v = pages(4)?;
        l.enqueue(&mut v);
        let mut small = KVec::with_capacity(1, GFP_KERNEL)?;
        assert_eq!(l.dequeue(&mut small, 4), 1);
        assert_eq!(l.len(), 3);
        BalloonPage::release_all(&mut small);
        assert_eq!(l.dequeue(&mut v, 4), 3);
        BalloonPage::release_all(&mut v);
        Ok(())
    }

    #[test]
    fn a_block_splits_into_its_pages_in_order() -> Result {
        const ORDER: u32 = 9;
        // A freshly loaded module in a test guest: free memory has blocks.
        let block = Node::with_memory()
            .find_map(|n| BalloonBlock::alloc(n, ORDER))
            .ok_or(ENOMEM)?;
        assert_eq!(block.pages(), 1 << ORDER);
        let mut small = KVec::with_capacity(1, GFP_KERNEL)?;
        let block = match block.split_into(&mut small) {
            Err(block) => block,
            Ok(()) => return Err(EINVAL),
        };
        let mut v = KVec::with_capacity(1 << ORDER, GFP_KERNEL)?;
        assert!(block.split_into(&mut v).is_ok());
        assert_eq!(v.len(), 1 << ORDER);
        // Aligned to its order, then consecutive.
        let first = v[0].pfn();
        assert_eq!(first % (1 << ORDER), 0);
        for (i, page) in v.iter().enumerate() {
            assert_eq!(page.pfn(), first + i as u64);
        }
        // Each page is on its own now: put them on a list and take them back.
        let l = list(true)?;
        l.enqueue(&mut v);
        assert_eq!(l.len(), 1 << ORDER);
        assert_eq!(l.dequeue(&mut v, 1 << ORDER), 1 << ORDER);
        BalloonPage::release_all(&mut v);
        Ok(())
    }

    #[test]
    fn an_empty_list_drops_at_once() -> Result {
        let l = Arc::pin_init(BalloonDevInfo::new(true, NoMigration), GFP_KERNEL)?;
        assert_eq!(l.len(), 0);
        drop(l);
        Ok(())
    }
}
