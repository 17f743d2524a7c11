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
    types::Opaque,
    ThisModule, //
};

/// A virtio driver.
///
/// Callbacks that run in bus context get a [`Device<Core>`](Device); the
/// others get a [`Device<Bound>`](Device). `Self::Data` is the per-device
/// state `probe` creates; it is dropped after `unbind` once the device is
/// reset and its virtqueues are deleted.
#[vtable]
pub trait Driver {
    /// Per-device driver data.
    type Data: Send + Sync + 'static;

    /// The devices this driver handles (see [`virtio_device_table!`](crate::virtio_device_table)).
    const ID_TABLE: IdTable;

    /// Every feature bit the driver understands (the feature table offered to
    /// the device).
    const FEATURES: &'static [u32];

    /// Checks and adjusts the offered features before they are finalized.
    fn validate(features: &mut Features<'_>) -> Result {
        let _ = features;
        Ok(())
    }

    /// Creates the per-device data for a new device. The core sets
    /// `DRIVER_OK` after probe, then calls [`Driver::ready`].
    fn probe(dev: &Device<device::Core<'_>>) -> impl PinInit<Self::Data, Error>;

    /// Runs once the device is live (`DRIVER_OK` set), after a successful probe.
    fn ready(dev: &Device<device::Core<'_>>, data: Pin<&Self::Data>) {
        let _ = (dev, data);
    }

    /// The device configuration changed. Runs in interrupt context under a
    /// spinlock: defer anything that sleeps, configuration reads included.
    fn config_changed(dev: &Device<device::Bound>, data: Pin<&Self::Data>) {
        let _ = (dev, data);
    }

    /// The device used buffers of virtqueue `index` (interrupt context).
    fn vq_callback(dev: &Device<device::Bound>, data: Pin<&Self::Data>, index: usize) {
        let _ = (dev, data, index);
    }

    /// The device is being unbound. Every [`Binding`](super::Binding) guard
    /// is gone and no new one can be taken; the device is still live.
    /// Afterwards the adapter resets the device and deletes the virtqueues.
    fn unbind(dev: &Device<device::Core<'_>>, data: Pin<&Self::Data>) {
        let _ = (dev, data);
    }

    /// System suspend: quiesce, reset the device and delete the virtqueues.
    fn freeze(dev: &Device<device::Core<'_>>, data: Pin<&Self::Data>) -> Result {
        let _ = (dev, data);
        build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// System resume: the device was reset; create the virtqueues again.
    fn restore(dev: &Device<device::Core<'_>>, data: Pin<&Self::Data>) -> Result {
        let _ = (dev, data);
        build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// System shutdown: quiesce. The adapter then breaks and resets the
    /// device (`virtio_device_shutdown()`).
    fn shutdown(dev: &Device<device::Core<'_>>, data: Pin<&Self::Data>) {
        let _ = (dev, data);
    }
}

/// An adapter for the registration of virtio drivers.
pub struct Adapter<T: Driver>(T);

// SAFETY:
// - `bindings::virtio_driver` is a C type declared as `repr(C)`.
// - `T::Data` is the type of the driver's device private data.
// - `struct virtio_driver` embeds a `struct device_driver` at `DEVICE_DRIVER_OFFSET`.
unsafe impl<T: Driver + 'static> driver::DriverLayout for Adapter<T> {
    type DriverType = bindings::virtio_driver;
    type DriverData<'bound> = T::Data;
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
    /// `vdev` must be a device handed to a bus callback of this driver.
    unsafe fn core<'a>(vdev: *mut bindings::virtio_device) -> &'a Device<device::CoreInternal<'a>> {
        // SAFETY: By the safety requirements `vdev` is valid for the duration of the callback.
        unsafe { &*vdev.cast::<Device<device::CoreInternal<'a>>>() }
    }

    /// Returns the driver data of `dev`, if probe has stored it.
    fn data<'a>(dev: &'a Device<device::Bound>) -> Option<Pin<&'a T::Data>> {
        let raw = dev.as_raw_device();
        // SAFETY: `raw` is a valid `struct device`.
        if unsafe { kernel::bindings::dev_get_drvdata(raw) }.is_null() {
            return None;
        }
        // SAFETY: `dev` is bound, so `raw` is valid and stays bound for `'a`.
        let internal = unsafe { device::Device::<device::BoundInternal>::from_raw(raw) };
        // SAFETY: The drvdata is non-null, so `set_drvdata` stored a `T::Data` for this binding
        // and it is not dropped before the device is unbound.
        Some(unsafe { internal.drvdata_borrow::<T::Data>() })
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
            let data = T::probe(dev);
            if let Err(e) = dev.as_ref().set_drvdata(data) {
                Self::teardown(dev);
                return Err(e);
            }
            Ok(0)
        })
    }

    /// Ends the binding: no more guards, device reset, queues deleted.
    fn teardown(dev: &Device<device::CoreInternal<'_>>) {
        let state = dev.bind_state();
        state.begin_unbind();
        state.del_vqs(dev);
        BindState::detach(dev);
    }

    extern "C" fn scan_callback(vdev: *mut bindings::virtio_device) {
        // SAFETY: The virtio core calls `scan` with a valid device after a successful probe.
        let dev = unsafe { Self::core(vdev) };
        if let Some(data) = Self::data(dev) {
            T::ready(dev, data);
        }
    }

    extern "C" fn remove_callback(vdev: *mut bindings::virtio_device) {
        // SAFETY: The virtio core calls `remove` with a valid, bound device.
        let dev = unsafe { Self::core(vdev) };
        // Wait for deferred users before the driver tears down what they use.
        dev.bind_state().begin_unbind();
        if let Some(data) = Self::data(dev) {
            T::unbind(dev, data);
        }
        // The virtio core requires a reset device after `remove`.
        dev.reset();
        Self::teardown(dev);
    }

    extern "C" fn config_changed_callback(vdev: *mut bindings::virtio_device) {
        // SAFETY: The virtio core only reports configuration changes for bound devices.
        let dev = unsafe { &*vdev.cast::<Device<device::Bound>>() };
        if let Some(data) = Self::data(dev) {
            T::config_changed(dev, data);
        }
    }

    /// C callback of every virtqueue created with [`VqInfo::callback`](super::VqInfo) set.
    extern "C" fn vq_callback(vq: *mut bindings::virtqueue) {
        // SAFETY: The transport calls queue callbacks with a valid queue of a bound device,
        // between `virtio_find_vqs` and the device reset preceding `del_vqs`.
        let vdev = unsafe { (*vq).vdev };
        // SAFETY: As above, the device is bound while its queue callbacks run.
        let dev = unsafe { &*vdev.cast::<Device<device::Bound>>() };
        // The queue's slot in the driver's `find_vqs` list; the device's own
        // queue numbering skips unused entries.
        let Some(index) = dev.bind_state().notify_used(vq) else {
            return;
        };
        if let Some(data) = Self::data(dev) {
            T::vq_callback(dev, data, index);
        }
    }

    extern "C" fn freeze_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // SAFETY: The virtio core calls `freeze` with a valid, bound device.
        let dev = unsafe { Self::core(vdev) };
        from_result(|| {
            let data = Self::data(dev).ok_or(ENODEV)?;
            T::freeze(dev, data)?;
            Ok(0)
        })
    }

    extern "C" fn restore_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // SAFETY: The virtio core calls `restore` with a valid, bound device.
        let dev = unsafe { Self::core(vdev) };
        from_result(|| {
            let data = Self::data(dev).ok_or(ENODEV)?;
            T::restore(dev, data)?;
            Ok(0)
        })
    }

    extern "C" fn shutdown_callback(vdev: *mut bindings::virtio_device) {
        // SAFETY: The virtio core calls `shutdown` with a valid, bound device.
        let dev = unsafe { Self::core(vdev) };
        dev.bind_state().begin_unbind();
        if let Some(data) = Self::data(dev) {
            T::shutdown(dev, data);
        }
        // SAFETY: `vdev` is valid; breaking and resetting the device is what the core does for
        // drivers without a shutdown callback.
        unsafe { bindings::virtio_device_shutdown(vdev) };
    }
}
