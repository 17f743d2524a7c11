// SPDX-License-Identifier: GPL-2.0

//! Virtqueues with typed, owned buffers.
//!
//! A buffer given to the device ([`Virtqueue::add_outbuf`],
//! [`Virtqueue::add_inbuf`]) moves into the queue and comes back from
//! [`Virtqueue::get_buf`] / [`Virtqueue::wait_buf`], so the memory the device
//! reads or writes cannot be freed or reused while the device owns it.
//! Buffers still queued when the queue is deleted are dropped then, after
//! the device was reset, outside any lock.
//!
//! Each queue has its own IRQ-safe lock, so it can be used from any context
//! and deleted (on unbind or suspend) while another thread holds a handle:
//! operations on a deleted queue fail with [`ENODEV`]. A handle belongs to
//! one incarnation of a queue: after the queues are deleted and created
//! again (resume), an old handle stays dead. Waiting is bounded: a wait ends
//! with [`ETIMEDOUT`], or [`EIO`] as soon as the virtio core marks the queue
//! broken (a device that returned a bogus buffer, or was surprise-removed).
//!
//! Buffer kinds: [`buffer`] (owned, typed), [`sg`] (borrowed scatterlists,
//! one transfer at a time) and [`hint`] (free page hints, not lent).

mod buffer;
mod hint;
mod info;
mod kunit;
mod sg;

pub use buffer::{
    Buffer,
    DataBuffer,
    Rejected,
    Tagged,
    Used, //
};
pub use hint::PageHint;
pub use info::VqInfo;
pub(super) use info::{
    check_free_page_hints,
    QueueKind, //
};
pub use sg::{
    NotReturned,
    OwnedSgList,
    SgList,
    SgQueue, //
};

use crate::{
    bindings,
    compat::{
        new_spinlock_irq,
        SpinLockIrq,
        SpinLockIrqGuard, //
    },
};
use buffer::drop_token;
use core::{
    any::TypeId,
    marker::PhantomData,
    mem::MaybeUninit,
    ptr::{
        self,
        NonNull, //
    },
};
use kernel::{
    ffi::c_void,
    new_condvar, new_mutex,
    prelude::*,
    sync::{
        CondVar,
        CondVarTimeoutResult,
        Mutex, //
    },
    time::{
        delay::fsleep,
        msecs_to_jiffies,
        Delta,
        Instant,
        Monotonic, //
    },
};

/// Bit 0 of a token marks a [`PageHint`]: owned buffers' tokens keep it clear.
const HINT_TAG: usize = 1;

/// How often a waiter looks again whether its queue broke.
const WAIT_SLICE_MS: u32 = 100;

/// The state of one virtqueue slot, under its lock.
///
/// # Invariants
///
/// `vq` is null or a live virtqueue (of the bound device, or a KUnit
/// fixture's ring) that only this slot uses. On a slot of owned buffers,
/// every untagged token queued in `vq` came from `Buffer::into_token` of
/// the type `ty` names, and `drop` drops such a token; tagged tokens are
/// [`PageHint`]s, which own nothing. On a slot of [`SgQueue`] transfers
/// (`drop` is `None`), a queued token is the transfer in progress (borrowed
/// entries, or a leaked box of owned ones), or, while `kept` is `Some`, the
/// kept one alone; `lent` counts them, `kept` included. `revoked`, once
/// set, stays set until the next [`VqSlot::attach`]. `generation` changes
/// whenever `vq` does.
struct SlotState {
    vq: *mut bindings::virtqueue,
    generation: u64,
    kind: QueueKind,
    ty: Option<TypeId>,
    drop: Option<unsafe fn(NonNull<c_void>)>,
    /// Owned buffers queued.
    in_flight: usize,
    /// Borrowed memory the device holds ([`SgQueue`] transfers).
    lent: usize,
    /// The device was reset: it uses no buffer any more.
    reset: bool,
    /// The binding is being revoked: no new borrowed memory is lent.
    revoked: bool,
    /// Owned memory the device kept beyond a bounded transfer (counted in
    /// `lent`): dropped once the device gives it back or the queue is
    /// deleted after a reset.
    kept: Option<sg::Kept>,
    /// A used length beyond a buffer was already reported.
    bad_len_reported: bool,
}

// SAFETY: The virtqueue pointer may be used from any thread; all uses are serialized by the
// slot's lock.
unsafe impl Send for SlotState {}

/// One virtqueue of a bound device: its lock, its used-buffer wait queue,
/// and the lock that lets one borrowed transfer at a time use it.
#[pin_data]
pub(crate) struct VqSlot {
    #[pin]
    state: SpinLockIrq<SlotState>,
    #[pin]
    used: CondVar,
    #[pin]
    transfer: Mutex<()>,
}

impl VqSlot {
    pub(super) fn new() -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            state <- new_spinlock_irq!(SlotState {
                vq: ptr::null_mut(),
                generation: 0,
                kind: QueueKind::Buffers,
                ty: None,
                drop: None,
                in_flight: 0,
                lent: 0,
                reset: false,
                revoked: false,
                kept: None,
                bad_len_reported: false,
            }),
            used <- new_condvar!("virtio::VqSlot::used"),
            transfer <- new_mutex!((), "virtio::VqSlot::transfer"),
        }? Error)
    }

    /// Fixes the queue's token type on first use and returns the queue's
    /// generation: [`ENODEV`] if there is no queue, [`EINVAL`] if it carries
    /// another type.
    fn claim(&self, ty: TypeId, drop: Option<unsafe fn(NonNull<c_void>)>) -> Result<u64> {
        let mut s = self.state.lock();
        if s.vq.is_null() {
            return Err(ENODEV);
        }
        match s.ty {
            None => {
                // INVARIANT: No owned token is queued yet; from now on only tokens of type `ty`
                // are, and `drop` (or nothing, for borrowed tokens) releases them.
                s.ty = Some(ty);
                s.drop = drop;
                Ok(s.generation)
            }
            Some(have) if have == ty => Ok(s.generation),
            Some(_) => Err(EINVAL),
        }
    }

    /// Locks the slot for a handle of `generation` and type `ty`: the
    /// queue must still be that incarnation ([`ENODEV`] otherwise).
    fn lock_for(&self, generation: u64, ty: TypeId) -> Result<SpinLockIrqGuard<'_, SlotState>> {
        let s = self.state.lock();
        if s.vq.is_null() || s.generation != generation {
            return Err(ENODEV);
        }
        // Claimed for this type in this generation (`claim`); checked again, cheaply.
        if s.ty != Some(ty) {
            return Err(EINVAL);
        }
        Ok(s)
    }

    pub(super) fn holds(&self, vq: *mut bindings::virtqueue) -> bool {
        !vq.is_null() && self.state.lock().vq == vq
    }

    pub(super) fn is_live(&self) -> bool {
        !self.state.lock().vq.is_null()
    }

    /// Borrowed memory the device holds, which unbinding must wait for.
    /// Owned memory the device kept ([`SgQueue::try_transfer_owned`]) is
    /// not counted: the slot owns it and drops it once the device is reset.
    pub(super) fn lent(&self) -> usize {
        let s = self.state.lock();
        s.lent - usize::from(s.kept.is_some())
    }

    /// Installs a virtqueue created by `virtio_find_vqs` (or a KUnit
    /// fixture's ring).
    ///
    /// # Safety
    ///
    /// `vq` must be null or a live virtqueue (of the bound device) that
    /// holds no buffer, that nothing but this slot uses, and that stays
    /// valid until [`VqSlot::detach`].
    pub(super) unsafe fn attach(&self, vq: *mut bindings::virtqueue, kind: QueueKind) {
        let mut s = self.state.lock();
        // A deleted queue gave up what it kept (`detach`); should anything be
        // left, it is dropped below, outside the lock (the device is reset).
        let stale = s.kept.take();
        // INVARIANT: `vq` is null or live by the safety requirements; it holds no tokens yet, and
        // the generation changes with it.
        *s = SlotState {
            vq,
            generation: s.generation.wrapping_add(1),
            kind,
            ty: None,
            drop: None,
            in_flight: 0,
            lent: 0,
            reset: false,
            revoked: false,
            kept: None,
            bad_len_reported: false,
        };
        drop(s);
        if stale.is_some() {
            pr_warn!("virtio: a queue was created again with kept memory left; freeing it\n");
        }
    }

    /// Step 1 of the unbind protocol: lends from now on fail with
    /// [`ENODEV`], so that [`VqSlot::lent`] can only go down.
    pub(super) fn revoke(&self) {
        self.state.lock().revoked = true;
    }

    /// The device was reset: wake everyone waiting for it.
    pub(super) fn device_reset(&self) {
        let mut s = self.state.lock();
        s.reset = true;
        self.used.notify_all();
    }

    /// Forgets the virtqueue, wakes waiters, then drops every buffer still
    /// queued (outside the lock). The device must be reset. Returns whether
    /// there was a queue.
    pub(super) fn detach(&self) -> bool {
        let (vq, drop, kept) = {
            let mut s = self.state.lock();
            if s.vq.is_null() {
                return false;
            }
            // The device is reset: memory it kept is ours again, dropped below.
            let taken = (s.vq, s.drop, s.kept.take());
            // INVARIANT: The queue leaves the slot and a new generation begins.
            s.vq = ptr::null_mut();
            s.generation = s.generation.wrapping_add(1);
            s.ty = None;
            s.drop = None;
            s.in_flight = 0;
            s.lent = 0;
            s.reset = true;
            self.used.notify_all();
            taken
        };
        loop {
            // SAFETY: `vq` is live until the transport's `del_vqs`, which our caller runs after
            // this; the device is reset, and no other thread uses `vq` since it left the slot
            // under the lock (every use checks the slot first).
            let token = unsafe { bindings::virtqueue_detach_unused_buf(vq) };
            let Some(token) = NonNull::new(token) else {
                break;
            };
            if token.addr().get() & HINT_TAG != 0
                || kept.as_ref().is_some_and(|k| k.token() == token)
            {
                continue;
            }
            if let Some(drop) = drop {
                // SAFETY: By the type invariant untagged tokens are of the type `drop` handles,
                // and the queue gave this one back exactly once.
                unsafe { drop(token) };
            }
        }
        // After the queue no longer refers to it.
        if kept.is_some() {
            pr_info!("virtio: freeing memory the device kept past a transfer: it was reset\n");
        }
        core::mem::drop(kept);
        true
    }

    /// Ring size (`virtqueue_get_vring_size()`), 0 if there is no queue.
    fn ring_size(&self) -> u32 {
        let s = self.state.lock();
        if s.vq.is_null() {
            return 0;
        }
        // SAFETY: `s.vq` is live (type invariant).
        unsafe { bindings::virtqueue_get_vring_size(s.vq) }
    }

    /// Wakes [`Virtqueue::wait_buf`] callers; called from the queue's
    /// interrupt. Taking the lock orders the wake-up after a waiter's check.
    pub(super) fn notify_used(&self) {
        let _s = self.state.lock();
        self.used.notify_all();
    }

    /// Sleeps on the slot's wait queue for at most `slice`; on a pending
    /// signal (the caller is a process that was signalled) sleeps instead,
    /// so that waits stay bounded and do not spin.
    fn wait_slice(&self, s: &mut SpinLockIrqGuard<'_, SlotState>, slice: Delta) -> bool {
        let ms = u32::try_from(slice.as_millis().max(1)).unwrap_or(WAIT_SLICE_MS);
        matches!(
            self.used
                .wait_interruptible_timeout(s, msecs_to_jiffies(ms)),
            CondVarTimeoutResult::Signal { .. }
        )
    }
}

/// A virtqueue of a bound device that carries buffers of type `B`.
///
/// # Invariants
///
/// The slot was claimed for `B` in generation `generation`.
pub struct Virtqueue<'a, B: Buffer> {
    slot: &'a VqSlot,
    generation: u64,
    _buffers: PhantomData<B>,
}

impl<'a, B: Buffer> Virtqueue<'a, B> {
    pub(super) fn new(slot: &'a VqSlot) -> Result<Self> {
        let generation = slot.claim(TypeId::of::<B>(), Some(drop_token::<B>))?;
        // INVARIANT: Claimed just above.
        Ok(Self {
            slot,
            generation,
            _buffers: PhantomData,
        })
    }

    fn lock(&self) -> Result<SpinLockIrqGuard<'a, SlotState>> {
        self.slot.lock_for(self.generation, TypeId::of::<B>())
    }

    fn add(&self, buf: B, len: usize, device_writes: bool) -> Result<(), Rejected<B>> {
        let (start, size) = buf.region();
        if len == 0 || len > size || len > u32::MAX as usize {
            return Err(Rejected { err: EINVAL, buf });
        }
        let mut s = match self.lock() {
            Ok(s) => s,
            Err(err) => return Err(Rejected { err, buf }),
        };
        let mut sg = MaybeUninit::<kernel::bindings::scatterlist>::zeroed();
        // SAFETY: `sg` is writable; `start..start + len` lies within the buffer's memory in the
        // linear mapping (safety requirements of `Buffer`).
        unsafe {
            kernel::bindings::sg_init_one(sg.as_mut_ptr(), start.as_ptr().cast(), len as u32)
        };
        let token = buf.into_token();
        // SAFETY: `s.vq` is live (type invariant); `sg` was initialized above and describes one
        // entry; `token` keeps the buffer alive until the queue returns it. `GFP_ATOMIC`: we hold
        // a spinlock (and without indirect descriptors nothing is allocated anyway).
        let ret = unsafe {
            if device_writes {
                bindings::virtqueue_add_inbuf(
                    s.vq,
                    sg.as_mut_ptr(),
                    1,
                    token.as_ptr(),
                    kernel::bindings::GFP_ATOMIC,
                )
            } else {
                bindings::virtqueue_add_outbuf(
                    s.vq,
                    sg.as_mut_ptr(),
                    1,
                    token.as_ptr(),
                    kernel::bindings::GFP_ATOMIC,
                )
            }
        };
        if ret != 0 {
            return Err(Rejected {
                err: Error::from_errno(ret),
                // SAFETY: The queue rejected the token, so it is still ours, once.
                buf: unsafe { B::from_token(token) },
            });
        }
        s.in_flight += 1;
        Ok(())
    }

    /// Queues the first `len` bytes of `buf` for the device to read. On
    /// failure the buffer comes back with the error.
    #[doc(alias = "virtqueue_add_outbuf")]
    pub fn add_outbuf(&self, buf: B, len: usize) -> Result<(), Rejected<B>> {
        self.add(buf, len, false)
    }

    /// Queues the first `len` bytes of `buf` for the device to write. On
    /// failure the buffer comes back with the error.
    #[doc(alias = "virtqueue_add_inbuf")]
    pub fn add_inbuf(&self, buf: B, len: usize) -> Result<(), Rejected<B>> {
        self.add(buf, len, true)
    }

    /// Names `hint`'s memory to the device, which may record it (free page
    /// hinting); the memory stays the caller's. Only on a queue created
    /// with [`VqInfo::free_page_hints`] ([`EINVAL`] otherwise).
    pub fn add_hint(&self, hint: PageHint) -> Result {
        let s = self.lock()?;
        if s.kind != QueueKind::FreePageHints {
            return Err(EINVAL);
        }
        let mut sg = MaybeUninit::<kernel::bindings::scatterlist>::zeroed();
        let (start, len) = hint.region();
        // SAFETY: `sg` is writable; `start..start + len` is memory in the linear mapping
        // (invariant of `PageHint`).
        unsafe {
            kernel::bindings::sg_init_one(sg.as_mut_ptr(), start.as_ptr().cast(), len as u32)
        };
        let token = start.as_ptr().map_addr(|a| a | HINT_TAG);
        // SAFETY: `s.vq` is live (type invariant); `sg` describes one entry. The token is tagged,
        // so the queue never drops or returns it as a buffer. The device may only record the
        // pages and, as the balloon's free page hinting allows (virtio spec 5.5.6.8), discard the
        // content of pages the guest has not written since the hint: memory the guest reuses
        // holds whatever the guest writes, so the memory is not lent.
        kernel::error::to_result(unsafe {
            bindings::virtqueue_add_inbuf(
                s.vq,
                sg.as_mut_ptr(),
                1,
                token.cast(),
                kernel::bindings::GFP_ATOMIC,
            )
        })
    }

    /// Notifies the device of new buffers, if it wants to be notified
    /// (`virtqueue_kick_prepare()` + `virtqueue_notify()`). Returns whether
    /// a notification was sent.
    #[doc(alias = "virtqueue_kick")]
    pub fn kick(&self) -> bool {
        let Ok(s) = self.lock() else {
            return false;
        };
        // SAFETY: `s.vq` is live (type invariant); kick_prepare and notify are serialized by our
        // lock as the virtio core requires.
        unsafe { bindings::virtqueue_kick_prepare(s.vq) && bindings::virtqueue_notify(s.vq) }
    }

    fn get_buf_locked(&self, s: &mut SlotState) -> Option<Used<B>> {
        loop {
            let mut len = 0u32;
            // SAFETY: `s.vq` is live (type invariant, checked by `lock`); `len` is writable.
            let token = unsafe { bindings::virtqueue_get_buf(s.vq, &mut len) };
            let token = NonNull::new(token)?;
            if token.addr().get() & HINT_TAG != 0 {
                // A hint the device is done with: nothing to give back.
                continue;
            }
            s.in_flight = s.in_flight.saturating_sub(1);
            // SAFETY: By the type invariant of `SlotState` untagged tokens are `B` tokens, and
            // the queue returns each once.
            let buf = unsafe { B::from_token(token) };
            let size = buf.region().1;
            if len as usize > size {
                if !s.bad_len_reported {
                    s.bad_len_reported = true;
                    pr_warn!(
                        "virtio: device reports {} bytes used in a {}-byte buffer; ignoring the excess\n",
                        len,
                        size
                    );
                }
                len = size as u32;
            }
            return Some(Used { buf, len });
        }
    }

    /// Takes back a buffer the device has used, if any.
    #[doc(alias = "virtqueue_get_buf")]
    pub fn get_buf(&self) -> Option<Used<B>> {
        let mut s = self.lock().ok()?;
        self.get_buf_locked(&mut s)
    }

    /// Sleeps until the device returns a buffer and takes it back.
    ///
    /// Fails with [`ENOENT`] if no buffer is queued, [`EIO`] if the queue
    /// is (or becomes) broken, [`ENODEV`] if it is deleted or the device
    /// reset, and [`ETIMEDOUT`] after `timeout`. The buffers stay queued in
    /// every case but the first two: a later call may still get them.
    pub fn wait_buf(&self, timeout: Delta) -> Result<Used<B>> {
        let start = Instant::<Monotonic>::now();
        loop {
            let mut s = self.lock()?;
            loop {
                if let Some(used) = self.get_buf_locked(&mut s) {
                    return Ok(used);
                }
                if s.reset {
                    return Err(ENODEV);
                }
                // SAFETY: `s.vq` is live (type invariant, checked by `lock`).
                if unsafe { bindings::virtqueue_is_broken(s.vq) } {
                    return Err(EIO);
                }
                if s.in_flight == 0 {
                    return Err(ENOENT);
                }
                let left = timeout
                    .as_nanos()
                    .saturating_sub(start.elapsed().as_nanos());
                if left <= 0 {
                    return Err(ETIMEDOUT);
                }
                let slice =
                    Delta::from_nanos(left).min(Delta::from_millis(i64::from(WAIT_SLICE_MS)));
                if self.slot.wait_slice(&mut s, slice) {
                    break;
                }
                if s.vq.is_null() || s.generation != self.generation {
                    return Err(ENODEV);
                }
            }
            drop(s);
            // Signalled: sleep a little instead of waiting interruptibly.
            fsleep(Delta::from_millis(10));
        }
    }

    /// Number of owned buffers queued and not yet taken back.
    pub fn in_flight(&self) -> usize {
        self.lock().map_or(0, |s| s.in_flight)
    }

    /// Number of free descriptors.
    pub fn num_free(&self) -> u32 {
        let Ok(s) = self.lock() else {
            return 0;
        };
        // SAFETY: `s.vq` is live (type invariant); `num_free` is maintained under our lock.
        unsafe { (*s.vq).num_free }
    }

    /// Ring size (`virtqueue_get_vring_size()`), 0 if the queue is gone.
    #[doc(alias = "virtqueue_get_vring_size")]
    pub fn size(&self) -> u32 {
        self.slot.ring_size()
    }

    /// Whether the virtio core marked the queue broken.
    #[doc(alias = "virtqueue_is_broken")]
    pub fn is_broken(&self) -> bool {
        match self.lock() {
            // SAFETY: `s.vq` is live (type invariant, checked by `lock`).
            Ok(s) => unsafe { bindings::virtqueue_is_broken(s.vq) },
            Err(_) => true,
        }
    }
}
