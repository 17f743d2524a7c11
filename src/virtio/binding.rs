// SPDX-License-Identifier: GPL-2.0

//! The state of one binding of a virtio device to a driver, and the
//! [`Binding`] handle deferred work uses to reach the device safely.
//!
//! A work item, notifier or shrinker callback runs outside the bus callbacks,
//! so it holds no [`Device<Bound>`] reference that proves the device is still
//! bound. [`Binding::access`] gives it one for as long as the returned guard
//! lives, or `None` once unbinding has started; the adapter's remove path
//! waits for outstanding guards before it calls the driver's `unbind`. The
//! C driver gets the same ordering from hand-written `stop_update` flags and
//! `cancel_work_sync()` calls; here the type system asks for it.

use super::{
    device::Device,
    virtqueue::{
        VqInfo,
        VqSlot, //
    },
    MAX_VQS, //
};
use crate::bindings;
use core::{
    ops::Deref,
    ptr, //
};
use kernel::{
    device, new_condvar, new_spinlock,
    prelude::*,
    sync::{
        aref::ARef,
        Arc,
        ArcBorrow,
        CondVar,
        SpinLock, //
    },
};

/// Who is using the device outside the bus callbacks.
struct Users {
    /// Number of live [`BindingGuard`]s.
    active: usize,
    /// Set once unbinding (or a failed probe) has started; never cleared.
    unbound: bool,
}

/// Per-binding state, owned by the binding and by every [`Binding`] handle.
///
/// # Invariants
///
/// While the device is bound, `virtio_device::priv` holds one reference to
/// this state obtained from [`Arc::into_raw`]. `slots[i]` describes
/// virtqueue `i` of the device.
#[pin_data]
pub(crate) struct BindState {
    #[pin]
    users: SpinLock<Users>,
    #[pin]
    idle: CondVar,
    #[pin]
    slots: [VqSlot; MAX_VQS],
    /// The adapter's C virtqueue callback for this driver.
    callback: unsafe extern "C" fn(*mut bindings::virtqueue),
}

impl BindState {
    /// Creates the state for a new binding whose virtqueue callbacks go to `callback`.
    pub(super) fn new(
        callback: unsafe extern "C" fn(*mut bindings::virtqueue),
    ) -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Self {
                users <- new_spinlock!(Users { active: 0, unbound: false }),
                idle <- new_condvar!("virtio::BindState::idle"),
                slots <- pin_init::pin_init_array_from_fn(|_| VqSlot::new()),
                callback,
            }),
            GFP_KERNEL,
        )
    }

    /// Publishes `this` as the state of `dev` (`virtio_device::priv`).
    pub(super) fn attach(this: Arc<Self>, dev: &Device<device::CoreInternal<'_>>) {
        // INVARIANT: `priv` now holds the reference created by `into_raw`.
        //
        // SAFETY: `dev` is valid during the bus callback; the virtio core leaves `priv` to the
        // driver, and this abstraction owns it.
        unsafe { (*dev.as_raw()).priv_ = Arc::into_raw(this).cast_mut().cast() };
    }

    /// Takes back the reference `attach` stored in `dev` and clears it.
    pub(super) fn detach(dev: &Device<device::CoreInternal<'_>>) {
        // SAFETY: `dev` is valid during the bus callback.
        let raw = unsafe { (*dev.as_raw()).priv_ };
        if raw.is_null() {
            return;
        }
        // SAFETY: `dev` is valid during the bus callback; nothing uses `priv` after this point
        // because the device is being unbound.
        unsafe { (*dev.as_raw()).priv_ = ptr::null_mut() };
        // SAFETY: `raw` came from `Arc::into_raw` in `attach` and its reference is given back
        // exactly once, here.
        drop(unsafe { Arc::from_raw(raw.cast::<Self>()) });
    }

    /// Returns a new reference to the state of the bound `dev`.
    fn arc_of(dev: &Device<device::Bound>) -> Arc<Self> {
        let raw: *const Self = dev.bind_state();
        // SAFETY: By the invariant of `BindState`, `raw` came from `Arc::into_raw` and the
        // device's reference keeps it alive for the duration of this call.
        let borrow = unsafe { ArcBorrow::from_raw(raw) };
        borrow.into()
    }

    /// Marks the binding as ending and waits until no [`BindingGuard`] is left.
    ///
    /// Afterwards [`Binding::access`] returns `None` for good.
    pub(super) fn begin_unbind(&self) {
        let mut users = self.users.lock();
        users.unbound = true;
        while users.active > 0 {
            self.idle.wait(&mut users);
        }
    }

    /// Wakes the waiters of the slot holding `vq` and returns its index.
    pub(super) fn notify_used(&self, vq: *mut bindings::virtqueue) -> Option<usize> {
        let index = self.slots.iter().position(|slot| slot.holds(vq))?;
        self.slots[index].notify_used();
        Some(index)
    }

    /// Returns the slot of virtqueue `index`.
    pub(super) fn slot(&self, index: usize) -> Result<&VqSlot> {
        self.slots.get(index).ok_or(EINVAL)
    }

    /// Creates the device's virtqueues (`virtio_find_vqs()`) into the slots.
    pub(super) fn find_vqs(&self, dev: &Device<device::Core<'_>>, infos: &[VqInfo]) -> Result {
        if infos.is_empty() || infos.len() > MAX_VQS {
            return Err(EINVAL);
        }
        if self.slots.iter().any(VqSlot::is_live) {
            return Err(EBUSY);
        }

        let mut raw_infos = [bindings::virtqueue_info::default(); MAX_VQS];
        for (raw, info) in raw_infos.iter_mut().zip(infos) {
            raw.name = info.name.map_or(ptr::null(), |n| n.as_char_ptr());
            raw.callback = if info.callback {
                Some(self.callback)
            } else {
                None
            };
        }
        let mut vqs = [ptr::null_mut::<bindings::virtqueue>(); MAX_VQS];

        // SAFETY: `dev` is valid during the bus callback; both arrays hold at least
        // `infos.len()` entries and outlive the call; names are `'static`.
        kernel::error::to_result(unsafe {
            bindings::virtio_find_vqs(
                dev.as_raw(),
                infos.len() as u32,
                vqs.as_mut_ptr(),
                raw_infos.as_mut_ptr(),
                ptr::null_mut(),
            )
        })?;

        for (slot, vq) in self.slots.iter().zip(vqs) {
            // SAFETY: `vq` is null or a virtqueue `virtio_find_vqs` just created for `dev`,
            // which stays valid until `del_vqs`.
            unsafe { slot.attach(vq) };
        }
        Ok(())
    }

    /// Resets the device and deletes its virtqueues, dropping queued buffers.
    pub(super) fn del_vqs(&self, dev: &Device<device::Core<'_>>) {
        // The device must not touch buffers or raise interrupts while they are dropped.
        dev.reset();
        let mut any = false;
        for slot in &self.slots {
            any |= slot.detach();
        }
        if !any {
            return;
        }
        // SAFETY: `dev` is valid during the bus callback and its transport's config ops too.
        if let Some(del_vqs) = unsafe { (*(*dev.as_raw()).config).del_vqs } {
            // SAFETY: The device is reset and no slot refers to a virtqueue any more.
            unsafe { del_vqs(dev.as_raw()) };
        }
    }
}

/// A handle that lets deferred work reach a bound virtio device.
///
/// Obtained from [`Device::binding`] in a bus callback; cheap to clone.
/// [`Binding::access`] succeeds only while the device is still bound to the
/// driver that created the handle.
#[derive(Clone)]
pub struct Binding {
    state: Arc<BindState>,
    dev: ARef<Device>,
}

impl Binding {
    pub(super) fn new(dev: &Device<device::Core<'_>>) -> Self {
        Self {
            state: BindState::arc_of(dev),
            dev: dev.into(),
        }
    }

    /// Returns the device while it stays bound, or `None` once unbinding has
    /// started. The device cannot finish unbinding while the guard lives, so
    /// hold it only for a bounded time.
    pub fn access(&self) -> Option<BindingGuard<'_>> {
        let mut users = self.state.users.lock();
        if users.unbound {
            return None;
        }
        users.active += 1;
        // INVARIANT: `active` counts this guard; unbinding waits for it.
        Some(BindingGuard { binding: self })
    }

    /// Returns the device, usable in any context (no configuration space or
    /// virtqueue access).
    pub fn device(&self) -> &Device {
        &self.dev
    }
}

/// Proof that a device is bound, from [`Binding::access`].
///
/// # Invariants
///
/// `binding.state.users.active` counts this guard and `unbound` was false
/// when it was created, so the device remains bound until it is dropped.
pub struct BindingGuard<'a> {
    binding: &'a Binding,
}

impl Deref for BindingGuard<'_> {
    type Target = Device<device::Bound>;

    fn deref(&self) -> &Self::Target {
        let dev: &Device = &self.binding.dev;
        // SAFETY: By the type invariant the device stays bound while `self` lives, and
        // `Device<Bound>` is a transparent wrapper of the same `struct virtio_device`.
        unsafe { &*ptr::from_ref(dev).cast::<Device<device::Bound>>() }
    }
}

impl Drop for BindingGuard<'_> {
    fn drop(&mut self) {
        let state = &self.binding.state;
        let mut users = state.users.lock();
        users.active -= 1;
        if users.unbound && users.active == 0 {
            state.idle.notify_all();
        }
    }
}
