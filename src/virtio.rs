// SPDX-License-Identifier: GPL-2.0

//! Virtio drivers.
//!
//! C headers: [`include/linux/virtio.h`](srctree/include/linux/virtio.h),
//! [`include/linux/virtio_config.h`](srctree/include/linux/virtio_config.h).
//!
//! The shape follows `rust/kernel/driver.rs` and the PCI bus abstraction:
//!
//! - [`Driver`] is the trait a virtio driver implements: an id table with
//!   per-id data ([`virtio_device_table!`](crate::virtio_device_table)), the
//!   feature bits it understands, `probe` returning its per-device data, and
//!   the optional virtio callbacks;
//! - [`Adapter`] turns the C `struct virtio_driver` callbacks into calls of
//!   the trait; [`module_virtio_driver!`](crate::module_virtio_driver)
//!   registers it for a module, and the registration unregisters on drop;
//! - [`Device`] wraps `struct virtio_device` in the kernel's device
//!   contexts; its configuration space is reached through typed fields
//!   ([`ConfigField`], [`virtio_config_field!`](crate::virtio_config_field))
//!   of a device type's layout ([`ConfigSpace`]), checked at run time
//!   against the device's type and negotiated features;
//! - [`Virtqueue`] moves owned, typed buffers ([`Buffer`]) to the device and
//!   back; [`SgQueue`] lends it borrowed scatterlists for one transfer;
//!   [`PageHint`]s name memory to a free page hint queue without lending it.
//!
//! # Contexts
//!
//! Callbacks that run in process context under the device lock get a
//! [`Device<Core>`](Device): they may create and delete the virtqueues,
//! reset the device and hand out a [`Binding`]. Interrupt callbacks
//! (configuration change, used buffers) get a plain [`Device`]: they may
//! only look at feature bits and defer work. Deferred work reaches a
//! [`Device<Bound>`](Device), with configuration space and virtqueues,
//! through [`Binding::try_access`], which only ever hands one out in process
//! context; configuration access may sleep.
//!
//! # Unbinding
//!
//! A bound device goes away through `remove` (driver unbind, `rmmod`,
//! hot-unplug), `shutdown`, or temporarily through `freeze`. What the
//! abstraction guarantees, in order, for `remove`:
//!
//! 1. **Revoke**: [`Binding::try_access`] returns `None` from now on, and no
//!    queue accepts borrowed memory any more ([`SgQueue`] transfers fail
//!    with [`ENODEV`]), so a guard taken before cannot lend after the count
//!    below. Transfers of borrowed memory that the device still holds get
//!    [`Driver::host_timeout`] to come back;
//!    a device that does not return them in time is broken (every queue
//!    operation then fails with [`EIO`]) and reset, so that it stops using
//!    the memory, and the transfers end with [`ENODEV`]. Then the
//!    abstraction waits (`synchronize_srcu()`) until every
//!    [`BindingGuard`] taken before is gone. All virtqueue waits of this
//!    abstraction are bounded, so this ends in bounded time.
//! 2. **Unbind**: [`Driver::unbind`] runs with the device still live,
//!    unless step 1 had to reset it.
//! 3. **Reset and delete**: the device is reset (the virtio core requires it
//!    after `remove`) and the virtqueues deleted. Buffers still queued are
//!    dropped, outside any lock.
//! 4. **Drop**: the driver core drops the driver's per-device data
//!    (`post_unbind_rust`).
//!
//! `shutdown` revokes as in step 1, calls [`Driver::shutdown`], then breaks
//! and resets the device. `freeze` leaves the binding alone: the driver
//! deletes the queues ([`Device::del_vqs`]); users of a deleted queue get
//! [`ENODEV`] (each queue has its own lock, so deleting one while another
//! thread uses it is safe), and `restore` creates them again.

mod binding;
mod config;
mod device;
mod driver;
mod id;
#[cfg(must_not_build)]
mod must_not_build;
mod virtqueue;

pub use binding::{
    Binding,
    BindingGuard, //
};
pub use config::{
    ConfigField,
    ConfigSpace,
    ConfigValue, //
};
pub use device::{
    Device,
    Features, //
};
pub use driver::{
    Adapter,
    Driver, //
};
pub use id::{
    DeviceId,
    IdTable,
    ANY_VENDOR, //
};
pub use virtqueue::{
    Buffer,
    DataBuffer,
    NotReturned,
    OwnedSgList,
    PageHint,
    Rejected,
    SgList,
    SgQueue,
    Tagged,
    Used,
    Virtqueue,
    VqInfo, //
};

/// Declares a kernel module that registers exactly one virtio driver.
///
/// Takes the same fields as [`kernel::prelude::module!`], with `type:` naming
/// the [`Driver`] implementation.
#[macro_export]
macro_rules! module_virtio_driver {
    ($($f:tt)*) => {
        ::kernel::module_driver!(<T>, $crate::virtio::Adapter<T>, { $($f)* });
    };
}
