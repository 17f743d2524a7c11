// SPDX-License-Identifier: GPL-2.0

//! Free page reporting (`include/linux/page_reporting.h`): the page
//! allocator hands batches of free pages to a device that releases their
//! backing memory (the host side of a VM).

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
        c_uint, //
    },
    prelude::*,
    types::Opaque, //
};

/// A batch of free pages being reported, valid during [`Report::report`]:
/// isolated from the free lists, nobody else uses them until it returns.
pub(crate) struct ReportedPages<'a> {
    sg: *mut kb::scatterlist,
    nents: usize,
    _pages: PhantomData<&'a mut kb::scatterlist>,
}

impl ReportedPages<'_> {
    /// Number of page blocks in the batch.
    pub(crate) fn len(&self) -> usize {
        self.nents
    }

    /// The batch's scatterlist entries and their number.
    pub(crate) fn raw(&self) -> (*mut kb::scatterlist, usize) {
        (self.sg, self.nents)
    }
}

/// What a free page reporting device does.
pub(crate) trait Report: Sync {
    /// Report `pages` to the device; return once it has processed them.
    fn report(&self, pages: &ReportedPages<'_>) -> Result;
}

/// A shared handler is a handler.
impl<T: Report + Send> Report for kernel::sync::Arc<T> {
    fn report(&self, pages: &ReportedPages<'_>) -> Result {
        (**self).report(pages)
    }
}

/// A registered page reporting device calling `handler` (only one can be
/// registered in the system at a time: [`EBUSY`]).
///
/// # Invariants
///
/// `raw` is registered with page reporting from initialization until drop,
/// and is the first field of this `repr(C)` struct.
#[repr(C)]
#[pin_data(PinnedDrop)]
pub(crate) struct Registration<T: Report> {
    #[pin]
    raw: Opaque<bindings::page_reporting_dev_info>,
    handler: T,
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: `raw` is used by page reporting under its own locking; the handler is `Sync` and only
// shared.
unsafe impl<T: Report + Send> Send for Registration<T> {}
// SAFETY: As above.
unsafe impl<T: Report> Sync for Registration<T> {}

impl<T: Report> Registration<T> {
    /// Registers a reporting device that reports blocks of at least `order`
    /// (`None`: the default, `pageblock_order`), at most `capacity` blocks
    /// per batch, to `handler`.
    pub(crate) fn new(order: Option<u32>, capacity: u32, handler: T) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            // Before `raw`: reporting may start as soon as it is registered.
            handler,
            _pin: PhantomPinned,
            raw <- Opaque::try_ffi_init(move |slot: *mut bindings::page_reporting_dev_info| {
                // SAFETY: `slot` is valid for writes; the all-zero state is what C's `kzalloc`ed
                // devices start with.
                unsafe {
                    slot.write(bindings::page_reporting_dev_info::default());
                    (*slot).report = Some(Self::report_callback);
                    (*slot).order =
                        order.unwrap_or(bindings::PAGE_REPORTING_ORDER_UNSPECIFIED as c_uint);
                    (*slot).capacity = capacity;
                }
                // INVARIANT: Registered here; `PinnedDrop` unregisters it.
                // SAFETY: `slot` is initialized and pinned in `Self`, whose `handler` is
                // initialized; it is unregistered before it is dropped.
                to_result(unsafe { bindings::page_reporting_register(slot) })
            }),
        }? Error)
    }

    extern "C" fn report_callback(
        prdev: *mut bindings::page_reporting_dev_info,
        sg: *mut kb::scatterlist,
        nents: c_uint,
    ) -> c_int {
        // CAST: `raw` is the first field of a `repr(C)` `Registration<T>`.
        let this = prdev.cast::<Self>().cast_const();
        // SAFETY: Page reporting calls us with our registered device, which lies in a live,
        // pinned `Registration` while registered (type invariant).
        let this = unsafe { &*this };
        let pages = ReportedPages {
            sg,
            nents: nents as usize,
            _pages: PhantomData,
        };
        match this.handler.report(&pages) {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }
}

#[pinned_drop]
impl<T: Report> PinnedDrop for Registration<T> {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: `raw` is registered (type invariant); this waits for a running report.
        unsafe { bindings::page_reporting_unregister(self.raw.get()) };
    }
}
