// SPDX-License-Identifier: GPL-2.0

//! `struct virtio_device`: identity, feature bits, status and virtqueue
//! set-up, split by device context (see the module documentation of
//! [`crate::virtio`]):
//!
//! - any context: identity, negotiated feature bits, wakeup source;
//! - [`Device<Bound>`](Device) (process context, device bound):
//!   configuration space ([`config`](super::config)) and virtqueues;
//! - [`Device<Core>`](Device) (bus callbacks): create and delete the
//!   virtqueues, set `DRIVER_OK`, reset the device, hand out a [`Binding`].

use super::{
    binding::BindState,
    virtqueue::{
        Buffer,
        SgQueue,
        Virtqueue,
        VqInfo, //
    },
    Binding, //
};
use crate::bindings;
use core::{
    marker::PhantomData,
    mem::offset_of,
    ptr::{
        addr_of_mut,
        NonNull, //
    },
};
use kernel::{
    device,
    prelude::*,
    sync::aref::AlwaysRefCounted,
    types::Opaque, //
};

/// A virtio device (`struct virtio_device`).
///
/// # Invariants
///
/// A [`Device`] instance represents a valid `struct virtio_device` registered
/// with the virtio bus by a transport. While a `Device<Bound>` (or
/// `Device<Core>`) reference exists, the device is bound to a driver of this
/// abstraction, `priv` points to that binding's [`BindState`], and the
/// reference is used in process context (this abstraction creates them only
/// in bus callbacks and under a [`BindingGuard`](super::BindingGuard)).
#[repr(transparent)]
pub struct Device<Ctx: device::DeviceContext = device::Normal>(
    Opaque<bindings::virtio_device>,
    PhantomData<Ctx>,
);

impl<Ctx: device::DeviceContext> Device<Ctx> {
    pub(super) fn as_raw(&self) -> *mut bindings::virtio_device {
        self.0.get()
    }

    /// Returns the embedded `struct device`.
    pub(super) fn as_raw_device(&self) -> *mut kernel::bindings::device {
        // SAFETY: By the type invariant `self.as_raw()` is valid.
        unsafe { addr_of_mut!((*self.as_raw()).dev) }
    }

    /// Returns the virtio device type (`VIRTIO_ID_*`).
    pub fn device_id(&self) -> u32 {
        // SAFETY: By the type invariant `self.as_raw()` is valid; `id` is set by the transport
        // before registration and never changes.
        unsafe { (*self.as_raw()).id.device }
    }

    /// Returns the device's vendor id.
    pub fn vendor_id(&self) -> u32 {
        // SAFETY: As for `device_id`.
        unsafe { (*self.as_raw()).id.vendor }
    }

    /// Returns whether feature `bit` was negotiated.
    ///
    /// Unlike C's `virtio_has_feature()`, a bit the driver does not list in
    /// [`Driver::FEATURES`](super::Driver::FEATURES) reads as `false` instead of hitting `BUG()`
    /// (the device cannot have negotiated it).
    #[doc(alias = "virtio_has_feature")]
    pub fn has_feature(&self, bit: u32) -> bool {
        if bit >= bindings::VIRTIO_FEATURES_BITS {
            return false;
        }
        // SAFETY: By the type invariant `self.as_raw()` is valid and `bit` is in range of the
        // feature bitmap.
        unsafe { bindings::__virtio_test_bit(self.as_raw(), bit) }
    }

    /// Whether the device's virtqueue data (`__virtio16/32/64`) is little
    /// endian (`virtio_is_little_endian()`): always for VIRTIO 1.0 devices.
    pub fn is_little_endian(&self) -> bool {
        // SAFETY: By the type invariant `self.as_raw()` is valid; this only reads feature bits.
        unsafe { bindings::virtio_is_little_endian(self.as_raw()) }
    }

    /// Keeps the system awake until [`Self::pm_relax`] (`pm_stay_awake()`),
    /// callable from any context.
    pub fn pm_stay_awake(&self) {
        // SAFETY: `self.as_raw()` is valid, so is its embedded `struct device`.
        unsafe { kernel::bindings::pm_stay_awake(self.as_raw_device()) };
    }

    /// Ends a [`Self::pm_stay_awake`] section (`pm_relax()`).
    pub fn pm_relax(&self) {
        // SAFETY: `self.as_raw()` is valid, so is its embedded `struct device`.
        unsafe { kernel::bindings::pm_relax(self.as_raw_device()) };
    }
}

impl Device<device::Bound> {
    /// Returns the state of the current binding.
    pub(super) fn bind_state(&self) -> &BindState {
        // SAFETY: By the type invariant, a `Device<Bound>` is bound to a driver of this
        // abstraction, whose `priv` points to its `BindState`; the binding keeps it alive until
        // after the device is unbound, which outlives `self`.
        unsafe { &*(*self.as_raw()).priv_.cast::<BindState>() }
    }

    /// Returns whether the transport offers configuration space access at all.
    pub fn has_config_access(&self) -> bool {
        // SAFETY: By the type invariant the transport's `config` ops table is valid.
        unsafe { (*(*self.as_raw()).config).get.is_some() }
    }

    /// Returns virtqueue `index` (its position in [`Device::find_vqs`]) for
    /// buffers of type `B`.
    ///
    /// The first access after the queue was created fixes its buffer type;
    /// asking for the same queue with another type fails with [`EINVAL`], a
    /// queue that does not exist (not requested, or deleted) with
    /// [`ENODEV`].
    pub fn vq<B: Buffer>(&self, index: usize) -> Result<Virtqueue<'_, B>> {
        Virtqueue::new(self.bind_state().slot(index)?)
    }

    /// Returns virtqueue `index` for transfers of borrowed scatterlists
    /// ([`SgQueue`]). Fails like [`Self::vq`].
    pub fn sg_vq(&self, index: usize) -> Result<SgQueue<'_>> {
        SgQueue::new(self.bind_state().slot(index)?)
    }
}

impl<'a> Device<device::Core<'a>> {
    /// Creates the device's virtqueues, one per entry of `vqs` (a `None`
    /// name leaves that queue unused, as in C).
    #[doc(alias = "virtio_find_vqs")]
    pub fn find_vqs(&self, vqs: &[VqInfo]) -> Result {
        self.bind_state().find_vqs(self, vqs)
    }

    /// Resets the device and deletes its virtqueues, dropping the buffers
    /// still queued (for `freeze`; on unbind the adapter does this).
    /// Users of a deleted queue get [`ENODEV`].
    pub fn del_vqs(&self) {
        let state = self.bind_state();
        self.reset();
        state.del_vqs(self)
    }

    /// Marks every virtqueue broken (`virtio_break_device()`): from now on
    /// adding buffers fails with [`EIO`] and the device's interrupts are
    /// ignored. For a device that no longer answers.
    #[doc(alias = "virtio_break_device")]
    pub fn break_device(&self) {
        // SAFETY: `self.as_raw()` is a valid device in a bus callback.
        unsafe { bindings::virtio_break_device(self.as_raw()) };
    }

    /// Sets `DRIVER_OK`: the device may now use the virtqueues.
    #[doc(alias = "virtio_device_ready")]
    pub fn ready(&self) {
        // SAFETY: `self.as_raw()` is a valid device in a bus callback.
        unsafe { bindings::virtio_device_ready(self.as_raw()) };
    }

    /// Resets the device (`virtio_reset_device()`): afterwards it uses no
    /// buffer and raises no interrupt until set up again.
    #[doc(alias = "virtio_reset_device")]
    pub fn reset(&self) {
        // SAFETY: `self.as_raw()` is a valid device in a bus callback.
        unsafe { bindings::virtio_reset_device(self.as_raw()) };
    }

    /// Returns a handle through which deferred work reaches the device while
    /// it stays bound (see [`Binding`]).
    pub fn binding(&self) -> Binding {
        Binding::new(self)
    }

    /// Declares that the device can wake the system (`device_set_wakeup_capable()`).
    pub fn set_wakeup_capable(&self, capable: bool) {
        // SAFETY: `self.as_raw()` is valid, so is its embedded `struct device`.
        unsafe {
            kernel::bindings::device_set_wakeup_capable(addr_of_mut!((*self.as_raw()).dev), capable)
        };
    }
}

/// The device's feature bits while the driver validates them (`validate`
/// callback), before they are finalized.
pub struct Features<'a>(&'a Device<device::Normal>);

impl<'a> Features<'a> {
    pub(super) fn new(dev: &'a Device<device::Normal>) -> Self {
        Self(dev)
    }

    /// Returns whether feature `bit` is offered by both device and driver.
    pub fn has(&self, bit: u32) -> bool {
        self.0.has_feature(bit)
    }

    /// Declines feature `bit` (`__virtio_clear_bit()`).
    pub fn clear(&mut self, bit: u32) {
        if bit < bindings::VIRTIO_FEATURES_BITS {
            // SAFETY: The device is valid for `'a`; during `validate` the features are not yet
            // finalized and the virtio core allows the driver to clear bits.
            unsafe { bindings::__virtio_clear_bit(self.0.as_raw(), bit) };
        }
    }

    /// Returns the device these features belong to.
    pub fn device(&self) -> &Device {
        self.0
    }
}

// SAFETY: `Device` is a transparent wrapper of `struct virtio_device`, which embeds its base
// `struct device` at the offset given.
unsafe impl<Ctx: device::DeviceContext> device::AsBusDevice<Ctx> for Device<Ctx> {
    const OFFSET: usize = offset_of!(bindings::virtio_device, dev);
}

// SAFETY: `Device` is a transparent wrapper of a type that doesn't depend on `Device`'s generic
// argument.
kernel::impl_device_context_deref!(unsafe { Device });
kernel::impl_device_context_into_aref!(Device);

// SAFETY: Instances of `Device` are always reference-counted through their embedded
// `struct device`.
unsafe impl AlwaysRefCounted for Device {
    fn inc_ref(&self) {
        // SAFETY: The existence of a shared reference guarantees that the refcount is non-zero.
        unsafe { kernel::bindings::get_device(self.as_raw_device()) };
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // CAST: `Self` is a transparent wrapper of `bindings::virtio_device`.
        let vdev: *mut bindings::virtio_device = obj.cast().as_ptr();

        // SAFETY: By the type invariant `vdev` is valid, so is its embedded `struct device`.
        let dev = unsafe { addr_of_mut!((*vdev).dev) };

        // SAFETY: The safety requirements guarantee that the refcount is non-zero.
        unsafe { kernel::bindings::put_device(dev) }
    }
}

impl<Ctx: device::DeviceContext> AsRef<device::Device<Ctx>> for Device<Ctx> {
    fn as_ref(&self) -> &device::Device<Ctx> {
        // SAFETY: By the type invariant `self.as_raw()` is valid, so is its embedded
        // `struct device`.
        let dev = unsafe { addr_of_mut!((*self.as_raw()).dev) };

        // SAFETY: `dev` points to a valid `struct device` that lives as long as `self`.
        unsafe { device::Device::from_raw(dev) }
    }
}

// SAFETY: A `Device` is reference-counted and can be released from any thread.
unsafe impl Send for Device {}

// SAFETY: All methods of `Device<Normal>` are thread safe.
unsafe impl Sync for Device {}

// SAFETY: `Bound` is a zero-sized type-state marker over the same `struct virtio_device`; the
// bound-only methods synchronize internally (virtqueue locks) or are thread safe in C.
unsafe impl Sync for Device<device::Bound> {}
