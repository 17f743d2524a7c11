// SPDX-License-Identifier: GPL-2.0

//! Shrinkers (`include/linux/shrinker.h`): memory reclaim asks a cache how
//! many objects it could free and then asks it to free some.

use super::embed::{
    is_field_of,
    owner_of,
    Embeds, //
};
use core::{
    marker::PhantomData,
    ptr::NonNull, //
};
use kernel::{
    bindings as kb,
    ffi::c_ulong,
    new_mutex,
    prelude::*,
    sync::{
        Arc,
        Mutex, //
    },
};

/// What a shrinker frees.
pub(crate) trait ShrinkHandler: Sync {
    /// Number of pages that could be freed now.
    fn count(&self) -> usize;
    /// Free up to `nr_to_scan` pages; return how many were freed.
    fn scan(&self, nr_to_scan: usize) -> usize;
}

/// A registered `struct shrinker`.
struct Registered(NonNull<kb::shrinker>);

// SAFETY: A shrinker may be freed from any thread.
unsafe impl Send for Registered {}

/// A shrinker embedded in its owner `T`.
///
/// # Invariants
///
/// A registered shrinker's `private_data` points to this field of a live,
/// pinned `T`, and it is freed (`shrinker_free()`, which waits for running
/// callbacks) before the field is dropped.
#[pin_data(PinnedDrop)]
pub(crate) struct Shrinker<T: ShrinkHandler + Embeds<Self>> {
    #[pin]
    raw: Mutex<Option<Registered>>,
    _owner: PhantomData<T>,
}

impl<T: ShrinkHandler + Embeds<Self>> Shrinker<T> {
    /// An unregistered shrinker.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            raw <- new_mutex!(None),
            _owner: PhantomData,
        })
    }

    /// Allocates and registers the shrinker under `name`. `self` must be
    /// the `Shrinker` field of `owner` ([`EINVAL`] otherwise).
    pub(crate) fn register(&self, owner: &Arc<T>, name: &'static CStr) -> Result {
        if !is_field_of(self, owner) {
            return Err(EINVAL);
        }
        let mut raw = self.raw.lock();
        if raw.is_some() {
            return Err(EBUSY);
        }
        // SAFETY: `name` is a NUL-terminated string without format directives.
        let s = NonNull::new(unsafe { kb::shrinker_alloc(0, name.as_char_ptr()) }).ok_or(ENOMEM)?;
        // SAFETY: `s` is a freshly allocated, unregistered shrinker; `self` is pinned inside the
        // `Arc`ed `owner` until `unregister`, which frees the shrinker first.
        unsafe {
            (*s.as_ptr()).count_objects = Some(Self::count_objects);
            (*s.as_ptr()).scan_objects = Some(Self::scan_objects);
            (*s.as_ptr()).private_data = core::ptr::from_ref(self).cast_mut().cast();
            kb::shrinker_register(s.as_ptr());
        }
        // INVARIANT: Registered with `private_data` pointing to `self`.
        *raw = Some(Registered(s));
        Ok(())
    }

    /// Unregisters and frees the shrinker, waiting for running callbacks.
    pub(crate) fn unregister(&self) {
        if let Some(Registered(s)) = self.raw.lock().take() {
            // SAFETY: `s` was registered by `register` and is freed once.
            unsafe { kb::shrinker_free(s.as_ptr()) };
        }
    }

    /// # Safety
    ///
    /// `s` must be a shrinker registered by [`Shrinker::register`].
    unsafe fn owner<'a>(s: *mut kb::shrinker) -> &'a T {
        // SAFETY: By the type invariant `private_data` points to our field of a live `T`.
        unsafe { owner_of::<T, Self>((*s).private_data.cast::<Self>()) }
    }

    extern "C" fn count_objects(s: *mut kb::shrinker, _sc: *mut kb::shrink_control) -> c_ulong {
        // SAFETY: Reclaim calls us with our registered shrinker.
        unsafe { Self::owner(s) }.count() as c_ulong
    }

    extern "C" fn scan_objects(s: *mut kb::shrinker, sc: *mut kb::shrink_control) -> c_ulong {
        // SAFETY: Reclaim passes a valid `shrink_control`.
        let nr = unsafe { (*sc).nr_to_scan };
        // SAFETY: Reclaim calls us with our registered shrinker.
        unsafe { Self::owner(s) }.scan(nr) as c_ulong
    }
}

#[pinned_drop]
impl<T: ShrinkHandler + Embeds<Self>> PinnedDrop for Shrinker<T> {
    fn drop(self: Pin<&mut Self>) {
        self.unregister();
    }
}
