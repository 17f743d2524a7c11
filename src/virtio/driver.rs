// SPDX-License-Identifier: GPL-2.0

//! The virtio [`Driver`] trait and the [`Adapter`] that registers it as a C
//! `struct virtio_driver`.

use super::{
    binding::BindState,
    device::{
        Device,
        Features, //
    },
    IdTable, //
};
use crate::bindings;
use core::pin::Pin;
use kernel::{
    device,
    driver,
    error::{
        from_result,
        to_result, //
    },
    ffi::c_int,
    prelude::*,
    time::Delta,
    types::{
        ForeignOwnable,
        Opaque, //
    },
    ThisModule, //
};

/// A virtio driver.
///
/// Bus callbacks (`probe`, `ready`, `unbind`, `freeze`, `restore`,
/// `shutdown`) run in process context with a [`Device<Core>`](Device);
/// interrupt callbacks (`config_changed`, `vq_callback`) get a plain
/// [`Device`]. `Self::Data` is the per-device data `probe` creates; the
/// driver core drops it after `unbind`, once the device is reset and its
/// virtqueues deleted (see "Unbinding" in [`crate::virtio`]).
#[vtable]
pub trait Driver {
    /// The data attached to each id of [`Driver::ID_TABLE`].
    type IdInfo: 'static;

    /// Per-device driver data, which may borrow what lives while the
    /// device is bound.
    type Data<'bound>: Send + Sync + 'bound;

    /// The devices this driver handles (see
    /// [`virtio_device_table!`](crate::virtio_device_table)).
    const ID_TABLE: IdTable<Self::IdInfo>;

    /// Every feature bit the driver understands (the feature table offered
    /// to the device).
    const FEATURES: &'static [u32];

    /// Checks and adjusts the offered features before they are finalized.
    fn validate(features: &mut Features<'_>) -> Result {
        let _ = features;
        Ok(())
    }

    /// Creates the per-device data for a new device, given the data of the
    /// id it matched. The core sets `DRIVER_OK` after probe, then calls
    /// [`Driver::ready`].
    fn probe<'bound>(
        dev: &'bound Device<device::Core<'_>>,
        id_info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound;

    /// The device is live (`DRIVER_OK` set) after a successful probe.
    fn ready(dev: &Device<device::Core<'_>>, data: Pin<&Self::Data<'_>>) {
        let _ = (dev, data);
    }

    /// The device configuration changed. Interrupt context, under a
    /// spinlock: defer anything that sleeps, configuration reads included.
    fn config_changed(dev: &Device, data: Pin<&Self::Data<'_>>) {
        let _ = (dev, data);
    }

    /// The device used buffers of virtqueue `index` (interrupt context).
    fn vq_callback(dev: &Device, data: Pin<&Self::Data<'_>>, index: usize) {
        let _ = (dev, data, index);
    }

    /// The device is being unbound (step 2 of the unbind protocol): no
    /// [`Binding`](super::Binding) guard is left and none can be taken; the
    /// device is live unless it kept lent memory past
    /// [`Driver::host_timeout`]. Afterwards the adapter resets it and
    /// deletes the virtqueues.
    fn unbind(dev: &Device<device::Core<'_>>, data: Pin<&Self::Data<'_>>) {
        let _ = (dev, data);
    }

    /// System suspend: quiesce, then reset the device and delete the
    /// virtqueues ([`Device::del_vqs`]).
    fn freeze(dev: &Device<device::Core<'_>>, data: Pin<&Self::Data<'_>>) -> Result {
        let _ = (dev, data);
        build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// System resume: the device was reset; create the virtqueues again.
    fn restore(dev: &Device<device::Core<'_>>, data: Pin<&Self::Data<'_>>) -> Result {
        let _ = (dev, data);
        build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// System shutdown, after the binding was revoked: quiesce. The adapter
    /// then breaks and resets the device (`virtio_device_shutdown()`).
    fn shutdown(dev: &Device<device::Core<'_>>, data: Pin<&Self::Data<'_>>) {
        let _ = (dev, data);
    }

    /// How long the device may keep memory it was lent before unbinding
    /// breaks and resets it.
    fn host_timeout() -> Delta {
        Delta::from_secs(10)
    }
}

/// An adapter for the registration of virtio drivers.
pub struct Adapter<T: Driver>(T);

// SAFETY:
// - `bindings::virtio_driver` is a C type declared as `repr(C)`.
// - `T::Data` is the type of the driver's device private data (`probe_callback` stores it).
// - `struct virtio_driver` embeds a `struct device_driver` at `DEVICE_DRIVER_OFFSET`.
unsafe impl<T: Driver + 'static> driver::DriverLayout for Adapter<T> {
    type DriverType = bindings::virtio_driver;
    type DriverData<'bound> = T::Data<'bound>;
    const DEVICE_DRIVER_OFFSET: usize = core::mem::offset_of!(Self::DriverType, driver);
}

// SAFETY: `unregister` is only called after a successful `register` of the same driver.
unsafe impl<T: Driver + 'static> driver::RegistrationOps for Adapter<T> {
    unsafe fn register(
        vdrv: &Opaque<Self::DriverType>,
        name: &'static CStr,
        module: &'static ThisModule,
    ) -> Result {
        let drv = vdrv.get();
        // SAFETY: It is safe to set the fields of a `struct virtio_driver` before registering it;
        // the id and feature tables are `'static`.
        unsafe {
            (*drv).driver.name = name.as_char_ptr();
            (*drv).id_table = T::ID_TABLE.as_ptr();
            (*drv).feature_table = T::FEATURES.as_ptr();
            (*drv).feature_table_size = T::FEATURES.len() as u32;
            (*drv).validate = Some(Self::validate_callback);
            (*drv).probe = Some(Self::probe_callback);
            (*drv).scan = Some(Self::scan_callback);
            (*drv).remove = Some(Self::remove_callback);
            (*drv).config_changed = Some(Self::config_changed_callback);
            (*drv).shutdown = Some(Self::shutdown_callback);
            if T::HAS_FREEZE && T::HAS_RESTORE {
                (*drv).freeze = Some(Self::freeze_callback);
                (*drv).restore = Some(Self::restore_callback);
            }
        }

        // SAFETY: `drv` is a valid, initialized `struct virtio_driver` that stays pinned until
        // `unregister`.
        to_result(unsafe { bindings::__register_virtio_driver(drv, module.as_ptr()) })
    }

    unsafe fn unregister(vdrv: &Opaque<Self::DriverType>) {
        // SAFETY: `vdrv` was registered by `register`.
        unsafe { bindings::unregister_virtio_driver(vdrv.get()) }
    }
}

impl<T: Driver + 'static> Adapter<T> {
    /// # Safety
    ///
    /// `vdev` must be a device handed to a bus callback of this driver, used
    /// only for the duration of the callback.
    unsafe fn core<'a>(vdev: *mut bindings::virtio_device) -> &'a Device<device::CoreInternal<'a>> {
        // SAFETY: By the safety requirements `vdev` is valid for the duration of the callback.
        unsafe { &*vdev.cast::<Device<device::CoreInternal<'a>>>() }
    }

    /// Returns the driver data of `dev`, if probe has stored it.
    ///
    /// # Safety
    ///
    /// `dev` must be bound to this driver (or probing), and the returned
    /// reference used only while it stays so.
    unsafe fn data<'a, Ctx: device::DeviceContext>(
        dev: &'a Device<Ctx>,
    ) -> Option<Pin<&'a T::Data<'a>>> {
        // SAFETY: `dev` is a valid device, so is its `struct device`.
        let ptr = unsafe { kernel::bindings::dev_get_drvdata(dev.as_raw_device()) };
        if ptr.is_null() {
            return None;
        }
        // SAFETY: A non-null drvdata of a device bound to this driver is the `Pin<KBox<T::Data>>`
        // that `probe_callback` stored with `set_drvdata` (`into_foreign`); it is dropped only
        // after the device is unbound, which by the safety requirements outlives `'a`.
        Some(unsafe { Pin::<KBox<T::Data<'a>>>::borrow(ptr.cast()) })
    }

    extern "C" fn validate_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // SAFETY: The virtio core calls `validate` with a valid device before probe.
        let dev = unsafe { &*vdev.cast::<Device>() };
        from_result(|| {
            T::validate(&mut Features::new(dev))?;
            Ok(0)
        })
    }

    extern "C" fn probe_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // SAFETY: The virtio core calls `probe` with a valid device.
        //
        // INVARIANT: `dev` is valid for the duration of `probe_callback()`.
        let dev = unsafe { Self::core(vdev) };
        from_result(|| {
            let state = BindState::new(Self::vq_callback)?;
            BindState::attach(state, dev);
            let info = T::ID_TABLE.info(dev.device_id(), dev.vendor_id());
            let data = T::probe(dev, info);
            if let Err(e) = dev.as_ref().set_drvdata(data) {
                Self::teardown(dev);
                return Err(e);
            }
            Ok(0)
        })
    }

    /// Ends a binding whose probe failed: revoke, reset, delete the queues.
    fn teardown(dev: &Device<device::CoreInternal<'_>>) {
        let state = dev.bind_state();
        state.revoke(dev, T::host_timeout());
        dev.reset();
        state.del_vqs(dev);
        BindState::detach(dev);
    }

    extern "C" fn scan_callback(vdev: *mut bindings::virtio_device) {
        // SAFETY: The virtio core calls `scan` with a valid device after a successful probe.
        let dev = unsafe { Self::core(vdev) };
        // SAFETY: The device is bound to this driver during the callback.
        if let Some(data) = unsafe { Self::data(dev) } {
            T::ready(dev, data);
        }
    }

    extern "C" fn remove_callback(vdev: *mut bindings::virtio_device) {
        // SAFETY: The virtio core calls `remove` with a valid, bound device.
        let dev = unsafe { Self::core(vdev) };
        let state = dev.bind_state();
        // 1. No deferred user left, and none to come.
        state.revoke(dev, T::host_timeout());
        // 2. The driver lets go of the device.
        // SAFETY: The device is bound to this driver until `remove` returns.
        if let Some(data) = unsafe { Self::data(dev) } {
            T::unbind(dev, data);
        }
        // 3. The virtio core requires a reset device after `remove`.
        dev.reset();
        state.del_vqs(dev);
        BindState::detach(dev);
    }

    extern "C" fn config_changed_callback(vdev: *mut bindings::virtio_device) {
        // SAFETY: The virtio core reports configuration changes only for a valid device that is
        // bound (configuration changes are disabled before `remove`).
        let dev = unsafe { &*vdev.cast::<Device>() };
        // SAFETY: The device is bound to this driver during the callback.
        if let Some(data) = unsafe { Self::data(dev) } {
            T::config_changed(dev, data);
        }
    }

    /// C callback of every virtqueue created with a callback ([`VqInfo::new`](super::VqInfo::new)).
    extern "C" fn vq_callback(vq: *mut bindings::virtqueue) {
        // SAFETY: The transport calls queue callbacks with a valid queue of a device bound to
        // this driver, between `virtio_find_vqs` and the device reset before `del_vqs`, while
        // `priv` holds the binding's state.
        let (dev, state) = unsafe {
            let vdev = (*vq).vdev;
            (&*vdev.cast::<Device>(), &*(*vdev).priv_.cast::<BindState>())
        };
        // The queue's slot in the driver's `find_vqs` list; the device's own
        // queue numbering skips unused entries.
        let Some(index) = state.notify_used(vq) else {
            return;
        };
        // SAFETY: As above, the device is bound.
        if let Some(data) = unsafe { Self::data(dev) } {
            T::vq_callback(dev, data, index);
        }
    }

    extern "C" fn freeze_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // SAFETY: The virtio core calls `freeze` with a valid, bound device.
        let dev = unsafe { Self::core(vdev) };
        from_result(|| {
            // SAFETY: The device is bound to this driver during the callback.
            let data = unsafe { Self::data(dev) }.ok_or(ENODEV)?;
            T::freeze(dev, data)?;
            Ok(0)
        })
    }

    extern "C" fn restore_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // SAFETY: The virtio core calls `restore` with a valid, bound device.
        let dev = unsafe { Self::core(vdev) };
        from_result(|| {
            // SAFETY: The device is bound to this driver during the callback.
            let data = unsafe { Self::data(dev) }.ok_or(ENODEV)?;
            T::restore(dev, data)?;
            Ok(0)
        })
    }

    extern "C" fn shutdown_callback(vdev: *mut bindings::virtio_device) {
        // SAFETY: The virtio core calls `shutdown` with a valid, bound device.
        let dev = unsafe { Self::core(vdev) };
        dev.bind_state().revoke(dev, T::host_timeout());
        // SAFETY: The device is bound to this driver during the callback.
        if let Some(data) = unsafe { Self::data(dev) } {
            T::shutdown(dev, data);
        }
        // SAFETY: `vdev` is valid; breaking and resetting the device is what the core does for
        // drivers without a shutdown callback.
        unsafe { bindings::virtio_device_shutdown(vdev) };
    }
}
