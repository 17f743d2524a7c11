// SPDX-License-Identifier: GPL-2.0

//! Lending borrowed scatterlists to the device, one transfer at a time.

use super::{
    QueueKind,
    SlotState,
    VqSlot, //
};
use crate::{
    bindings,
    compat::SpinLockIrqGuard, //
};
use core::{
    any::TypeId,
    ptr::NonNull, //
};
use kernel::{
    ffi::c_void,
    prelude::*,
    sync::MutexGuard,
    time::{
        Delta,
        Instant,
        Monotonic, //
    },
};

/// A scatterlist of memory borrowed for one device-writable transfer.
///
/// # Safety
///
/// [`SgList::as_raw`] must return a valid array of that many initialized
/// scatterlist entries, one list whose last entry is the last of the array
/// (`sg_mark_end()`, no chain or end before it: the virtio core follows
/// `sg_next()`), describing whole pages or parts of pages (by `struct page`,
/// offset and length; high memory too) that the device may write and that
/// nobody else uses while `self` is borrowed.
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

/// Memory that a transfer may leave with the device after the caller
/// stopped waiting ([`SgQueue::try_transfer_owned`]).
///
/// # Safety
///
/// Besides [`SgList`]'s requirements, which must hold for as long as the
/// value lives and not only while it is borrowed: the value owns the memory
/// it describes, nothing frees or uses it while the value lives, and
/// dropping the value is what gives it back.
pub unsafe trait OwnedSgList: SgList + Send {}

// SAFETY: A `BlockReport` owns its blocks and its entries; they are freed when it is dropped, and
// nothing else reaches them meanwhile.
unsafe impl OwnedSgList for crate::mm::balloon::BlockReport {}

// SAFETY: By the invariant of `BlockReport`, `raw()` gives `len()` initialized entries that
// describe its own blocks, whole: pages it owns, which nobody else uses while it lives.
unsafe impl SgList for crate::mm::balloon::BlockReport {
    fn as_raw(&self) -> (*mut kernel::bindings::scatterlist, usize) {
        self.raw()
    }
}

/// A bounded transfer of owned memory that did not end with the memory
/// back ([`SgQueue::try_transfer_owned`]).
pub struct NotReturned<S> {
    /// Why: [`ETIMEDOUT`] when the device kept the memory.
    pub err: Error,
    /// The memory, if the device does not have it: never lent, or given
    /// back. `None` after a timeout: the queue then keeps it until the
    /// device returns it or is reset, and drops it then.
    pub sg: Option<KBox<S>>,
}

/// Drops memory given to the device as a token.
type DropToken = unsafe fn(NonNull<c_void>);

/// Owned memory a device kept beyond a bounded transfer.
///
/// # Invariants
///
/// `token` is a leaked `KBox` of an [`OwnedSgList`] type (`Send + 'static`)
/// that `drop` drops, and is queued on (or was used by) the slot's device;
/// it is dropped once, by `drop`.
pub(super) struct Kept {
    token: NonNull<c_void>,
    drop: DropToken,
}

// SAFETY: The memory kept is `Send` (`OwnedSgList: Send`).
unsafe impl Send for Kept {}

impl Kept {
    pub(super) fn token(&self) -> NonNull<c_void> {
        self.token
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        // SAFETY: By the type invariant `token` is a box of the type `drop` drops, dropped once,
        // here: the device no longer has it (it returned it or was reset).
        unsafe { (self.drop)(self.token) };
    }
}

/// Drops a box given to the device as a token.
///
/// # Safety
///
/// `token` must come from `KBox::<S>::into_raw` and be dropped only once.
unsafe fn drop_box<S>(token: NonNull<c_void>) {
    // SAFETY: By the safety requirements.
    drop(unsafe { KBox::from_raw(token.as_ptr().cast::<S>()) });
}

/// How a lend ended short.
enum Lend {
    /// Not lent, or given back: the memory is the caller's.
    Back(Error),
    /// Kept by the device past the deadline; the slot holds it.
    Kept,
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
    /// long), and at once, lending nothing, once unbinding has begun;
    /// [`ENOSPC`] if the ring has fewer free descriptors than `sg` has
    /// entries, [`EIO`] if the queue was already broken, [`EBUSY`] while
    /// the device still has memory it kept from
    /// [`SgQueue::try_transfer_owned`].
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

    /// Like [`SgQueue::try_transfer_inbuf`] for memory the caller gives up
    /// for as long as the device has it, waiting at most `timeout` (for
    /// example so that work that must end, such as a freezable work item,
    /// does not wait on a device that keeps the memory).
    ///
    /// On success the memory comes back. After `timeout` the device keeps
    /// it: the queue holds it until the device returns it (noticed by the
    /// next transfer) or is reset (unbind, suspend), then drops it; until
    /// then further transfers fail with [`EBUSY`], and the error says
    /// [`ETIMEDOUT`] with no memory. Other errors are those of
    /// [`SgQueue::try_transfer_inbuf`], with the memory.
    pub fn try_transfer_owned<S: OwnedSgList + 'static>(
        &self,
        sg: KBox<S>,
        timeout: Delta,
    ) -> Result<KBox<S>, NotReturned<S>> {
        let Some(turn) = self.slot.transfer.try_lock() else {
            return Err(NotReturned {
                err: EBUSY,
                sg: Some(sg),
            });
        };
        let raw = KBox::into_raw(sg);
        // SAFETY: `raw` is the box just given up, valid and unaliased; its entries are read
        // through it, not through a reference that the token would outlive.
        let (list, n) = unsafe { (*raw).as_raw() };
        // SAFETY: A box pointer is not null.
        let token = unsafe { NonNull::new_unchecked(raw.cast::<c_void>()) };
        // SAFETY: `list` holds `n` entries of `*raw` (`OwnedSgList`: for as long as it lives),
        // and `token` is the box of `S` given up above, which `drop_box::<S>` drops.
        let end = unsafe { self.lend(&turn, list, n, token, Some((timeout, drop_box::<S>))) };
        // SAFETY: Unless the device kept it (then the slot holds `token` and nothing is returned
        // here), the memory is ours again and `token` is the box leaked above, taken back once.
        let back = || unsafe { KBox::from_raw(token.as_ptr().cast::<S>()) };
        match end {
            Ok(()) => Ok(back()),
            Err(Lend::Back(err)) => Err(NotReturned {
                err,
                sg: Some(back()),
            }),
            Err(Lend::Kept) => Err(NotReturned {
                err: ETIMEDOUT,
                sg: None,
            }),
        }
    }

    /// The transfer of borrowed memory, in the caller's turn (`turn`
    /// guards `transfer`).
    fn transfer_in_turn<S: SgList>(&self, turn: &MutexGuard<'_, ()>, sg: &S) -> Result {
        let (list, n) = sg.as_raw();
        let token = NonNull::new(list.cast::<c_void>()).ok_or(EINVAL)?;
        // SAFETY: Without a deadline there is nothing to drop.
        unsafe { self.lend(turn, list, n, token, None) }.map_err(|end| match end {
            Lend::Back(err) => err,
            // Without a deadline the lend never ends kept.
            Lend::Kept => EBUSY,
        })
    }

    /// Lends the `n` entries at `list` to the device as device-writable
    /// buffers under `token`, notifies it and sleeps until it gives them
    /// back; with a deadline, for at most that long, after which the slot
    /// keeps the memory and drops it with the given function once the
    /// device has given it back or was reset.
    ///
    /// # Safety
    ///
    /// `list` must hold `n` entries as [`SgList`] requires, for as long as
    /// the device may use them; with a deadline, for as long as the slot
    /// keeps them ([`OwnedSgList`]), and `token` must be what the deadline's
    /// function drops, once.
    unsafe fn lend(
        &self,
        turn: &MutexGuard<'_, ()>,
        list: *mut kernel::bindings::scatterlist,
        n: usize,
        token: NonNull<c_void>,
        deadline: Option<(Delta, DropToken)>,
    ) -> Result<(), Lend> {
        if n == 0 || n > u32::MAX as usize {
            return Err(Lend::Back(EINVAL));
        }
        // A kept memory's return noticed below is dropped after the lock is released (declared
        // before the guard, so dropped after it).
        let mut returned: Option<Kept>;
        let mut s = self
            .slot
            .lock_for(self.generation, TypeId::of::<SgMarker>())
            .map_err(Lend::Back)?;
        if s.kind != QueueKind::Buffers {
            return Err(Lend::Back(EINVAL));
        }
        if s.revoked {
            // Unbinding counts the memory lent and waits for it: lend no more.
            return Err(Lend::Back(ENODEV));
        }
        match s.kept.as_ref().map(Kept::token) {
            Some(old) => {
                // Transfers take turns: only the kept memory can come back.
                let mut len = 0u32;
                // SAFETY: `s.vq` is live (checked by `lock_for`); `len` is writable.
                let used = unsafe { bindings::virtqueue_get_buf(s.vq, &mut len) };
                if used != old.as_ptr() {
                    return Err(Lend::Back(EBUSY));
                }
                s.lent = s.lent.saturating_sub(1);
                returned = s.kept.take();
            }
            None => returned = None,
        }
        // SAFETY: `s.vq` is live (checked by `lock_for`); `list` holds `n` valid entries whose
        // memory the device may write until we take the token back below or the slot keeps it
        // (safety requirements); `token` is unique while queued: transfers take turns (`turn`),
        // kept memory blocks the others until it is back, and this call does not return while
        // its own is queued unless the slot keeps it.
        let ret = unsafe {
            bindings::virtqueue_add_inbuf(
                s.vq,
                list,
                n as u32,
                token.as_ptr(),
                kernel::bindings::GFP_ATOMIC,
            )
        };
        if ret != 0 {
            drop(s);
            drop(returned);
            return Err(Lend::Back(Error::from_errno(ret)));
        }
        s.lent += 1;
        // SAFETY: `s.vq` is live.
        unsafe { bindings::virtqueue_kick(s.vq) };
        let start = Instant::<Monotonic>::now();
        if returned.is_some() {
            // Memory kept before and given back since: freed now, outside the lock (the wait
            // below may be long), not when this transfer ends.
            drop(s);
            drop(returned.take());
            s = self.slot.state.lock();
        }
        // SAFETY: `token` was queued on `s.vq` just above, under this function's safety
        // requirements, and is counted in `lent`.
        let (s, end) = unsafe { self.wait_lent(turn, s, token, deadline, start) };
        drop(s);
        drop(returned);
        end
    }

    /// Sleeps until the device gives back the memory lent under `token` at
    /// `start`, or the device is reset or its queue deleted; with a
    /// deadline, at most until then, after which the slot keeps the memory.
    /// Takes the slot's lock (`s`) and returns it with the outcome.
    ///
    /// # Safety
    ///
    /// [`SgQueue::lend`] queued `token` on the slot's queue, in the turn
    /// `_turn` guards (so nothing else is queued), under its safety
    /// requirements, and counted it in `lent`; with a deadline, `token` is
    /// what the deadline's function drops.
    unsafe fn wait_lent<'s>(
        &'s self,
        _turn: &MutexGuard<'_, ()>,
        mut s: SpinLockIrqGuard<'s, SlotState>,
        token: NonNull<c_void>,
        deadline: Option<(Delta, DropToken)>,
        start: Instant<Monotonic>,
    ) -> (SpinLockIrqGuard<'s, SlotState>, Result<(), Lend>) {
        let end = loop {
            if s.vq.is_null() || s.generation != self.generation {
                // The queue was deleted after a device reset: it no longer uses the memory.
                break Err(Lend::Back(ENODEV));
            }
            if s.reset {
                // The device was reset: it no longer uses the memory. The token may stay in the
                // ring until the queue is deleted, which looks at it only to skip it, and no other
                // lend can queue the same token meanwhile: a live queue is marked reset only by
                // the unbind protocol, after it was revoked (`revoked`: no new lend); otherwise
                // the mark comes with the queue's deletion.
                s.lent = s.lent.saturating_sub(1);
                break Err(Lend::Back(ENODEV));
            }
            let mut len = 0u32;
            // SAFETY: `s.vq` is live; `len` is writable.
            let used = unsafe { bindings::virtqueue_get_buf(s.vq, &mut len) };
            if used == token.as_ptr() {
                s.lent -= 1;
                break Ok(());
            }
            // Transfers take turns, so nothing else is queued: `used` is null.
            let mut slice = Delta::from_millis(100);
            if let Some((timeout, drop)) = deadline {
                let left = timeout
                    .as_nanos()
                    .saturating_sub(start.elapsed().as_nanos());
                if left <= 0 {
                    // INVARIANT: The device has `token`, which `drop` drops (safety requirements);
                    // it stays counted in `lent` until it comes back.
                    s.kept = Some(Kept { token, drop });
                    break Err(Lend::Kept);
                }
                slice = slice.min(Delta::from_nanos(left));
            }
            if self.slot.wait_slice(&mut s, slice) {
                drop(s);
                kernel::time::delay::fsleep(Delta::from_millis(10));
                s = self.slot.state.lock();
            }
        };
        (s, end)
    }
}
