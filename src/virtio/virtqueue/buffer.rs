// SPDX-License-Identifier: GPL-2.0

//! Buffers a virtqueue owns while the device has them.
//!
//! A [`Buffer`] moves into the queue when it is added and comes back when
//! the device has used it, so its memory can be neither freed nor reused
//! while the device may read or write it. Buffers still queued when the
//! queue is deleted are dropped then (after the device was reset).

use core::ptr::NonNull;
use kernel::{
    alloc::{
        allocator::Kmalloc,
        Box, //
    },
    ffi::c_void,
    prelude::*,
    transmute::{
        AsBytes,
        FromBytes, //
    },
};

/// Memory a driver hands to a virtqueue.
///
/// # Safety
///
/// - [`Buffer::region`] must describe memory owned by `self`, in the
///   kernel's linear mapping (what `sg_init_one()` takes: kmalloc or page
///   allocator memory, not vmalloc), that the device may read, or write
///   with any byte pattern, and that stays valid and unused by anyone else
///   from [`Buffer::into_token`] until [`Buffer::from_token`].
/// - [`Buffer::into_token`] must return a pointer with bit 0 clear (queues
///   use bit 0 to tell [`PageHint`](super::PageHint) tokens apart), and
///   [`Buffer::from_token`] must return the buffer it was given for.
/// - Dropping the buffer must not sleep: a queue may drop buffers in any
///   context.
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

/// Plain data a buffer holds (arrays of little-endian integers, packed
/// structures): any byte pattern the device writes is a valid value, and it
/// has no padding the device could read uninitialized.
pub trait DataBuffer: AsBytes + FromBytes + Send + 'static {}

impl<T: AsBytes + FromBytes + Send + 'static> DataBuffer for T {}

// SAFETY:
// - A `KBox<T>` owns a kmalloc'ed `T` (the allocator is fixed to `Kmalloc`: the linear mapping);
//   `region` covers exactly that `T`, which any byte pattern written by the device leaves valid
//   (`FromBytes`) and which has no padding (`AsBytes`).
// - `into_token`/`from_token` are `into_raw`/`from_raw` of the same allocation; kmalloc aligns
//   every object to at least `ARCH_KMALLOC_MINALIGN` (8), so bit 0 is clear. (Zero-sized types,
//   which are not allocated, are rejected at compile time below.)
// - Dropping a `KBox<T>` of plain data is a `kfree()`, which does not sleep.
unsafe impl<T: DataBuffer> Buffer for Box<T, Kmalloc> {
    fn region(&self) -> (NonNull<u8>, usize) {
        (NonNull::from(&**self).cast(), size_of::<T>())
    }

    fn into_token(self) -> NonNull<c_void> {
        const { assert!(size_of::<T>() > 0) };
        // SAFETY: `Box::into_raw` never returns null.
        unsafe { NonNull::new_unchecked(Box::into_raw(self).cast()) }
    }

    unsafe fn from_token(token: NonNull<c_void>) -> Self {
        // SAFETY: By the safety requirements `token` came from `into_raw` of a `KBox<T>`.
        unsafe { Box::from_raw(token.as_ptr().cast()) }
    }
}

/// A [`DataBuffer`] the device sees, plus driver context that travels with
/// it through the queue and comes back with it (for example the pages whose
/// frame numbers the buffer carries, to free once the device has read them).
///
/// The context's `Drop` runs wherever the queue drops the buffer and must
/// not sleep (see [`Buffer`]).
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
// - `region` covers `data`, owned by the kmalloc'ed box: any byte pattern the device writes leaves
//   it valid (`FromBytes`) and it has no padding (`AsBytes`); `ctx` is never exposed to the device.
// - `into_token`/`from_token` are `KBox::into_raw`/`KBox::from_raw` of the same allocation, aligned
//   to at least `align_of::<usize>()` by kmalloc's minimum alignment.
// - Dropping runs `C::drop`, which the type's documentation requires not to sleep, and `kfree()`.
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
    /// Why: [`ENOSPC`] when the ring is full, [`EIO`] when the queue is
    /// broken, [`ENODEV`] when it is gone, [`EINVAL`] for a bad length.
    pub err: Error,
    /// The buffer, still owned by the caller.
    pub buf: B,
}

impl<B> From<Rejected<B>> for Error {
    fn from(r: Rejected<B>) -> Self {
        r.err
    }
}

impl<B> core::fmt::Debug for Rejected<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Rejected({:?})", self.err)
    }
}

/// A buffer the device has used, with the number of bytes it says it
/// wrote, at most the buffer's size (a larger value is clamped and
/// logged by the queue).
pub struct Used<B> {
    /// The buffer, owned by the driver again.
    pub buf: B,
    /// Bytes written by the device.
    pub len: u32,
}

/// Drops the buffer behind a token of type `B`.
///
/// # Safety
///
/// `token` must come from `B::into_token` and be used only once.
pub(super) unsafe fn drop_token<B: Buffer>(token: NonNull<c_void>) {
    // SAFETY: Guaranteed by the safety requirements.
    drop(unsafe { B::from_token(token) });
}
