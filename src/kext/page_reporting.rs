// SPDX-License-Identifier: GPL-2.0

//! Free page reporting (`include/linux/page_reporting.h`): the page
//! allocator hands batches of free pages to a device that releases their
//! backing memory (the host side of a VM).

use super::embed::{
    owner_of,
    Embeds,
    Registration, //
};
use crate::{
    bindings,
    virtio::SgList, //
};
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
    sync::Arc,
    types::Opaque, //
};

/// A batch of free pages being reported, valid during [`ReportHandler::report`].
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
}

// SAFETY: During `report` the page allocator hands us `nents` scatterlist entries describing
// isolated free pages that nobody else uses until we return, so the device may write them.
unsafe impl SgList for ReportedPages<'_> {
    fn as_raw(&self) -> (*mut kb::scatterlist, usize) {
        (self.sg, self.nents)
    }
}

/// What a free page reporting device does.
pub(crate) trait ReportHandler: Sync {
    /// Report `pages` to the device; return once it has processed them.
    fn report(&self, pages: &ReportedPages<'_>) -> Result;
}

/// A page reporting device embedded in its owner `T`.
///
/// # Invariants
///
/// While `registered` is set, `raw` is registered with page reporting and
/// lies in a pinned, live `T`. `raw` is the first field of this `repr(C)`
/// struct.
#[repr(C)]
#[pin_data(PinnedDrop)]
pub(crate) struct PageReporting<T: ReportHandler + Embeds<Self>> {
    #[pin]
    raw: Opaque<bindings::page_reporting_dev_info>,
    registered: Registration,
    #[pin]
    _pin: PhantomPinned,
    _owner: PhantomData<T>,
}

// SAFETY: Registration state is atomic; `raw` is used by page reporting under its own locking.
unsafe impl<T: ReportHandler + Embeds<Self>> Send for PageReporting<T> {}
// SAFETY: As above.
unsafe impl<T: ReportHandler + Embeds<Self>> Sync for PageReporting<T> {}

impl<T: ReportHandler + Embeds<Self>> PageReporting<T> {
    /// An unregistered reporting device: reports blocks of at least
    /// `order` (`None`: the default, `pageblock_order`), at most `capacity`
    /// blocks per batch.
    pub(crate) fn new(order: Option<u32>, capacity: u32) -> impl PinInit<Self> {
        pin_init!(Self {
            raw <- Opaque::ffi_init(move |slot: *mut bindings::page_reporting_dev_info| {
                // SAFETY: `slot` is valid for writes; the all-zero state is what C's
                // `kzalloc`ed `struct virtio_balloon` starts with.
                unsafe {
                    slot.write(bindings::page_reporting_dev_info::default());
                    (*slot).report = Some(Self::report_callback);
                    (*slot).order = order.unwrap_or(bindings::PAGE_REPORTING_ORDER_UNSPECIFIED as c_uint);
                    (*slot).capacity = capacity;
                }
            }),
            registered: Registration::new(),
            _pin: PhantomPinned,
            _owner: PhantomData,
        })
    }

    /// Registers with page reporting (only one device can be). `self` must
    /// be the `PageReporting` field of `owner` ([`EINVAL`] otherwise).
    pub(crate) fn register(&self, owner: &Arc<T>) -> Result {
        self.registered.register(self, owner, || {
            // SAFETY: `raw` is initialized and, inside the `Arc`ed `owner`, pinned in a live `T`;
            // it is unregistered before it is dropped (`PinnedDrop`).
            to_result(unsafe { bindings::page_reporting_register(self.raw.get()) })
        })
    }

    /// Unregisters, waiting for a running report to finish.
    pub(crate) fn unregister(&self) {
        self.registered.unregister(|| {
            // SAFETY: `raw` is registered (type invariant).
            unsafe { bindings::page_reporting_unregister(self.raw.get()) };
        });
    }

    extern "C" fn report_callback(
        prdev: *mut bindings::page_reporting_dev_info,
        sg: *mut kb::scatterlist,
        nents: c_uint,
    ) -> c_int {
        // CAST: `raw` is the first field of a `repr(C)` `PageReporting<T>`.
        let this = prdev.cast::<Self>();
        // SAFETY: Page reporting calls us with our registered device, which lies in a live `T`
        // while registered (type invariant).
        let owner: &T = unsafe { owner_of::<T, Self>(this) };
        let pages = ReportedPages {
            sg,
            nents: nents as usize,
            _pages: PhantomData,
        };
        match owner.report(&pages) {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }
}

#[pinned_drop]
impl<T: ReportHandler + Embeds<Self>> PinnedDrop for PageReporting<T> {
    fn drop(self: Pin<&mut Self>) {
        self.unregister();
    }
}
