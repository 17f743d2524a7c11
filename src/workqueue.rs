// SPDX-License-Identifier: GPL-2.0

//! What `kernel::workqueue` lacks: cancelling work items queued as
//! [`Arc`]s, and a workqueue of the driver's own.

use core::ptr::NonNull;
use kernel::{
    bindings as kb,
    prelude::*,
    sync::Arc,
    workqueue::{
        HasDelayedWork,
        HasWork,
        Queue,
        Work,
        WorkItem, //
    },
};

/// The `work_struct` of work item `ID` of `item`.
fn raw_work<T, const ID: u64>(item: &Arc<T>) -> *mut kb::work_struct
where
    T: HasWork<T, ID>,
{
    let ptr = Arc::as_ptr(item).cast_mut();
    // SAFETY: `ptr` points to a live `T` (we hold a reference), so its `Work` field is valid.
    unsafe { Work::raw_get(T::raw_get_work(ptr)) }
}

/// Gives back the reference a queued `Arc` work item held if cancelling
/// found it `pending` (it will not run then); returns `pending`.
///
/// # Safety
///
/// `pending` must be what cancelling the work item of `item` just returned.
unsafe fn cancelled<T>(item: &Arc<T>, pending: bool) -> bool {
    if pending {
        // The queue owned a reference taken by `Arc::into_raw` when the item was enqueued and
        // dropped by the work function only when it runs; cancelling means it never will.
        //
        // SAFETY: By the safety requirements that reference exists and is given back exactly
        // once.
        drop(unsafe { Arc::from_raw(Arc::as_ptr(item)) });
    }
    pending
}

/// Cancels work item `ID` of `item` and waits for a running instance to
/// finish (`cancel_work_sync()`). Returns whether it was pending.
///
/// Must not be called from the work item itself.
pub(crate) fn cancel_work_sync<T, const ID: u64>(item: &Arc<T>) -> bool
where
    T: WorkItem<ID, Pointer = Arc<T>> + HasWork<T, ID>,
{
    // SAFETY: The work item is an initialized `work_struct` that lives as long as `item`.
    let pending = unsafe { kb::cancel_work_sync(raw_work::<T, ID>(item)) };
    // SAFETY: `pending` is what cancelling it returned.
    unsafe { cancelled(item, pending) }
}

// `struct delayed_work` begins with its `work_struct`.
const _: () = assert!(core::mem::offset_of!(kb::delayed_work, work) == 0);

/// The `delayed_work` of delayed work item `ID` of `item`.
fn raw_delayed_work<T, const ID: u64>(item: &Arc<T>) -> *mut kb::delayed_work
where
    T: HasDelayedWork<T, ID>,
{
    // CAST: The work item is the `work` of a `struct delayed_work` (`HasDelayedWork`), which is
    // its first field.
    raw_work::<T, ID>(item).cast()
}

/// Cancels delayed work item `ID` of `item`, its timer included, and waits
/// for a running instance to finish (`cancel_delayed_work_sync()`).
/// Returns whether it was pending.
///
/// Must not be called from the work item itself.
pub(crate) fn cancel_delayed_work_sync<T, const ID: u64>(item: &Arc<T>) -> bool
where
    T: WorkItem<ID, Pointer = Arc<T>> + HasDelayedWork<T, ID>,
{
    // SAFETY: The delayed work is initialized and lives as long as `item`.
    let pending = unsafe { kb::cancel_delayed_work_sync(raw_delayed_work::<T, ID>(item)) };
    // SAFETY: `pending` is what cancelling it returned.
    unsafe { cancelled(item, pending) }
}

/// Cancels delayed work item `ID` of `item` if it is pending, its timer
/// included, without waiting for a running instance
/// (`cancel_delayed_work()`). Returns whether it was pending.
///
/// May be called from another work item of `item`.
pub(crate) fn cancel_delayed_work<T, const ID: u64>(item: &Arc<T>) -> bool
where
    T: WorkItem<ID, Pointer = Arc<T>> + HasDelayedWork<T, ID>,
{
    // SAFETY: The delayed work is initialized and lives as long as `item`.
    let pending = unsafe { kb::cancel_delayed_work(raw_delayed_work::<T, ID>(item)) };
    // SAFETY: `pending` is what cancelling it returned.
    unsafe { cancelled(item, pending) }
}

/// A workqueue of the driver's own (`alloc_workqueue()`), destroyed (after
/// draining) when dropped.
///
/// # Invariants
///
/// `self.0` is a workqueue from `alloc_workqueue()` that only `Drop`
/// destroys.
pub(crate) struct OwnedQueue(NonNull<kb::workqueue_struct>);

// SAFETY: A workqueue may be used and destroyed from any thread.
unsafe impl Send for OwnedQueue {}
// SAFETY: Queueing work is thread safe.
unsafe impl Sync for OwnedQueue {}

impl OwnedQueue {
    /// Allocates a workqueue named `name` with `flags` (`WQ_*`).
    pub(crate) fn new(name: &'static CStr, flags: u32) -> Result<Self> {
        // SAFETY: The format takes one string argument, `name`, NUL-terminated and `'static`.
        let wq = unsafe {
            kb::alloc_workqueue_noprof(c"%s".as_char_ptr(), flags, 0, name.as_char_ptr())
        };
        // INVARIANT: A fresh workqueue.
        NonNull::new(wq).map(Self).ok_or(ENOMEM)
    }

    /// The queue, to enqueue work on.
    pub(crate) fn queue(&self) -> &Queue {
        // SAFETY: By the type invariant the workqueue is valid until `self` is dropped, which
        // the returned reference cannot outlive.
        unsafe { Queue::from_raw(self.0.as_ptr()) }
    }
}

impl Drop for OwnedQueue {
    fn drop(&mut self) {
        // SAFETY: By the type invariant the workqueue is valid and destroyed only here.
        unsafe { kb::destroy_workqueue(self.0.as_ptr()) };
    }
}
