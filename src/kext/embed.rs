// SPDX-License-Identifier: GPL-2.0

//! Finding the owner of an embedded C structure from a callback.
//!
//! C callbacks (balloon migration, OOM notifier, page reporting) receive a
//! pointer to a structure the driver embeds in its own state and use
//! `container_of()` to get back to it. [`Embeds`] records where a field
//! lives in its owner, and [`impl_embeds!`](crate::impl_embeds) implements
//! it so that the offset always names a field of the right type.

use kernel::{
    prelude::*,
    sync::{
        atomic::{
            Atomic,
            Relaxed, //
        },
        Arc,
    },
};

/// `Self` contains a field of type `F` at offset [`Embeds::OFFSET`].
///
/// # Safety
///
/// `OFFSET` must be the offset of a field of type `F` in `Self`. Use
/// [`impl_embeds!`](crate::impl_embeds).
pub(crate) unsafe trait Embeds<F>: Sized {
    /// Offset of the field.
    const OFFSET: usize;
}

/// Returns the owner of the embedded `field`.
///
/// # Safety
///
/// `field` must point to the `F` field of a live `T`, which must stay alive
/// for `'a`.
pub(crate) unsafe fn owner_of<'a, T: Embeds<F>, F>(field: *const F) -> &'a T {
    // SAFETY: By the safety requirements `field` lies `T::OFFSET` bytes into a live `T`.
    unsafe { &*field.cast::<u8>().sub(T::OFFSET).cast::<T>() }
}

/// Whether `field` is the `F` field of `owner`.
///
/// Registrations check this before they hand `field` to C: a kernel `Arc`
/// never moves its contents, so `field` then stays put, inside a live `T`,
/// for as long as `owner` (or a clone of it) exists.
pub(crate) fn is_field_of<T: Embeds<F>, F>(field: &F, owner: &Arc<T>) -> bool {
    let owner: *const T = &**owner;
    core::ptr::eq(
        core::ptr::from_ref(field).cast::<u8>(),
        owner.cast::<u8>().wrapping_add(T::OFFSET),
    )
}

/// Whether a C registration embedded in its owner is live: the state and
/// checks shared by [`OomNotifier`](super::oom::OomNotifier) and
/// [`PageReporting`](super::page_reporting::PageReporting).
pub(crate) struct Registration(Atomic<bool>);

impl Registration {
    /// Not registered.
    pub(crate) fn new() -> Self {
        Self(Atomic::new(false))
    }

    /// Registers `field` of `owner` with `register` and records it:
    /// [`EINVAL`] if `field` is not `owner`'s, [`EBUSY`] if registered
    /// already, else what `register` returns.
    pub(crate) fn register<T: Embeds<F>, F>(
        &self,
        field: &F,
        owner: &Arc<T>,
        register: impl FnOnce() -> Result,
    ) -> Result {
        if !is_field_of(field, owner) {
            return Err(EINVAL);
        }
        if self.0.load(Relaxed) {
            return Err(EBUSY);
        }
        register()?;
        // INVARIANT: Set only once `register` succeeded, cleared before `unregister` runs: the
        // embedding types' "registered" invariants follow this flag.
        self.0.store(true, Relaxed);
        Ok(())
    }

    /// Calls `unregister` if registered, and forgets the registration.
    pub(crate) fn unregister(&self, unregister: impl FnOnce()) {
        if self.0.xchg(false, Relaxed) {
            unregister();
        }
    }
}

/// Implements [`Embeds`] for each named field of `$owner`.
///
/// ```ignore
/// impl_embeds!(Balloon { pages: BalloonDevInfo<Balloon>, oom: OomNotifier<Balloon> });
/// ```
#[macro_export]
macro_rules! impl_embeds {
    ($owner:ty { $($field:ident: $fty:ty),* $(,)? }) => {$(
        // SAFETY: `check` only compiles if `$field` is a field of type `$fty`, and `offset_of!`
        // gives its offset.
        unsafe impl $crate::kext::embed::Embeds<$fty> for $owner {
            const OFFSET: usize = {
                #[allow(dead_code)]
                fn check(o: &$owner) -> &$fty {
                    &o.$field
                }
                ::core::mem::offset_of!($owner, $field)
            };
        }
    )*};
}
