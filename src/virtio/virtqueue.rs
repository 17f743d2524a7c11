// SPDX-License-Identifier: GPL-2.0

//! Virtqueues with typed, owned buffers.
//!
//! A buffer given to the device ([`Virtqueue::add_outbuf`],
//! [`Virtqueue::add_inbuf`]) moves into the queue and comes back from
//! [`Virtqueue::get_buf`] / [`Virtqueue::wait_buf`], so the memory the device
//! reads or writes cannot be freed or reused while the device owns it.
//! Buffers still queued when the queues are deleted are dropped then.
//!
//! Each queue is protected by its own IRQ-safe lock, so it can be used from
//! any context; [`Virtqueue::wait_buf`] sleeps until the device returns a
//! buffer, woken by the queue's interrupt (the Rust form of C's
//! `wait_event(wq, virtqueue_get_buf(vq, &len))`).

use crate::bindings;
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
    alloc::{
        Allocator,
        Box, //
    },
    ffi::c_void,
    new_condvar, new_spinlock_irq,
    prelude::*,
    sync::{
        CondVar,
        SpinLockIrq, //
    },
    transmute::{
        AsBytes,
        FromBytes, //
    },
};

/// Description of one virtqueue for [`Device::find_vqs`](super::Device::find_vqs).
#[derive(Clone, Copy)]
pub struct VqInfo {
    /// Queue name, or `None` for a queue the driver does not use.
    pub name: Option<&'static CStr>,
    /// Whether the driver wants [`Driver::vq_callback`](super::Driver::vq_callback)
    /// (and [`Virtqueue::wait_buf`] wake-ups) for this queue.
    pub callback: bool,
}

impl VqInfo {
    /// A used queue with callbacks.
    pub const fn new(name: &'static CStr) -> Self {
        Self {
            name: Some(name),
            callback: true,
        }
    }

    /// A used queue without callbacks (the driver polls it).
    pub const fn polled(name: &'static CStr) -> Self {
        Self {
            name: Some(name),
            callback: false,
        }
    }

    /// A queue slot the driver leaves unused (for example, feature not negotiated).
    pub const UNUSED: Self = Self {
        name: None,
        callback: false,
    };
}

/// Memory a driver hands to a virtqueue.
///
/// # Safety
///
/// - [`Buffer::region`] must describe memory owned by `self`, valid for
///   reads and writes by the device, in the kernel's linear mapping, that
///   stays valid and unused by anyone else from [`Buffer::into_token`] until
///   [`Buffer::from_token`].
/// - [`Buffer::from_token`] must return the buffer [`Buffer::into_token`]
///   gave the token for.
pub unsafe trait Buffer: Send + 'static {
    /// Start and length in bytes of the memory the device may access.
    fn region(&self) -> (NonNull<u8>, usize);

    /// Gives up ownership; the token identifies the buffer to the queue.
    fn into_token(self) -> NonNull<c_void>;

    /// Takes ownership back.
    ///
    /// # Safety
    ///
    /// `token` must come from [`Buffer::into_token`] of the same type and be
    /// used only once.
    unsafe fn from_token(token: NonNull<c_void>) -> Self;
}

/// Plain data buffers (arrays of little-endian integers, packed structures)
/// that virtqueues carry, boxed so the device sees stable memory.
pub trait DataBuffer: AsBytes + FromBytes + Send + 'static {}

impl<T: AsBytes + FromBytes + Send + 'static> DataBuffer for T {}

// SAFETY:
// - A `KBox<T>` owns a kmalloc'ed `T` in the linear mapping; `region` covers exactly that `T`,
//   which any byte pattern written by the device leaves valid (`FromBytes`) and which has no
//   padding the device could read uninitialized (`AsBytes`).
// - `into_token`/`from_token` are `KBox::into_raw`/`KBox::from_raw` of the same allocation.
unsafe impl<T: DataBuffer, A: Allocator + 'static> Buffer for Box<T, A>
where
    Box<T, A>: Send,
{
    fn region(&self) -> (NonNull<u8>, usize) {
        (NonNull::from(&**self).cast(), size_of::<T>())
    }

    fn into_token(self) -> NonNull<c_void> {
        // SAFETY: `Box::into_raw` never returns null.
        unsafe { NonNull::new_unchecked(Box::into_raw(self).cast()) }
    }

    unsafe fn from_token(token: NonNull<c_void>) -> Self {
        // SAFETY: By the safety requirements `token` came from `into_raw` of a `Box<T, A>`.
        unsafe { Box::from_raw(token.as_ptr().cast()) }
    }
}

/// A [`DataBuffer`] the device sees, plus driver context that travels with
/// it through the queue and comes back with it (for example the pages whose
/// frame numbers the buffer carries, to free once the device has read them).
pub struct Tagged<D: DataBuffer, C: Send + 'static>(KBox<TaggedInner<D, C>>);

struct TaggedInner<D, C> {
    data: D,
    ctx: C,
}

impl<D: DataBuffer, C: Send + 'static> Tagged<D, C> {
    /// Boxes `data` and `ctx` together.
    pub fn new(data: D, ctx: C, flags: kernel::alloc::Flags) -> Result<Self> {
        Ok(Self(KBox::new(TaggedInner { data, ctx }, flags)?))
    }

    /// The part the device sees.
    pub fn data(&mut self) -> &mut D {
        &mut self.0.data
    }

    /// The driver's context.
    pub fn ctx(&mut self) -> &mut C {
        &mut self.0.ctx
    }

    /// Both at once.
    pub fn parts(&mut self) -> (&mut D, &mut C) {
        let inner = &mut *self.0;
        (&mut inner.data, &mut inner.ctx)
    }
}

// SAFETY:
// - `region` covers `data`, owned by the box: any byte pattern the device writes leaves it valid
//   (`FromBytes`) and it has no padding (`AsBytes`); `ctx` is never exposed to the device.
// - `into_token`/`from_token` are `KBox::into_raw`/`KBox::from_raw` of the same allocation.
unsafe impl<D: DataBuffer, C: Send + 'static> Buffer for Tagged<D, C> {
    fn region(&self) -> (NonNull<u8>, usize) {
        (NonNull::from(&self.0.data).cast(), size_of::<D>())
    }

    fn into_token(self) -> NonNull<c_void> {
        // SAFETY: `KBox::into_raw` never returns null.
        unsafe { NonNull::new_unchecked(KBox::into_raw(self.0).cast()) }
    }

    unsafe fn from_token(token: NonNull<c_void>) -> Self {
        // SAFETY: By the safety requirements `token` came from `into_raw` of this box type.
        Self(unsafe { KBox::from_raw(token.as_ptr().cast()) })
    }
}

/// A buffer the queue did not accept, returned with the reason.
pub struct Rejected<B> {
    /// Why: [`ENOSPC`] when the ring is full, [`ENODEV`] when the queue is
    /// gone, [`EINVAL`] for a bad length.
    pub err: Error,
    /// The buffer, still owned by the caller.
    pub buf: B,
}

impl<B> From<Rejected<B>> for Error {
    fn from(r: Rejected<B>) -> Self {
        r.err
    }
}

/// Drops the buffer behind a token of type `B`.
///
/// # Safety
///
/// `token` must come from `B::into_token` and be used only once.
unsafe fn drop_token<B: Buffer>(token: NonNull<c_void>) {
    // SAFETY: Guaranteed by the safety requirements.
    drop(unsafe { B::from_token(token) });
}

/// The state of one virtqueue slot, under its lock.
///
/// # Invariants
///
/// `vq` is null or a live virtqueue of the bound device. Every token queued
/// in `vq` came from `Buffer::into_token` of the type `ty` names, and `drop`
/// drops such a token.
struct SlotState {
    vq: *mut bindings::virtqueue,
    ty: Option<TypeId>,
    drop: Option<unsafe fn(NonNull<c_void>)>,
    in_flight: usize,
}

// SAFETY: The virtqueue pointer may be used from any thread; all uses are serialized by the
// slot's lock.
unsafe impl Send for SlotState {}

/// One virtqueue of a bound device: its lock and its used-buffer wait queue.
#[pin_data]
pub(crate) struct VqSlot {
    #[pin]
    state: SpinLockIrq<SlotState>,
    #[pin]
    used: CondVar,
}

impl VqSlot {
    pub(super) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            state <- new_spinlock_irq!(SlotState {
                vq: ptr::null_mut(),
                ty: None,
                drop: None,
                in_flight: 0,
            }),
            used <- new_condvar!("virtio::VqSlot::used"),
        })
    }

    /// Fixes the queue's token type on first use: [`ENODEV`] if there is no
    /// queue, [`EINVAL`] if it already carries another type.
    fn claim(&self, ty: TypeId, drop: Option<unsafe fn(NonNull<c_void>)>) -> Result {
        let mut s = self.state.lock();
        if s.vq.is_null() {
            return Err(ENODEV);
        }
        match s.ty {
            None => {
                // INVARIANT: No token is queued yet; from now on only tokens of type `ty` are,
                // and `drop` (or nothing, for borrowed tokens) releases them.
                s.ty = Some(ty);
                s.drop = drop;
                Ok(())
            }
            Some(have) if have == ty => Ok(()),
            Some(_) => Err(EINVAL),
        }
    }

    pub(super) fn holds(&self, vq: *mut bindings::virtqueue) -> bool {
        !vq.is_null() && self.state.lock().vq == vq
    }

    pub(super) fn is_live(&self) -> bool {
        !self.state.lock().vq.is_null()
    }

    /// Installs a virtqueue created by `virtio_find_vqs`.
    ///
    /// # Safety
    ///
    /// `vq` must be null or a virtqueue of the bound device that stays valid
    /// until [`VqSlot::detach`].
    pub(super) unsafe fn attach(&self, vq: *mut bindings::virtqueue) {
        let mut s = self.state.lock();
        // INVARIANT: `vq` is null or live by the safety requirements; it holds no tokens yet.
        *s = SlotState {
            vq,
            ty: None,
            drop: None,
            in_flight: 0,
        };
    }

    /// Drops every buffer still queued and forgets the virtqueue, waking
    /// waiters. The device must be reset. Returns whether there was a queue.
    pub(super) fn detach(&self) -> bool {
        let mut s = self.state.lock();
        if s.vq.is_null() {
            return false;
        }
        loop {
            // SAFETY: `s.vq` is live (type invariant) and the device is reset, so no buffer is
            // in use by it.
            let token = unsafe { bindings::virtqueue_detach_unused_buf(s.vq) };
            let Some(token) = NonNull::new(token) else {
                break;
            };
            if let Some(drop) = s.drop {
                // SAFETY: By the type invariant queued tokens are of the type `drop` handles,
                // and the queue gave this one back exactly once.
                unsafe { drop(token) };
            }
        }
        s.vq = ptr::null_mut();
        s.in_flight = 0;
        self.used.notify_all();
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

    /// Wakes [`Virtqueue::wait_buf`] callers; called from the queue's interrupt.
    pub(super) fn notify_used(&self) {
        let _s = self.state.lock();
        self.used.notify_all();
    }
}

/// A virtqueue of a bound device that carries buffers of type `B`.
pub struct Virtqueue<'a, B: Buffer> {
    slot: &'a VqSlot,
    _buffers: PhantomData<B>,
}

impl<'a, B: Buffer> Virtqueue<'a, B> {
    pub(super) fn new(slot: &'a VqSlot) -> Result<Self> {
        slot.claim(TypeId::of::<B>(), Some(drop_token::<B>))?;
        Ok(Self {
            slot,
            _buffers: PhantomData,
        })
    }

    fn add(&self, buf: B, len: usize, device_writes: bool) -> Result<(), Rejected<B>> {
        let (start, size) = buf.region();
        if len == 0 || len > size || len > u32::MAX as usize {
            return Err(Rejected { err: EINVAL, buf });
        }
        let mut s = self.slot.state.lock();
        if s.vq.is_null() {
            return Err(Rejected { err: ENODEV, buf });
        }
        let mut sg = MaybeUninit::<kernel::bindings::scatterlist>::zeroed();
        // SAFETY: `sg` is writable; `start..start + len` lies within the buffer's memory in the
        // linear mapping (safety requirements of `Buffer`).
        unsafe {
            kernel::bindings::sg_init_one(sg.as_mut_ptr(), start.as_ptr().cast(), len as u32)
        };
        let token = buf.into_token();
        // SAFETY: `s.vq` is live (type invariant); `sg` was initialized above and describes one
        // entry; `token` keeps the buffer alive until the queue returns it. `GFP_ATOMIC`: we hold
        // a spinlock.
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
    pub fn add_outbuf(&self, buf: B, len: usize) -> Result<(), Rejected<B>> {
        self.add(buf, len, false)
    }

    /// Queues the first `len` bytes of `buf` for the device to write. On
    /// failure the buffer comes back with the error.
    pub fn add_inbuf(&self, buf: B, len: usize) -> Result<(), Rejected<B>> {
        self.add(buf, len, true)
    }

    /// Notifies the device of new buffers, if it wants to be notified
    /// (`virtqueue_kick_prepare()` + `virtqueue_notify()`). Returns whether
    /// a notification was sent.
    pub fn kick(&self) -> bool {
        let s = self.slot.state.lock();
        if s.vq.is_null() {
            return false;
        }
        // SAFETY: `s.vq` is live (type invariant); kick_prepare and notify are serialized by our
        // lock as the virtio core requires.
        unsafe { bindings::virtqueue_kick_prepare(s.vq) && bindings::virtqueue_notify(s.vq) }
    }

    fn get_buf_locked(s: &mut SlotState) -> Option<(B, u32)> {
        if s.vq.is_null() {
            return None;
        }
        let mut len = 0u32;
        // SAFETY: `s.vq` is live (type invariant); `len` is writable.
        let token = unsafe { bindings::virtqueue_get_buf(s.vq, &mut len) };
        let token = NonNull::new(token)?;
        s.in_flight = s.in_flight.saturating_sub(1);
        // SAFETY: By the type invariant of `SlotState` queued tokens are `B` tokens, and the
        // queue returns each once.
        Some((unsafe { B::from_token(token) }, len))
    }

    /// Takes back a buffer the device has used, with the number of bytes it
    /// reports having written (device-controlled: validate before use).
    pub fn get_buf(&self) -> Option<(B, u32)> {
        Self::get_buf_locked(&mut self.slot.state.lock())
    }

    /// Sleeps until the device returns a buffer and takes it back.
    ///
    /// Fails with [`ENOENT`] if no buffer is queued and with [`ENODEV`] if
    /// the queue is deleted meanwhile.
    pub fn wait_buf(&self) -> Result<(B, u32)> {
        let mut s = self.slot.state.lock();
        loop {
            if let Some(used) = Self::get_buf_locked(&mut s) {
                return Ok(used);
            }
            if s.vq.is_null() {
                return Err(ENODEV);
            }
            if s.in_flight == 0 {
                return Err(ENOENT);
            }
            self.slot.used.wait(&mut s);
        }
    }

    /// Number of buffers queued and not yet taken back.
    pub fn in_flight(&self) -> usize {
        self.slot.state.lock().in_flight
    }

    /// Number of free descriptors.
    pub fn num_free(&self) -> u32 {
        let s = self.slot.state.lock();
        if s.vq.is_null() {
            return 0;
        }
        // SAFETY: `s.vq` is live (type invariant); `num_free` is maintained under our lock.
        unsafe { (*s.vq).num_free }
    }

    /// Ring size (`virtqueue_get_vring_size()`), 0 if the queue is gone.
    pub fn size(&self) -> u32 {
        self.slot.ring_size()
    }
}

/// A scatterlist of memory borrowed for one device-writable transfer.
///
/// # Safety
///
/// [`SgList::as_raw`] must return a valid array of that many initialized
/// scatterlist entries, describing memory in the linear mapping that the
/// device may write and nobody else uses while `self` is borrowed.
pub unsafe trait SgList {
    /// The entries and their number.
    fn as_raw(&self) -> (*mut kernel::bindings::scatterlist, usize);
}

/// Type marker of queues used through [`SgQueue`].
struct SgMarker;

/// A virtqueue that carries borrowed scatterlists, one transfer at a time
/// (for example free page reporting).
pub struct SgQueue<'a> {
    slot: &'a VqSlot,
}

impl<'a> SgQueue<'a> {
    pub(super) fn new(slot: &'a VqSlot) -> Result<Self> {
        // Tokens of this queue are borrowed scatterlists: nothing to drop.
        slot.claim(TypeId::of::<SgMarker>(), None)?;
        Ok(Self { slot })
    }

    /// Ring size, the most entries one transfer can have.
    pub fn size(&self) -> u32 {
        self.slot.ring_size()
    }

    /// Hands `sg` to the device as device-writable buffers, notifies it and
    /// sleeps until the device has returned them.
    ///
    /// Fails with [`ENOSPC`] if the ring has fewer free descriptors than
    /// entries, and with [`ENODEV`] if the queue is deleted meanwhile.
    pub fn transfer_inbuf<S: SgList>(&self, sg: &S) -> Result {
        let (list, n) = sg.as_raw();
        if n == 0 || n > u32::MAX as usize {
            return Err(EINVAL);
        }
        let token = NonNull::new(list.cast::<c_void>()).ok_or(EINVAL)?;
        let mut s = self.slot.state.lock();
        if s.vq.is_null() {
            return Err(ENODEV);
        }
        // SAFETY: `s.vq` is live (type invariant); `list` holds `n` valid entries whose memory the
        // device may write until we take the token back below (safety requirements of `SgList`);
        // `token` is unique while queued because this call does not return before it comes back.
        kernel::error::to_result(unsafe {
            bindings::virtqueue_add_inbuf(
                s.vq,
                list,
                n as u32,
                token.as_ptr(),
                kernel::bindings::GFP_ATOMIC,
            )
        })?;
        s.in_flight += 1;
        // SAFETY: `s.vq` is live.
        unsafe { bindings::virtqueue_kick(s.vq) };
        loop {
            if s.vq.is_null() {
                // The queue was deleted after a device reset: the device no longer uses `sg`.
                return Err(ENODEV);
            }
            let mut len = 0u32;
            // SAFETY: `s.vq` is live; `len` is writable.
            let used = unsafe { bindings::virtqueue_get_buf(s.vq, &mut len) };
            if !used.is_null() {
                s.in_flight = s.in_flight.saturating_sub(1);
                if used == token.as_ptr() {
                    return Ok(());
                }
                // Another transfer's token (not possible with one caller at a time); it
                // carries nothing to release.
                continue;
            }
            self.slot.used.wait(&mut s);
        }
    }
}
