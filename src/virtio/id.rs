// SPDX-License-Identifier: GPL-2.0

//! Virtio device ids and id tables (`struct virtio_device_id`).
//!
//! `struct virtio_device_id` has no `driver_data`, so the per-id data a
//! [`Driver`](super::Driver) declares lives in a table of its own beside the
//! raw ids that modpost and the virtio core read.

use crate::bindings;
use kernel::{
    device_id::RawDeviceId,
    prelude::*, //
};

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
        first_match(self.infos, device, vendor)
    }
}

/// The data of the first id in `infos` that matches a device of type
/// `device` from `vendor`, as the virtio core picks the id it probes with.
fn first_match<U>(infos: &[(DeviceId, U)], device: u32, vendor: u32) -> Option<&U> {
    infos
        .iter()
        .find(|(id, _)| id.matches(device, vendor))
        .map(|(_, info)| info)
}

/// Declares a virtio driver's id table with per-id data, and the
/// `virtio:d...v...` module alias modpost makes of it, in the shape of
/// `pci_device_table!`.
///
/// # Examples
///
/// (The balloon's own table, `VIRTIO_BALLOON_ID_TABLE`, is this, compiled;
/// out-of-tree doctests are not. The matching it sets up is the KUnit suite
/// `virtio_balloon_rs_virtio_id`.)
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

#[kunit_tests(virtio_balloon_rs_virtio_id)]
mod tests {
    use super::*;
    use bindings::{
        VIRTIO_ID_BALLOON as BALLOON,
        VIRTIO_ID_NET as NET, //
    };

    /// Red Hat's virtio vendor id, what QEMU's devices say.
    const REDHAT: u32 = 0x1af4;

    #[test]
    fn an_id_of_any_vendor_matches_its_device_type_only() {
        let id = DeviceId::new(BALLOON, ANY_VENDOR);
        assert!(id.matches(BALLOON, REDHAT));
        assert!(id.matches(BALLOON, 0));
        assert!(!id.matches(NET, REDHAT));
    }

    #[test]
    fn an_id_of_any_device_type_matches_its_vendor_only() {
        let id = DeviceId::new(bindings::VIRTIO_DEV_ANY_ID, REDHAT);
        assert!(id.matches(BALLOON, REDHAT));
        assert!(id.matches(NET, REDHAT));
        assert!(!id.matches(BALLOON, REDHAT + 1));
        let exact = DeviceId::new(BALLOON, REDHAT);
        assert!(exact.matches(BALLOON, REDHAT));
        assert!(!exact.matches(BALLOON, REDHAT + 1));
    }

    #[test]
    fn the_first_matching_id_gives_the_data() {
        let infos = [
            (DeviceId::new(BALLOON, REDHAT), 1),
            (DeviceId::new(BALLOON, ANY_VENDOR), 2),
            (DeviceId::new(bindings::VIRTIO_DEV_ANY_ID, ANY_VENDOR), 3),
        ];
        assert_eq!(first_match(&infos, BALLOON, REDHAT), Some(&1));
        assert_eq!(first_match(&infos, BALLOON, 7), Some(&2));
        assert_eq!(first_match(&infos, NET, 7), Some(&3));
        assert_eq!(first_match(&infos[..2], NET, REDHAT), None);
    }
}
