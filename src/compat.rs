// SPDX-License-Identifier: GPL-2.0

//! What differs between the kernels this module builds against, in one
//! place.
//!
//! Kbuild sets `--cfg kernel_before_7_3` for kernels older than 7.3;
//! everything else in the crate is written against the 7.3 API and reaches
//! the few items that differ through this module:
//!
//! | item | 7.3 | 7.2 |
//! |---|---|---|
//! | [`SpinLockIrq`] | `kernel::sync` | a lock backend here, over `spin_lock_irqsave()` |
//! | [`Srcu`] | `kernel::sync::srcu` | the same API here, over the C functions |
//! | module parameter values ([`Param`]) | `value()` returns `T` | `value()` returns `&T` |
//! | raw id tables ([`__compat_raw_device_table!`](crate::__compat_raw_device_table)) | `module_device_table!(bus, Id, TABLE, @none, [..])` | `IdArray::new_without_index` + `module_device_table!(bus, NAME, TABLE)` |
//!
//! Linux 6.12 lacks what a sound driver of this shape needs (`Kbuild`
//! refuses it with the list); older 7.x releases were not tried.

#[cfg(not(kernel_before_7_3))]
pub(crate) use kernel::{
    new_spinlock_irq,
    sync::{
        SpinLockIrq,
        SpinLockIrqGuard, //
    },
};

#[cfg(kernel_before_7_3)]
pub(crate) use irq_lock::{
    new_spinlock_irq,
    SpinLockIrq,
    SpinLockIrqGuard, //
};

/// An interrupt-safe spin lock for 7.2, whose Rust API has none: the same
/// `kernel::sync::Lock` with a backend that disables interrupts
/// (`spin_lock_irqsave()`), as 7.3's `SpinLockIrq` does.
#[cfg(kernel_before_7_3)]
mod irq_lock {
    use crate::bindings;
    use kernel::{
        bindings as kb,
        ffi::{
            c_char,
            c_ulong, //
        },
        sync::lock::{
            Backend,
            Guard,
            Lock, //
        },
    };

    /// A spin lock taken with interrupts disabled.
    pub(crate) type SpinLockIrq<T> = Lock<T, IrqSaveBackend>;
    /// Its guard.
    pub(crate) type SpinLockIrqGuard<'a, T> = Guard<'a, T, IrqSaveBackend>;

    /// Creates a [`SpinLockIrq`] initialiser with a new lock class.
    macro_rules! new_spinlock_irq {
        ($inner:expr $(, $name:literal)? $(,)?) => {
            $crate::compat::SpinLockIrq::new(
                $inner,
                ::kernel::optional_name!($($name)?),
                ::kernel::static_lock_class!(),
            )
        };
    }
    pub(crate) use new_spinlock_irq;

    /// `spinlock_t`, locked with `spin_lock_irqsave()`.
    pub(crate) struct IrqSaveBackend;

    // SAFETY: `lock` and `try_lock` take the spin lock with interrupts disabled and `unlock`
    // releases it restoring the saved state; `relock` (the default) locks the same way. A spin
    // lock is a mutual exclusion primitive.
    unsafe impl Backend for IrqSaveBackend {
        type State = kb::spinlock_t;
        type GuardState = c_ulong;

        unsafe fn init(ptr: *mut Self::State, name: *const c_char, key: *mut kb::lock_class_key) {
            // SAFETY: The safety requirements ensure that `ptr` is valid for writes, and `name`
            // and `key` are valid for read indefinitely.
            unsafe { kb::__spin_lock_init(ptr, name, key) }
        }

        unsafe fn lock(ptr: *mut Self::State) -> Self::GuardState {
            // SAFETY: The safety requirements ensure that `ptr` is a valid, initialized lock.
            unsafe { bindings::rust_vb_spin_lock_irqsave(ptr) }
        }

        unsafe fn try_lock(ptr: *mut Self::State) -> Option<Self::GuardState> {
            let mut flags: c_ulong = 0;
            // SAFETY: As for `lock`; `flags` is writable.
            let locked = unsafe { bindings::rust_vb_spin_trylock_irqsave(ptr, &mut flags) };
            (locked != 0).then_some(flags)
        }

        unsafe fn unlock(ptr: *mut Self::State, guard_state: &Self::GuardState) {
            // SAFETY: The safety requirements ensure that the caller owns the lock, taken by
            // `lock` or `try_lock`, which returned `guard_state`.
            unsafe { bindings::rust_vb_spin_unlock_irqrestore(ptr, *guard_state) }
        }

        unsafe fn assert_is_held(ptr: *mut Self::State) {
            // SAFETY: The safety requirements ensure that `ptr` is a valid, initialized lock.
            unsafe { kb::spin_assert_is_held(ptr) }
        }
    }
}

/// Sleepable RCU: `kernel::sync::srcu` (7.3); on 7.2, which does not have
/// it, the same API over the C functions.
pub(crate) mod srcu {
    #[cfg(not(kernel_before_7_3))]
    pub(crate) use kernel::{
        new_srcu,
        sync::srcu::{
            Guard,
            Srcu, //
        },
    };

    #[cfg(kernel_before_7_3)]
    pub(crate) use own::{
        new_srcu,
        Guard,
        Srcu, //
    };

    #[cfg(kernel_before_7_3)]
    mod own {
        use crate::bindings;
        use core::marker::PhantomData;
        use kernel::{
            bindings as kb,
            error::to_result,
            prelude::*,
            sync::LockClassKey,
            types::Opaque, //
        };

        /// Creates an [`Srcu`] initialiser with a new lock class.
        macro_rules! new_srcu {
            ($($name:literal)?) => {
                $crate::compat::srcu::Srcu::new(
                    ::kernel::optional_name!($($name)?),
                    ::kernel::static_lock_class!(),
                )
            };
        }
        pub(crate) use new_srcu;

        /// Sleepable read-copy update (`struct srcu_struct`).
        ///
        /// # Invariants
        ///
        /// `inner` was initialized by `init_srcu_struct()` and stays pinned
        /// until `PinnedDrop` cleans it up.
        #[pin_data(PinnedDrop)]
        pub(crate) struct Srcu {
            #[pin]
            inner: Opaque<kb::srcu_struct>,
        }

        // SAFETY: An `srcu_struct` may be shared and used across threads.
        unsafe impl Send for Srcu {}
        // SAFETY: An `srcu_struct` may be used concurrently.
        unsafe impl Sync for Srcu {}

        impl Srcu {
            /// Creates an SRCU instance.
            pub(crate) fn new(
                name: &'static CStr,
                key: Pin<&'static LockClassKey>,
            ) -> impl PinInit<Self, Error> {
                try_pin_init!(Self {
                    // INVARIANT: Initialized on success.
                    inner <- Opaque::try_ffi_init(|ptr: *mut kb::srcu_struct| {
                        // SAFETY: `ptr` is valid for writes of an `srcu_struct`; `name` and
                        // `key` are `'static`.
                        to_result(unsafe {
                            bindings::rust_vb_init_srcu_struct(
                                ptr.cast(),
                                name.as_char_ptr(),
                                key.as_ptr(),
                            )
                        })
                    }),
                }? Error)
            }

            /// Enters a read-side critical section.
            pub(crate) fn read_lock(&self) -> Guard<'_> {
                // SAFETY: `inner` is initialized (type invariant).
                let idx = unsafe { bindings::srcu_read_lock(self.inner.get().cast()) };
                // INVARIANT: `idx` came from `srcu_read_lock()` on this `Srcu`.
                Guard {
                    srcu: self,
                    idx,
                    _not_send: PhantomData,
                }
            }

            /// Waits until all pre-existing readers have finished.
            pub(crate) fn synchronize(&self) {
                // SAFETY: `inner` is initialized (type invariant).
                unsafe { bindings::synchronize_srcu(self.inner.get().cast()) };
            }
        }

        #[pinned_drop]
        impl PinnedDrop for Srcu {
            fn drop(self: Pin<&mut Self>) {
                let ptr = self.inner.get().cast();
                // SAFETY: `inner` is initialized (type invariant); no reader is left (guards
                // borrow the `Srcu`), so callbacks are waited for and the struct cleaned up.
                unsafe {
                    bindings::srcu_barrier(ptr);
                    bindings::cleanup_srcu_struct(ptr);
                }
            }
        }

        /// An active read-side critical section.
        ///
        /// # Invariants
        ///
        /// `idx` is what `srcu_read_lock()` returned for `srcu`.
        pub(crate) struct Guard<'a> {
            srcu: &'a Srcu,
            idx: core::ffi::c_int,
            _not_send: PhantomData<*mut ()>,
        }

        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                // SAFETY: `idx` came from `srcu_read_lock()` on this `Srcu` (type invariant).
                unsafe { bindings::srcu_read_unlock(self.srcu.inner.get().cast(), self.idx) };
            }
        }
    }
}

/// Reading a module parameter's value.
pub(crate) trait Param<T: Copy> {
    /// The current value.
    fn get(&self) -> T;
}

#[cfg(not(kernel_before_7_3))]
impl<T: Copy> Param<T> for kernel::module_param::ModuleParamAccess<T> {
    fn get(&self) -> T {
        self.value()
    }
}

#[cfg(kernel_before_7_3)]
impl<T: Copy> Param<T> for kernel::module_param::ModuleParamAccess<T> {
    fn get(&self) -> T {
        *self.value()
    }
}

/// Declares `$table_name`, the raw id table modpost reads (with its
/// terminating entry), of device ids of type `$dev` for bus `$bus`.
#[cfg(not(kernel_before_7_3))]
#[doc(hidden)]
#[macro_export]
macro_rules! __compat_raw_device_table {
    ($bus:literal, $dev:ty, $table_name:ident, [$($id:expr),* $(,)?]) => {
        ::kernel::module_device_table!($bus, $dev, $table_name, @none, [$($id),*]);
    };
}

/// Declares `$table_name`, the raw id table modpost reads (with its
/// terminating entry), of device ids of type `$dev` for bus `$bus`.
#[cfg(kernel_before_7_3)]
#[doc(hidden)]
#[macro_export]
macro_rules! __compat_raw_device_table {
    ($bus:literal, $dev:ty, $table_name:ident, [$($id:expr),* $(,)?]) => {
        static $table_name: ::kernel::device_id::IdArray<
            $dev,
            (),
            { <[$dev]>::len(&[$($id,)*]) },
        > = ::kernel::device_id::IdArray::new_without_index([$(($id, ())),*]);
        ::kernel::module_device_table!($bus, __MOD_DEVICE_TABLE, $table_name);
    };
}
