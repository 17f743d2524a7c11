// SPDX-License-Identifier: GPL-2.0

//! Lending borrowed scatterlists to the device, one transfer at a time.

use super::{
    Kind,
    VqSlot, //
};
use crate::bindings;
use core::{
    any::TypeId,
    ptr::NonNull, //
};
use kernel::{
    ffi::c_void,
    prelude::*,
    sync::MutexGuard,
    time::Delta, //
};

/// A scatterlist of memory borrowed for one device-writable transfer.
///
/// # Safety
///
/// [`SgList::as_raw`] must return a valid array of that many initialized
/// scatterlist entries, describing whole pages or parts of pages (by `struct
/// page`, offset and length; high memory too) that the device may write and
/// that nobody else uses while `self` is borrowed.
pub unsafe trait SgList {
    /// The entries and their number.
    fn as_raw(&self) -> (*mut kernel::bindings::scatterlist, usize);
}

// SAFETY: During the report callback the page allocator hands over `len()` scatterlist entries
// describing isolated free pages that nobody else uses until the callback returns (see
// `ReportedPages`); `ReportedPages` only lives that long.
unsafe impl SgList for crate::mm::page_reporting::ReportedPages<'_> {
    fn as_raw(&self) -> (*mut kernel::bindings::scatterlist, usize) {
        self.raw()
    }
}

// SAFETY: `BlockSg` describes `len()` initialized entries, each a whole block of pages the
// balloon owns and keeps mutably borrowed, so unused by anyone else, for as long as the `BlockSg`
// lives.
unsafe impl SgList for crate::mm::balloon::BlockSg<'_> {
    fn as_raw(&self) -> (*mut kernel::bindings::scatterlist, usize) {
        self.raw()
    }
}

/// Type marker of queues used through [`SgQueue`].
struct SgMarker;

/// A virtqueue that carries borrowed scatterlists, one transfer at a time
/// (for example free page reporting).
///
/// # Invariants
///
/// The slot was claimed for borrowed transfers in generation `generation`.
pub struct SgQueue<'a> {
    slot: &'a VqSlot,
    generation: u64,
}

impl<'a> SgQueue<'a> {
    pub(crate) fn new(slot: &'a VqSlot) -> Result<Self> {
        // Tokens of this queue are borrowed scatterlists: nothing to drop.
        let generation = slot.claim(TypeId::of::<SgMarker>(), None)?;
        // INVARIANT: Claimed just above.
        Ok(Self { slot, generation })
    }

    /// Ring size, the most entries one transfer can have.
    pub fn size(&self) -> u32 {
        self.slot.ring_size()
    }

    /// Hands `sg` to the device as device-writable buffers, notifies it and
    /// sleeps until the device has returned them. Transfers on one queue
    /// take turns.
    ///
    /// The memory is the caller's again when this returns, so it does not
    /// return while the device may still write it: not on a timeout, and
    /// not when the queue breaks (a broken device may still be running).
    /// It returns [`ENODEV`] once the device is reset (unbind, suspend, or
    /// the unbind protocol resetting a device that keeps lent memory too
    /// long); [`ENOSPC`] if the ring has fewer free descriptors than `sg`
    /// has entries, [`EIO`] if the queue was already broken.
    pub fn transfer_inbuf<S: SgList>(&self, sg: &S) -> Result {
        let turn = self.slot.transfer.lock();
        self.transfer_in_turn(&turn, sg)
    }

    /// Like [`SgQueue::transfer_inbuf`], but returns [`EBUSY`] at once
    /// instead of waiting for another transfer on the queue to end (for a
    /// caller that has better to do than to queue behind it).
    pub fn try_transfer_inbuf<S: SgList>(&self, sg: &S) -> Result {
        let turn = self.slot.transfer.try_lock().ok_or(EBUSY)?;
        self.transfer_in_turn(&turn, sg)
    }

    /// The transfer, in the caller's turn (`_turn` guards `transfer`).
    fn transfer_in_turn<S: SgList>(&self, _turn: &MutexGuard<'_, ()>, sg: &S) -> Result {
        let (list, n) = sg.as_raw();
        if n == 0 || n > u32::MAX as usize {
            return Err(EINVAL);
        }
        let token = NonNull::new(list.cast::<c_void>()).ok_or(EINVAL)?;
        let mut s = self
            .slot
            .lock_for(self.generation, TypeId::of::<SgMarker>())?;
        if s.kind != Kind::Buffers {
            return Err(EINVAL);
        }
        // SAFETY: `s.vq` is live (checked by `lock_for`); `list` holds `n` valid entries whose
        // memory the device may write until we take the token back below (safety requirements
        // of `SgList`); `token` is unique while queued: transfers take turns (`_turn`), and
        // this call does not return while it is queued.
        kernel::error::to_result(unsafe {
            bindings::virtqueue_add_inbuf(
                s.vq,
                list,
                n as u32,
                token.as_ptr(),
                kernel::bindings::GFP_ATOMIC,
            )
        })?;
        s.lent += 1;
        // SAFETY: `s.vq` is live.
        unsafe { bindings::virtqueue_kick(s.vq) };
        loop {
            if s.vq.is_null() || s.generation != self.generation {
                // The queue was deleted after a device reset: it no longer uses `sg`.
                return Err(ENODEV);
            }
            if s.reset {
                // The device was reset: it no longer uses `sg`.
                s.lent = s.lent.saturating_sub(1);
                return Err(ENODEV);
            }
            let mut len = 0u32;
            // SAFETY: `s.vq` is live; `len` is writable.
            let used = unsafe { bindings::virtqueue_get_buf(s.vq, &mut len) };
            if used == token.as_ptr() {
                s.lent -= 1;
                return Ok(());
            }
            // Transfers take turns, so nothing else is queued: `used` is null.
            if self.slot.wait_slice(&mut s, Delta::from_millis(100)) {
                drop(s);
                kernel::time::delay::fsleep(Delta::from_millis(10));
                s = self.slot.state.lock();
            }
        }
    }
}
