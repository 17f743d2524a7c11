// SPDX-License-Identifier: GPL-2.0

//! The state of one binding of a virtio device to a driver, and the
//! [`Binding`] handle through which deferred work reaches the device.
//!
//! Work items, notifiers and shrinker callbacks run outside the bus
//! callbacks and may sleep while they use the device (waiting for the host
//! to return a buffer), so the binding is revoked the way the kernel
//! revokes access from sleeping readers: an SRCU read-side section per
//! access and `synchronize_srcu()` on unbind (`Revocable` and `Devres` do
//! the same with RCU, whose readers may not sleep). The protocol as a whole
//! is described in the module documentation of [`crate::virtio`].

use super::{
    device::Device,
    virtqueue::{
        check_free_page_hints,
        QueueKind,
        VqInfo,
        VqSlot, //
    },
};
use crate::{
    bindings,
    compat::srcu::{
        new_srcu,
        Guard as SrcuGuard,
        Srcu, //
    },
};
use core::{
    ops::Deref,
    ptr, //
};
use kernel::{
    device,
    prelude::*,
    sync::{
        aref::ARef,
        atomic::{
            Acquire,
            Atomic,
            Release, //
        },
        Arc,
        ArcBorrow,
        SetOnce, //
    },
    time::{
        delay::fsleep,
        Delta,
        Instant,
        Monotonic, //
    },
};

/// Per-binding state, shared by the binding and every [`Binding`] handle.
///
/// # Invariants
///
/// While the device is bound, `virtio_device::priv` holds one reference to
/// this state obtained from [`Arc::into_raw`]. Once set, `slots[i]`
/// describes virtqueue `i` of the device for the rest of the binding.
#[pin_data]
pub(crate) struct BindState {
    /// Readers of the binding ([`BindingGuard`]s).
    #[pin]
    srcu: Srcu,
    /// Whether [`Binding::try_access`] may still succeed.
    bound: Atomic<bool>,
    /// One slot per virtqueue, created by the first `find_vqs`.
    slots: SetOnce<Pin<KBox<[VqSlot]>>>,
    /// The adapter's C virtqueue callback for this driver.
    callback: unsafe extern "C" fn(*mut bindings::virtqueue),
}

impl BindState {
    /// Creates the state for a new binding whose virtqueue callbacks go to `callback`.
    pub(super) fn new(
        callback: unsafe extern "C" fn(*mut bindings::virtqueue),
    ) -> Result<Arc<Self>> {
        Arc::pin_init(
            try_pin_init!(Self {
                srcu <- new_srcu!("virtio::BindState::srcu"),
                bound: Atomic::new(true),
                slots: SetOnce::new(),
                callback,
            }? Error),
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

    /// The virtqueue slots, once created.
    fn slots(&self) -> &[VqSlot] {
        self.slots.as_ref().map_or(&[], |s| &s[..])
    }

    /// Revokes the binding (step 1 of the unbind protocol): no new
    /// [`BindingGuard`] and no new lend of borrowed memory from now on;
    /// transfers the device still holds get `timeout` to come back, else the
    /// device is broken and reset; then waits for every guard taken before.
    pub(super) fn revoke(&self, dev: &Device<device::Core<'_>>, timeout: Delta) {
        self.bound.store(false, Release);
        // A guard taken before may still try to lend memory: refused from
        // now on, so the count below only goes down.
        for slot in self.slots() {
            slot.revoke();
        }
        let start = Instant::<Monotonic>::now();
        let lent = || self.slots().iter().map(VqSlot::lent).sum::<usize>();
        while lent() > 0 && start.elapsed() < timeout {
            fsleep(Delta::from_millis(10));
        }
        let stuck = lent();
        if stuck > 0 {
            dev_err!(
                dev.as_ref(),
                "the device did not return {} lent buffers within {} ms: resetting it\n",
                stuck,
                timeout.as_millis()
            );
            self.stop_device(dev);
        }
        self.srcu.synchronize();
    }

    /// Breaks and resets the device and tells every queue, so that waiters
    /// return: the device no longer uses any buffer.
    pub(super) fn stop_device(&self, dev: &Device<device::Core<'_>>) {
        dev.break_device();
        dev.reset();
        for slot in self.slots() {
            slot.device_reset();
        }
    }

    /// Wakes the waiters of the slot holding `vq` and returns its index.
    pub(super) fn notify_used(&self, vq: *mut bindings::virtqueue) -> Option<usize> {
        let index = self.slots().iter().position(|slot| slot.holds(vq))?;
        self.slots()[index].notify_used();
        Some(index)
    }

    /// Returns the slot of virtqueue `index`.
    pub(super) fn slot(&self, index: usize) -> Result<&VqSlot> {
        self.slots().get(index).ok_or(ENODEV)
    }

    /// Creates the device's virtqueues (`virtio_find_vqs()`) into the slots.
    ///
    /// The first call fixes the number of queues for the binding; later
    /// calls (after [`BindState::del_vqs`], on resume) must ask for as many.
    pub(super) fn find_vqs(&self, dev: &Device<device::Core<'_>>, infos: &[VqInfo]) -> Result {
        if infos.is_empty() || infos.len() > u32::MAX as usize {
            return Err(EINVAL);
        }
        for (index, info) in infos.iter().enumerate() {
            if info.kind() == QueueKind::FreePageHints {
                check_free_page_hints(
                    dev.device_id(),
                    dev.has_feature(bindings::VIRTIO_BALLOON_F_FREE_PAGE_HINT),
                    index,
                )?;
            }
        }
        if self.slots.as_ref().is_none() {
            let slots = KBox::pin_slice(|_| VqSlot::new(), infos.len(), GFP_KERNEL)?;
            // Bus callbacks are serialized by the device lock: nobody populates concurrently.
            self.slots.populate(slots);
        }
        let slots = self.slots();
        if slots.len() != infos.len() {
            return Err(EINVAL);
        }
        if slots.iter().any(VqSlot::is_live) {
            return Err(EBUSY);
        }

        let mut raw_infos = KVec::with_capacity(infos.len(), GFP_KERNEL)?;
        let mut vqs = KVec::with_capacity(infos.len(), GFP_KERNEL)?;
        for info in infos {
            raw_infos.push(
                bindings::virtqueue_info {
                    name: info.name().map_or(ptr::null(), |n| n.as_char_ptr()),
                    callback: if info.has_callback() {
                        Some(self.callback)
                    } else {
                        None
                    },
                    ..Default::default()
                },
                GFP_KERNEL,
            )?;
            vqs.push(ptr::null_mut::<bindings::virtqueue>(), GFP_KERNEL)?;
        }

        // SAFETY: `dev` is valid during the bus callback; both arrays hold `infos.len()` entries
        // and outlive the call; names are `'static`.
        kernel::error::to_result(unsafe {
            bindings::virtio_find_vqs(
                dev.as_raw(),
                infos.len() as u32,
                vqs.as_mut_ptr(),
                raw_infos.as_mut_ptr(),
                ptr::null_mut(),
            )
        })?;

        for ((slot, vq), info) in slots.iter().zip(vqs.iter()).zip(infos) {
            // SAFETY: `vq` is null or a virtqueue `virtio_find_vqs` just created for `dev`, which
            // stays valid until `del_vqs`; it holds no buffer yet.
            unsafe { slot.attach(*vq, info.kind()) };
        }
        Ok(())
    }

    /// Deletes the virtqueues, dropping buffers still queued. The device
    /// must be reset.
    pub(super) fn del_vqs(&self, dev: &Device<device::Core<'_>>) {
        let mut any = false;
        for slot in self.slots() {
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
/// [`Binding::try_access`] succeeds only while the device stays bound to the
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
    /// started. Unbinding waits for the guard (an SRCU read-side section),
    /// so hold it for a bounded time. Process context only (`might_sleep()`):
    /// what the guard gives access to may sleep.
    #[doc(alias = "srcu_read_lock")]
    pub fn try_access(&self) -> Option<BindingGuard<'_>> {
        // The guard hands out a device whose configuration reads and queue
        // waits sleep: process context only, which the debug kernels check.
        kernel::task::might_sleep();
        let srcu = self.state.srcu.read_lock();
        if !self.state.bound.load(Acquire) {
            return None;
        }
        // INVARIANT: The read-side section started before any `revoke` that could see it ended,
        // so the device stays bound until the guard is dropped.
        Some(BindingGuard {
            binding: self,
            _srcu: srcu,
        })
    }

    /// Whether unbinding has started: a guard holder that loops (for
    /// example over free memory) checks this to end early, since unbinding
    /// waits for it.
    pub fn is_revoked(&self) -> bool {
        !self.state.bound.load(Acquire)
    }

    /// Returns the device, usable in any context (no configuration space or
    /// virtqueue access).
    pub fn device(&self) -> &Device {
        &self.dev
    }
}

/// Proof that a device is bound, from [`Binding::try_access`].
///
/// # Invariants
///
/// `_srcu` is a read-side section of the binding's SRCU that began while
/// the binding was not revoked, so the device remains bound (and
/// [`BindState::revoke`] waits) until the guard is dropped.
pub struct BindingGuard<'a> {
    binding: &'a Binding,
    _srcu: SrcuGuard<'a>,
}

impl Deref for BindingGuard<'_> {
    type Target = Device<device::Bound>;

    fn deref(&self) -> &Self::Target {
        let dev: &Device = &self.binding.dev;
        // SAFETY: By the type invariant the device stays bound while `self` lives, and
        // `Device<Bound>` is a transparent wrapper of the same `struct virtio_device`. Guards
        // are taken in process context (SRCU readers may sleep).
        unsafe { &*ptr::from_ref(dev).cast::<Device<device::Bound>>() }
    }
}
