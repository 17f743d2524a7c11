// SPDX-License-Identifier: GPL-2.0

//! OOM notifiers (`register_oom_notifier()`, `include/linux/oom.h`).
//!
//! Before the OOM killer picks a victim, the kernel calls the registered
//! notifiers, which may free memory and report how many pages they freed.

use crate::bindings;
use core::marker::PhantomPinned;
use kernel::{
    bindings as kb,
    error::to_result,
    ffi::{
        c_int,
        c_ulong,
        c_void, //
    },
    prelude::*,
    types::Opaque, //
};

/// What an OOM notifier does.
pub(crate) trait OomHandler: Sync {
    /// The system is out of memory: free what you can, return the number of
    /// pages freed. May sleep, but every allocation in the system may be
    /// waiting: return soon.
    fn oom_free(&self) -> usize;
}

/// A shared handler is a handler.
impl<T: OomHandler + Send> OomHandler for kernel::sync::Arc<T> {
    fn oom_free(&self) -> usize {
        (**self).oom_free()
    }
}

/// A registered OOM notifier calling `handler`.
///
/// # Invariants
///
/// `nb` is on the OOM notifier chain from initialization until drop, and is
/// the first field of this `repr(C)` struct.
#[repr(C)]
#[pin_data(PinnedDrop)]
pub(crate) struct Registration<T: OomHandler> {
    #[pin]
    nb: Opaque<kb::notifier_block>,
    handler: T,
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: The notifier block is only used by the notifier chain, which serializes registration;
// the handler is `Sync` and only shared.
unsafe impl<T: OomHandler + Send> Send for Registration<T> {}
// SAFETY: As above.
unsafe impl<T: OomHandler> Sync for Registration<T> {}

impl<T: OomHandler> Registration<T> {
    /// Registers `handler` on the OOM notifier chain with `priority`.
    pub(crate) fn new(priority: i32, handler: T) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            // Before `nb`: the chain may call it as soon as it is registered.
            handler,
            _pin: PhantomPinned,
            nb <- Opaque::try_ffi_init(move |slot: *mut kb::notifier_block| {
                // SAFETY: `slot` is valid for writes.
                unsafe {
                    slot.write(kb::notifier_block {
                        notifier_call: Some(Self::notify),
                        next: core::ptr::null_mut(),
                        priority,
                    })
                };
                // INVARIANT: Registered here; `PinnedDrop` unregisters it.
                // SAFETY: `slot` is initialized and pinned in `Self`, whose `handler` is
                // initialized; it is removed from the chain before it is dropped.
                to_result(unsafe { bindings::register_oom_notifier(slot) })
            }),
        }? Error)
    }

    extern "C" fn notify(
        nb: *mut kb::notifier_block,
        _action: c_ulong,
        parm: *mut c_void,
    ) -> c_int {
        // CAST: `nb` is the first field of a `repr(C)` `Registration<T>`.
        let this = nb.cast::<Self>().cast_const();
        // SAFETY: The chain calls us with our registered `nb`, which lies in a live, pinned
        // `Registration` until it is unregistered (type invariant).
        let this = unsafe { &*this };
        let freed = this.handler.oom_free();
        if !parm.is_null() {
            // SAFETY: The OOM notifier chain passes a `unsigned long *freed` accumulator.
            unsafe { *parm.cast::<c_ulong>() += freed as c_ulong };
        }
        kb::NOTIFY_OK as c_int
    }
}

#[pinned_drop]
impl<T: OomHandler> PinnedDrop for Registration<T> {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: `nb` is on the chain (type invariant); unregistering waits for running calls.
        unsafe { bindings::unregister_oom_notifier(self.nb.get()) };
    }
}
