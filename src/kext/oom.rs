// SPDX-License-Identifier: GPL-2.0

//! OOM notifiers (`register_oom_notifier()`, `include/linux/oom.h`).
//!
//! Before the OOM killer picks a victim, the kernel calls the registered
//! notifiers, which may free memory and report how many pages they freed.

use super::embed::{
    owner_of,
    Embeds,
    Registration, //
};
use crate::bindings;
use core::marker::{
    PhantomData,
    PhantomPinned, //
};
use kernel::{
    bindings as kb,
    error::to_result,
    ffi::{
        c_int,
        c_ulong,
        c_void, //
    },
    prelude::*,
    sync::Arc,
    types::Opaque, //
};

/// What an OOM notifier does.
pub(crate) trait OomHandler: Sync {
    /// The system is out of memory: free what you can, return the number of
    /// pages freed. May sleep.
    fn oom_free(&self) -> usize;
}

/// An OOM notifier embedded in its owner `T`.
///
/// # Invariants
///
/// While `registered` is set, `nb` is on the OOM notifier chain and lies in
/// a pinned, live `T`. `nb` is the first field of this `repr(C)` struct.
#[repr(C)]
#[pin_data(PinnedDrop)]
pub(crate) struct OomNotifier<T: OomHandler + Embeds<Self>> {
    #[pin]
    nb: Opaque<kb::notifier_block>,
    registered: Registration,
    #[pin]
    _pin: PhantomPinned,
    _owner: PhantomData<T>,
}

// SAFETY: Registration state is atomic; the notifier block is only used by the notifier chain.
unsafe impl<T: OomHandler + Embeds<Self>> Send for OomNotifier<T> {}
// SAFETY: As above.
unsafe impl<T: OomHandler + Embeds<Self>> Sync for OomNotifier<T> {}

impl<T: OomHandler + Embeds<Self>> OomNotifier<T> {
    /// An unregistered notifier with the given chain priority.
    pub(crate) fn new(priority: i32) -> impl PinInit<Self> {
        pin_init!(Self {
            nb <- Opaque::ffi_init(move |slot: *mut kb::notifier_block| {
                // SAFETY: `slot` is valid for writes.
                unsafe {
                    slot.write(kb::notifier_block {
                        notifier_call: Some(Self::notify),
                        next: core::ptr::null_mut(),
                        priority,
                    })
                };
            }),
            registered: Registration::new(),
            _pin: PhantomPinned,
            _owner: PhantomData,
        })
    }

    /// Adds the notifier to the chain. `self` must be the `OomNotifier`
    /// field of `owner` ([`EINVAL`] otherwise).
    pub(crate) fn register(&self, owner: &Arc<T>) -> Result {
        self.registered.register(self, owner, || {
            // SAFETY: `nb` is initialized and, inside the `Arc`ed `owner`, pinned in a live `T`;
            // it is removed from the chain before it is dropped (`PinnedDrop`).
            to_result(unsafe { bindings::register_oom_notifier(self.nb.get()) })
        })
    }

    /// Removes the notifier; waits for running calls to finish.
    pub(crate) fn unregister(&self) {
        self.registered.unregister(|| {
            // SAFETY: `nb` is on the chain (type invariant).
            unsafe { bindings::unregister_oom_notifier(self.nb.get()) };
        });
    }

    extern "C" fn notify(
        nb: *mut kb::notifier_block,
        _action: c_ulong,
        parm: *mut c_void,
    ) -> c_int {
        // CAST: `nb` is the first field of a `repr(C)` `OomNotifier<T>`.
        let this = nb.cast::<Self>();
        // SAFETY: The chain calls us with our registered `nb`, so `this` is the `OomNotifier`
        // field of a live `T` (type invariant), which stays alive while we are registered.
        let owner: &T = unsafe { owner_of::<T, Self>(this) };
        let freed = owner.oom_free();
        if !parm.is_null() {
            // SAFETY: The OOM notifier chain passes a `unsigned long *freed` accumulator.
            unsafe { *parm.cast::<c_ulong>() += freed as c_ulong };
        }
        kb::NOTIFY_OK as c_int
    }
}

#[pinned_drop]
impl<T: OomHandler + Embeds<Self>> PinnedDrop for OomNotifier<T> {
    fn drop(self: Pin<&mut Self>) {
        self.unregister();
    }
}
