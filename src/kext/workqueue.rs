// SPDX-License-Identifier: GPL-2.0

//! Cancelling work items that are queued as [`Arc`]s.
//!
//! `kernel::workqueue` can enqueue an `Arc<T>` work item but not cancel it;
//! a driver that goes away must be able to wait for its work (C's
//! `cancel_work_sync()`).

use kernel::{
    sync::Arc,
    workqueue::{
        HasWork,
        Work,
        WorkItem, //
    },
};

/// Cancels the work item `ID` of `item` and waits for a running instance to
/// finish (`cancel_work_sync()`). Returns whether it was pending.
///
/// Must not be called from the work item itself.
pub(crate) fn cancel_work_sync<T, const ID: u64>(item: &Arc<T>) -> bool
where
    T: WorkItem<ID, Pointer = Arc<T>> + HasWork<T, ID>,
{
    let ptr = Arc::as_ptr(item).cast_mut();
    // SAFETY: `ptr` points to a live `T` (we hold a reference), so its `Work` field is valid.
    let work = unsafe { Work::raw_get(T::raw_get_work(ptr)) };
    // SAFETY: `work` is an initialized `work_struct` that lives as long as `item`.
    let pending = unsafe { kernel::bindings::cancel_work_sync(work) };
    if pending {
        // The queue owned a reference taken by `Arc::into_raw` when the item was enqueued and
        // dropped by the work function only when it runs; cancelling means it never will.
        //
        // SAFETY: That reference is given back exactly once, here.
        drop(unsafe { Arc::from_raw(ptr.cast_const()) });
    }
    pending
}
