// SPDX-License-Identifier: GPL-2.0

//! Typed access to a device's configuration space.
//!
//! A [`ConfigField`] names one field of a device type's configuration
//! layout, a structure as bindgen generates it from the uapi header that
//! implements [`ConfigSpace`]: its offset and width come from the field
//! itself. Every access checks at run time that the device is of the
//! layout's type and that it negotiated the feature without which the
//! configuration space ends before the field, which the layout says
//! ([`ConfigSpace::feature_for`]): transports do not check an access
//! against the end of their configuration space (virtio-mmio and legacy PCI
//! access whatever the offset names, modern PCI hits a `BUG_ON`). Values
//! are little-endian on the device, as in every device type that uses this;
//! the conversion happens here, once.
//!
//! ```ignore
//! const ACTUAL: ConfigField<virtio_balloon_config, u32> =
//!     virtio_config_field!(virtio_balloon_config, actual);
//! let actual = dev.config_read(ACTUAL)?;
//! ```
//!
//! Out-of-tree doctests are not compiled: this is the balloon's
//! `host::ACTUAL`, compiled, whose offset, width and feature the KUnit suite
//! `virtio_balloon_rs_config_fields` checks.

use super::device::Device;
use crate::bindings;
use core::{
    marker::PhantomData,
    mem::offset_of, //
};
use kernel::{
    device::Bound,
    prelude::*, //
};

mod private {
    pub trait Sealed {}
}

/// A value a configuration field holds (an unsigned integer, little-endian
/// on the device).
pub trait ConfigValue: Copy + private::Sealed {
    /// Size in bytes.
    const SIZE: usize;

    /// Decodes the little-endian bytes `b[..SIZE]`.
    fn from_le(b: [u8; 8]) -> Self;

    /// Encodes into little-endian bytes (the first `SIZE` are used).
    fn to_le(self) -> [u8; 8];
}

macro_rules! config_value {
    ($($t:ty),*) => {$(
        impl private::Sealed for $t {}

        impl ConfigValue for $t {
            const SIZE: usize = size_of::<$t>();

            fn from_le(b: [u8; 8]) -> Self {
                let mut v = [0u8; size_of::<$t>()];
                v.copy_from_slice(&b[..size_of::<$t>()]);
                <$t>::from_le_bytes(v)
            }

            fn to_le(self) -> [u8; 8] {
                let mut b = [0u8; 8];
                b[..size_of::<$t>()].copy_from_slice(&self.to_le_bytes());
                b
            }
        }
    )*};
}

config_value!(u8, u16, u32, u64);

/// The layout of the configuration space of one virtio device type.
///
/// Ties a configuration structure (as bindgen generates it from the uapi
/// header) to the device type it describes and says, for every prefix of
/// it, which feature makes that prefix exist: a device's configuration
/// space is one contiguous range from offset 0, but its length may depend
/// on the features negotiated. [`ConfigField`]s exist only for such
/// layouts, and [`Device::config_read`] and [`Device::config_write`] check
/// both at run time, so that no access reaches past the device's space.
///
/// # Safety
///
/// `Self` is the layout of the configuration space of virtio devices of
/// type [`Self::DEVICE_ID`] as the virtio specification defines it, and for
/// every `end` in `1..=size_of::<Self>()`, the bytes `0..end` exist in the
/// configuration space of every device of type [`Self::DEVICE_ID`] that
/// negotiated the feature [`Self::feature_for(end)`](Self::feature_for)
/// returns (of every device of that type if it returns `None`).
pub unsafe trait ConfigSpace {
    /// The virtio device type (`VIRTIO_ID_*`) whose configuration this is.
    const DEVICE_ID: u32;

    /// The feature bit without which the configuration space may end
    /// before `end` bytes (`None`: it never does), for `end` in
    /// `1..=size_of::<Self>()`.
    fn feature_for(end: usize) -> Option<u32>;
}

/// A field of type `T` in configuration structure `C`.
///
/// # Invariants
///
/// `offset..offset + T::SIZE` lies within `C`, `offset` is a multiple of
/// `T::SIZE`, and `offset + T::SIZE` fits in a `u32`.
pub struct ConfigField<C: ConfigSpace, T: ConfigValue> {
    offset: usize,
    _field: PhantomData<fn(&C) -> T>,
}

impl<C: ConfigSpace, T: ConfigValue> Clone for ConfigField<C, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C: ConfigSpace, T: ConfigValue> Copy for ConfigField<C, T> {}

impl<C: ConfigSpace, T: ConfigValue> ConfigField<C, T> {
    /// The field at `offset`, whose type the projection `_field` proves.
    /// Use [`virtio_config_field!`](crate::virtio_config_field).
    pub const fn new(offset: usize, _field: fn(&C) -> &T) -> Self {
        Self::sized(offset)
    }

    /// A field of type `T` at `offset`, for members of unions (which a
    /// projection cannot reach without `unsafe`); the field must fit in `C`
    /// and be naturally aligned (transports access a field with one access
    /// of its width, which some architectures fault on when misaligned; the
    /// virtio device types align every field). Use
    /// [`virtio_config_field!`](crate::virtio_config_field) with `as`.
    pub const fn sized(offset: usize) -> Self {
        assert!(offset <= size_of::<C>() && T::SIZE <= size_of::<C>() - offset);
        assert!(offset % T::SIZE == 0);
        assert!(size_of::<C>() <= u32::MAX as usize);
        // INVARIANT: checked above (at compile time in a `const`).
        Self {
            offset,
            _field: PhantomData,
        }
    }

    /// Offset in the configuration space.
    pub const fn offset(&self) -> usize {
        self.offset
    }

    /// Width in bytes.
    pub const fn width(&self) -> usize {
        T::SIZE
    }

    /// The feature bit without which the field does not exist (`None`: it
    /// always does), derived from the layout ([`ConfigSpace::feature_for`]
    /// the end of the field).
    pub fn feature(&self) -> Option<u32> {
        C::feature_for(self.offset + T::SIZE)
    }

    /// Checks that the field exists on a device of type `device_id` whose
    /// negotiated features `has_feature` tells.
    ///
    /// Fails with [`EINVAL`] if `C` is not the layout of device type
    /// `device_id`, with [`ENODEV`] if the field needs a feature that was
    /// not negotiated. On success, by the safety requirements of
    /// [`ConfigSpace`], the bytes `0..self.offset() + self.width()` exist in
    /// the configuration space of such a device.
    pub fn check(&self, device_id: u32, has_feature: impl Fn(u32) -> bool) -> Result {
        if device_id != C::DEVICE_ID {
            return Err(EINVAL);
        }
        match self.feature() {
            Some(f) if !has_feature(f) => Err(ENODEV),
            _ => Ok(()),
        }
    }
}

/// A [`ConfigField`] of the named field of a configuration structure.
///
/// ```ignore
/// virtio_config_field!(virtio_balloon_config, num_pages)
/// // A member of an anonymous union, whose type must be given:
/// virtio_config_field!(virtio_balloon_config, __bindgen_anon_1.free_page_hint_cmd_id as u32)
/// ```
///
/// (Both forms are compiled and checked in the KUnit suite
/// `virtio_balloon_rs_virtio_config`.)
#[macro_export]
macro_rules! virtio_config_field {
    ($config:ty, $($field:ident).+ as $ty:ty) => {
        $crate::virtio::ConfigField::<$config, $ty>::sized(
            ::core::mem::offset_of!($config, $($field).+)
        )
    };
    ($config:ty, $($field:ident).+) => {
        $crate::virtio::ConfigField::<$config, _>::new(
            ::core::mem::offset_of!($config, $($field).+),
            |c: &$config| &c.$($field).+,
        )
    };
}

impl Device<Bound> {
    /// Checks that `field` exists on this device ([`ConfigField::check`]:
    /// [`EINVAL`] if `C` is another device type's layout, [`ENODEV`] if the
    /// field's feature was not negotiated) and that the transport has
    /// configuration access ([`ENODEV`] otherwise).
    fn config_check<C: ConfigSpace, T: ConfigValue>(&self, field: &ConfigField<C, T>) -> Result {
        field.check(self.device_id(), |f| self.has_feature(f))?;
        if !self.has_config_access() {
            return Err(ENODEV);
        }
        Ok(())
    }

    /// Reads `field` (`virtio_cread_bytes()`, consistent across the
    /// device's configuration generation). May sleep.
    ///
    /// Fails with [`EINVAL`] if `C` is not the layout of this device's type,
    /// with [`ENODEV`] if the field does not exist on this device (its
    /// feature was not negotiated) or the transport has no configuration
    /// access.
    #[doc(alias = "virtio_cread_bytes")]
    pub fn config_read<C: ConfigSpace, T: ConfigValue>(
        &self,
        field: ConfigField<C, T>,
    ) -> Result<T> {
        self.config_check(&field)?;
        let mut b = [0u8; 8];
        // SAFETY: `self.as_raw()` is a bound device whose transport is live (type invariant of
        // `Device`), and its `config->get` is set (checked by `config_check`). `config_check` also
        // checked that the device is of type `C::DEVICE_ID` and negotiated
        // `C::feature_for(end)` (if any), where `end = field.offset + T::SIZE` is in
        // `1..=size_of::<C>()` (invariant of `ConfigField`); so by the safety requirements of
        // `ConfigSpace` the bytes `0..end`, which hold the field, exist in the device's
        // configuration space. The read is byte-wise, `end` fits in a `u32` (invariant of
        // `ConfigField`), and `b` holds `T::SIZE <= 8` bytes. `Device<Bound>` is only handed out
        // in process context, where configuration reads may sleep.
        unsafe {
            bindings::virtio_cread_bytes(
                self.as_raw(),
                field.offset as u32,
                b.as_mut_ptr().cast(),
                T::SIZE,
            )
        };
        Ok(T::from_le(b))
    }

    /// Writes `field` (`virtio_cwrite_le()`). May sleep.
    ///
    /// Fails like [`Self::config_read`], and with [`ENODEV`] if the
    /// transport cannot write the configuration.
    #[doc(alias = "virtio_cwrite_le")]
    pub fn config_write<C: ConfigSpace, T: ConfigValue>(
        &self,
        field: ConfigField<C, T>,
        value: T,
    ) -> Result {
        self.config_check(&field)?;
        // SAFETY: The transport's `config` ops table is valid for a bound device.
        let set = unsafe { (*(*self.as_raw()).config).set }.ok_or(ENODEV)?;
        let b = value.to_le();
        // SAFETY: `set` is the transport's configuration writer for this bound device, called in
        // process context. As in `config_read`, `config_check` and the safety requirements of
        // `ConfigSpace` make the bytes `field.offset..field.offset + T::SIZE` part of the device's
        // configuration space; the field is naturally aligned, so the transport's single access of
        // `T::SIZE` bytes is too, and the offset fits in a `u32` (invariants of `ConfigField`).
        // `T::SIZE` is 1, 2, 4 or 8 (`ConfigValue` is sealed to `u8`..`u64`), the widths
        // transports write; `b` holds `T::SIZE` bytes.
        unsafe {
            set(
                self.as_raw(),
                field.offset as u32,
                b.as_ptr().cast(),
                T::SIZE as u32,
            )
        };
        Ok(())
    }
}

// SAFETY: `virtio_balloon_config` is bindgen's translation of the uapi
// `struct virtio_balloon_config`, the layout of the configuration space of the traditional memory
// balloon device (`VIRTIO_ID_BALLOON`) in the virtio specification, 5.5.4 "Device configuration
// layout" (offsets checked below): "`num_pages` [at 0] and `actual` [at 4] are always
// available", "`free_page_hint_cmd_id` [at 8] is available if VIRTIO_BALLOON_F_FREE_PAGE_HINT has
// been negotiated", "`poison_val` [at 12] is available if VIRTIO_BALLOON_F_PAGE_POISON has been
// negotiated". A transport exposes the configuration space as one range from offset 0, so a
// device that has a field has every byte before it. Hence the bytes `0..end` exist on every
// balloon for `end <= 8`, on one that negotiated FREE_PAGE_HINT for `end <= 12`, and on one that
// negotiated PAGE_POISON for `end <= 16 = size_of::<Self>()`. (QEMU sizes the space accordingly,
// `virtio_balloon_config_size()`: 8 bytes without either feature, 12 with FREE_PAGE_HINT, 16
// with PAGE_POISON.)
unsafe impl ConfigSpace for bindings::virtio_balloon_config {
    const DEVICE_ID: u32 = bindings::VIRTIO_ID_BALLOON;

    fn feature_for(end: usize) -> Option<u32> {
        if end <= BALLOON_CMD_ID {
            None
        } else if end <= BALLOON_POISON_VAL {
            Some(bindings::VIRTIO_BALLOON_F_FREE_PAGE_HINT)
        } else {
            Some(bindings::VIRTIO_BALLOON_F_PAGE_POISON)
        }
    }
}

/// Offset of the balloon's `free_page_hint_cmd_id`.
const BALLOON_CMD_ID: usize = offset_of!(bindings::virtio_balloon_config, __bindgen_anon_1);
/// Offset of the balloon's `poison_val`.
const BALLOON_POISON_VAL: usize = offset_of!(bindings::virtio_balloon_config, poison_val);

// The layout of the spec that the `ConfigSpace` implementation above relies on.
const _: () = {
    assert!(offset_of!(bindings::virtio_balloon_config, num_pages) == 0);
    assert!(offset_of!(bindings::virtio_balloon_config, actual) == 4);
    assert!(BALLOON_CMD_ID == 8);
    assert!(BALLOON_POISON_VAL == 12);
    assert!(size_of::<bindings::virtio_balloon_config>() == 16);
};

#[kunit_tests(virtio_balloon_rs_virtio_config)]
mod tests {
    use super::*;
    use crate::virtio_config_field;
    use bindings::{
        virtio_balloon_config as Balloon,
        VIRTIO_BALLOON_F_FREE_PAGE_HINT as FREE_PAGE_HINT,
        VIRTIO_BALLOON_F_PAGE_POISON as PAGE_POISON,
        VIRTIO_ID_BALLOON, //
    };

    #[test]
    fn balloon_space_grows_with_its_features() {
        for end in 1..=size_of::<Balloon>() {
            let feature = match end {
                1..=8 => None,
                9..=12 => Some(FREE_PAGE_HINT),
                _ => Some(PAGE_POISON),
            };
            assert_eq!(Balloon::feature_for(end), feature);
        }
    }

    #[test]
    fn another_device_type_is_refused() {
        let num_pages = virtio_config_field!(Balloon, num_pages);
        assert_eq!(num_pages.check(VIRTIO_ID_BALLOON, |_| false), Ok(()));
        assert_eq!(
            num_pages.check(VIRTIO_ID_BALLOON + 1, |_| true),
            Err(EINVAL)
        );
    }

    #[test]
    fn a_field_needs_the_feature_of_its_end() {
        let cmd_id = virtio_config_field!(Balloon, __bindgen_anon_1.free_page_hint_cmd_id as u32);
        let poison_val = virtio_config_field!(Balloon, poison_val);
        let only = |bit: u32| move |f: u32| f == bit;
        assert_eq!(cmd_id.check(VIRTIO_ID_BALLOON, |_| false), Err(ENODEV));
        assert_eq!(
            cmd_id.check(VIRTIO_ID_BALLOON, only(PAGE_POISON)),
            Err(ENODEV)
        );
        assert_eq!(
            cmd_id.check(VIRTIO_ID_BALLOON, only(FREE_PAGE_HINT)),
            Ok(())
        );
        assert_eq!(
            poison_val.check(VIRTIO_ID_BALLOON, only(FREE_PAGE_HINT)),
            Err(ENODEV)
        );
        assert_eq!(
            poison_val.check(VIRTIO_ID_BALLOON, only(PAGE_POISON)),
            Ok(())
        );
    }
}
