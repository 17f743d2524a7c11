// SPDX-License-Identifier: GPL-2.0

//! Virtio device ids and id tables (`struct virtio_device_id`).
//!
//! `struct virtio_device_id` has no `driver_data`, so the per-id data a
//! [`Driver`](super::Driver) declares lives in a table of its own beside the
//! raw ids that modpost and the virtio core read.

use crate::bindings;
use kernel::device_id::RawDeviceId;

/// Device id matching any vendor, for [`DeviceId::new`].
pub const ANY_VENDOR: u32 = bindings::VIRTIO_DEV_ANY_ID;

/// A virtio device id (`struct virtio_device_id`): device type and vendor.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct DeviceId(bindings::virtio_device_id);

impl DeviceId {
    /// An id matching devices of type `device` (a `VIRTIO_ID_*` value) from
    /// `vendor` ([`ANY_VENDOR`] for any).
    pub const fn new(device: u32, vendor: u32) -> Self {
        Self(bindings::virtio_device_id { device, vendor })
    }

    /// Whether a device of type `device` from `vendor` matches this id
    /// (C's `virtio_id_match()`).
    pub const fn matches(&self, device: u32, vendor: u32) -> bool {
        (self.0.device == device || self.0.device == bindings::VIRTIO_DEV_ANY_ID)
            && (self.0.vendor == ANY_VENDOR || self.0.vendor == vendor)
    }
}

// SAFETY: `DeviceId` is a `#[repr(transparent)]` wrapper of `struct virtio_device_id` and adds no
// invariants, so it is layout-compatible with `RawType`.
unsafe impl RawDeviceId for DeviceId {
    type RawType = bindings::virtio_device_id;
}

/// A driver's id table: the raw ids the virtio core matches devices
/// against, and the per-id data [`Driver::probe`](super::Driver::probe)
/// receives. Declare one with
/// [`virtio_device_table!`](crate::virtio_device_table).
pub struct IdTable<U: 'static> {
    raw: &'static dyn kernel::device_id::IdTable<DeviceId, ()>,
    infos: &'static [(DeviceId, U)],
}

impl<U: 'static> IdTable<U> {
    /// A table over the raw ids `raw` (with its terminating entry) and the
    /// same ids with their data, `infos`. Use
    /// [`virtio_device_table!`](crate::virtio_device_table), which builds
    /// both from one list.
    pub const fn new(
        raw: &'static dyn kernel::device_id::IdTable<DeviceId, ()>,
        infos: &'static [(DeviceId, U)],
    ) -> Self {
        Self { raw, infos }
    }

    /// The raw, zero-terminated table for `struct virtio_driver`.
    pub(super) fn as_ptr(&self) -> *const bindings::virtio_device_id {
        self.raw.as_ptr()
    }

    /// The data of the first id that matches a device of type `device`
    /// from `vendor`.
    pub(super) fn info(&self, device: u32, vendor: u32) -> Option<&'static U> {
        self.infos
            .iter()
            .find(|(id, _)| id.matches(device, vendor))
            .map(|(_, info)| info)
    }
}

/// Declares a virtio driver's id table with per-id data, and the
/// `virtio:d...v...` module alias modpost makes of it, in the shape of
/// `pci_device_table!`.
///
/// # Examples
///
/// ```ignore
/// virtio_device_table!(
///     ID_TABLE,
///     <MyDriver as virtio::Driver>::IdInfo,
///     [(virtio::DeviceId::new(5, virtio::ANY_VENDOR), ())]
/// );
/// ```
#[macro_export]
macro_rules! virtio_device_table {
    ($table_name:ident, $id_info_type:ty, [$(($id:expr, $info:expr $(,)?)),* $(,)?]) => {
        const $table_name: $crate::virtio::IdTable<$id_info_type> = {
            // The raw ids, exported for modpost.
            $crate::__compat_raw_device_table!(
                "virtio",
                $crate::virtio::DeviceId,
                $table_name,
                [$($id),*]
            );
            $crate::virtio::IdTable::new(&$table_name, &[$(($id, $info)),*])
        };
    };
}
