// SPDX-License-Identifier: GPL-2.0

//! Safe abstractions for writing virtio drivers.
//!
//! C headers: [`include/linux/virtio.h`](srctree/include/linux/virtio.h),
//! [`include/linux/virtio_config.h`](srctree/include/linux/virtio_config.h).
//!
//! The shape follows `rust/kernel/driver.rs` and the PCI and auxiliary bus
//! abstractions:
//!
//! - [`Driver`] is the trait a virtio driver implements: an id table, the
//!   feature bits it understands, `probe` returning its per-device data, and
//!   the optional virtio callbacks (`validate`, `ready`, `config_changed`,
//!   virtqueue callbacks, `unbind`, `freeze`/`restore`, `shutdown`).
//! - [`Adapter`] turns the C `struct virtio_driver` callbacks into calls of
//!   the trait; [`module_virtio_driver!`] registers it for a module, and the
//!   registration unregisters on drop.
//! - [`Device`] wraps `struct virtio_device` with the kernel's device
//!   contexts: configuration space and virtqueues need a [`Device<Bound>`],
//!   which callbacks receive and deferred work obtains through a [`Binding`].
//! - [`Virtqueue`] moves typed buffers ([`Buffer`]) to and from the device.
//!
//! Nothing here is specific to one device type.
//!
//! [`Device<Bound>`]: Device

mod binding;
mod device;
mod driver;
mod virtqueue;

pub use binding::{
    Binding,
    BindingGuard, //
};
pub use device::{
    Device,
    Features, //
};
pub use driver::{
    Adapter,
    Driver, //
};
pub use virtqueue::{
    Buffer,
    DataBuffer,
    Rejected,
    SgList,
    SgQueue,
    Tagged,
    Virtqueue,
    VqInfo, //
};

use crate::bindings;
use kernel::device_id::RawDeviceId;

/// The most virtqueues one device may use through this abstraction.
pub const MAX_VQS: usize = 8;

/// Device id matching any vendor, for [`DeviceId::new`].
pub const ANY_VENDOR: u32 = bindings::VIRTIO_DEV_ANY_ID;

/// A virtio device id (`struct virtio_device_id`): device type and vendor.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct DeviceId(bindings::virtio_device_id);

impl DeviceId {
    /// Creates an id matching `device` (a `VIRTIO_ID_*` value) from `vendor`.
    pub const fn new(device: u32, vendor: u32) -> Self {
        Self(bindings::virtio_device_id { device, vendor })
    }
}

// SAFETY: `DeviceId` is a `#[repr(transparent)]` wrapper of `struct virtio_device_id` and adds no
// invariants, so it is layout-compatible with `RawType`.
unsafe impl RawDeviceId for DeviceId {
    type RawType = bindings::virtio_device_id;
}

/// Id table type for virtio drivers; entries carry no per-id data.
pub type IdTable = &'static dyn kernel::device_id::IdTable<DeviceId, ()>;

/// Declares a virtio id table and its `virtio:d...v...` module alias for modpost.
///
/// # Examples
///
/// ```ignore
/// virtio_device_table!(ID_TABLE, [virtio::DeviceId::new(5, virtio::ANY_VENDOR)]);
/// ```
#[macro_export]
macro_rules! virtio_device_table {
    ($table_name:ident, [$($id:expr),* $(,)?]) => {
        kernel::module_device_table!(
            "virtio",
            $crate::virtio::DeviceId,
            $table_name,
            @none,
            [$($id),*]
        );
    };
}

/// Declares a kernel module that registers exactly one virtio driver.
///
/// Takes the same fields as [`kernel::prelude::module!`], with `type:` naming
/// the [`Driver`] implementation.
#[macro_export]
macro_rules! module_virtio_driver {
    ($($f:tt)*) => {
        kernel::module_driver!(<T>, $crate::virtio::Adapter<T>, { $($f)* });
    };
}
