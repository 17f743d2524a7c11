// SPDX-License-Identifier: GPL-2.0

//! Shrinkers (`include/linux/shrinker.h`): memory reclaim asks a cache how
//! many objects it could free, then asks it to free some.

use core::{
    marker::PhantomPinned,
    ptr::NonNull, //
};
use kernel::{
    bindings as kb,
    ffi::c_ulong,
    prelude::*, //
};

/// What a shrinker frees, in pages.
pub(crate) trait Shrink: Sync {
    /// Number of pages that could be freed now.
    fn count(&self) -> usize;
    /// Free up to `nr_to_scan` pages; return how many were freed.
    fn scan(&self, nr_to_scan: usize) -> usize;
}

/// A shared handler is a handler.
impl<T: Shrink + Send> Shrink for kernel::sync::Arc<T> {
    fn count(&self) -> usize {
        (**self).count()
    }

    fn scan(&self, nr_to_scan: usize) -> usize {
        (**self).scan(nr_to_scan)
    }
}

/// A registered shrinker calling `handler`.
///
/// # Invariants
///
/// `shrinker` was allocated by `shrinker_alloc()` and registered, with
/// `private_data` pointing to this pinned `Registration`; it is freed
/// (`shrinker_free()`, which waits for running callbacks) before the
/// registration goes away.
#[pin_data(PinnedDrop)]
pub(crate) struct Registration<T: Shrink> {
    shrinker: NonNull<kb::shrinker>,
    handler: T,
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: A shrinker may be freed from any thread; the handler is `Sync` and only shared.
unsafe impl<T: Shrink + Send> Send for Registration<T> {}
// SAFETY: As above.
unsafe impl<T: Shrink> Sync for Registration<T> {}

impl<T: Shrink> Registration<T> {
    /// Allocates and registers a shrinker named `name` calling `handler`.
    #[doc(alias = "shrinker_alloc")]
    pub(crate) fn new(name: &'static CStr, handler: T) -> impl PinInit<Self, Error> {
        // SAFETY: The closure initializes every field of `*slot` on success and nothing on
        // failure, and the pointer it publishes (`private_data`) is that of the pinned slot.
        unsafe {
            pin_init::pin_init_from_closure(move |slot: *mut Self| {
                // SAFETY: `shrinker_alloc()` takes a printf format and its arguments (with
                // `CONFIG_SHRINKER_DEBUG` it formats the shrinker's name from them): the format is
                // `"%s"`, whose one argument is the NUL-terminated `name`.
                let s = NonNull::new(kb::shrinker_alloc(
                    0,
                    c"%s".as_char_ptr(),
                    name.as_char_ptr(),
                ))
                .ok_or(ENOMEM)?;
                // Before registering: reclaim may call the shrinker at once.
                core::ptr::addr_of_mut!((*slot).handler).write(handler);
                core::ptr::addr_of_mut!((*slot).shrinker).write(s);
                core::ptr::addr_of_mut!((*slot)._pin).write(PhantomPinned);
                // INVARIANT: Registered with `private_data` pointing to the pinned slot.
                (*s.as_ptr()).count_objects = Some(Self::count_objects);
                (*s.as_ptr()).scan_objects = Some(Self::scan_objects);
                (*s.as_ptr()).private_data = slot.cast();
                kb::shrinker_register(s.as_ptr());
                Ok(())
            })
        }
    }

    /// The name the kernel gave the shrinker (in debugfs, `shrinker/<name>-<id>`).
    #[cfg(CONFIG_SHRINKER_DEBUG)]
    pub(crate) fn name(&self) -> Option<&CStr> {
        // SAFETY: The shrinker is alive (type invariant); with `CONFIG_SHRINKER_DEBUG`
        // `shrinker_alloc()` set `name` to a string it allocated (or left it null), which
        // `shrinker_free()` frees, after `self` is gone.
        let name = unsafe { (*self.shrinker.as_ptr()).name };
        // SAFETY: A non-null `name` is a NUL-terminated string that lives as long as `self`.
        (!name.is_null()).then(|| unsafe { CStr::from_char_ptr(name) })
    }

    /// # Safety
    ///
    /// `s` must be a shrinker registered by [`Registration::new`].
    unsafe fn handler<'a>(s: *mut kb::shrinker) -> &'a T {
        // SAFETY: By the type invariant `private_data` points to a live registration.
        unsafe { &(*(*s).private_data.cast::<Self>()).handler }
    }

    extern "C" fn count_objects(s: *mut kb::shrinker, _sc: *mut kb::shrink_control) -> c_ulong {
        // SAFETY: Reclaim calls us with our registered shrinker.
        unsafe { Self::handler(s) }.count() as c_ulong
    }

    extern "C" fn scan_objects(s: *mut kb::shrinker, sc: *mut kb::shrink_control) -> c_ulong {
        // SAFETY: Reclaim passes a valid `shrink_control`.
        let nr = unsafe { (*sc).nr_to_scan };
        // SAFETY: Reclaim calls us with our registered shrinker.
        unsafe { Self::handler(s) }.scan(nr) as c_ulong
    }
}

#[pinned_drop]
impl<T: Shrink> PinnedDrop for Registration<T> {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: The shrinker was registered by `new` and is freed once, here; this waits for
        // running callbacks.
        unsafe { kb::shrinker_free(self.shrinker.as_ptr()) };
    }
}

#[kunit_tests(virtio_balloon_rs_shrinker)]
mod tests {
    use super::*;

    /// Frees nothing.
    struct Nothing;

    impl Shrink for Nothing {
        fn count(&self) -> usize {
            0
        }

        fn scan(&self, _nr_to_scan: usize) -> usize {
            0
        }
    }

    /// The name is a name, not a format: one with `%s` and `%d` in it is
    /// kept as it is (passed as the format, the kernel would read
    /// arguments that were never passed).
    #[cfg(CONFIG_SHRINKER_DEBUG)]
    #[test]
    fn a_name_with_directives_is_kept_verbatim() -> Result {
        let name = c"vb-kunit-%s-%d-%p";
        let r = KBox::pin_init(Registration::new(name, Nothing), GFP_KERNEL)?;
        assert_eq!(r.name().map(CStr::to_bytes), Some(name.to_bytes()));
        Ok(())
    }

    #[test]
    fn registers_and_unregisters() -> Result {
        let r = KBox::pin_init(Registration::new(c"vb-kunit", Nothing), GFP_KERNEL)?;
        drop(r);
        Ok(())
    }
}
