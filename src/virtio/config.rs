// SPDX-License-Identifier: GPL-2.0

//! Typed access to a device's configuration space.
//!
//! A [`ConfigField`] names one field of a device type's configuration
//! structure (as bindgen generates it from the uapi header): its offset and
//! width come from the field itself, and it may name the feature bit
//! without which the field does not exist (transports treat an access past
//! the end of their configuration space as a bug, `BUG_ON`). Values are
//! little-endian on the device, as in every device type that uses this;
//! the conversion happens here, once.
//!
//! ```ignore
//! const ACTUAL: ConfigField<virtio_balloon_config, u32> =
//!     virtio_config_field!(virtio_balloon_config, actual);
//! let actual = dev.config_read(ACTUAL)?;
//! ```

use super::device::Device;
use crate::bindings;
use core::marker::PhantomData;
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

/// A field of type `T` in configuration structure `C`.
///
/// # Invariants
///
/// `offset..offset + T::SIZE` lies within `C`.
pub struct ConfigField<C, T: ConfigValue> {
    offset: usize,
    feature: Option<u32>,
    _field: PhantomData<fn(&C) -> T>,
}

impl<C, T: ConfigValue> Clone for ConfigField<C, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C, T: ConfigValue> Copy for ConfigField<C, T> {}

impl<C, T: ConfigValue> ConfigField<C, T> {
    /// The field at `offset`, whose type the projection `_field` proves.
    /// Use [`virtio_config_field!`](crate::virtio_config_field).
    pub const fn new(offset: usize, _field: fn(&C) -> &T) -> Self {
        Self::sized(offset)
    }

    /// A field of type `T` at `offset`, for members of unions (which a
    /// projection cannot reach without `unsafe`); the field must fit in `C`.
    /// Use [`virtio_config_field!`](crate::virtio_config_field) with `as`.
    pub const fn sized(offset: usize) -> Self {
        assert!(offset + T::SIZE <= size_of::<C>());
        // INVARIANT: checked above (at compile time in a `const`).
        Self {
            offset,
            feature: None,
            _field: PhantomData,
        }
    }

    /// The same field, present only if feature bit `feature` was negotiated.
    pub const fn requires(self, feature: u32) -> Self {
        Self {
            feature: Some(feature),
            ..self
        }
    }

    /// Offset in the configuration space.
    pub const fn offset(&self) -> usize {
        self.offset
    }
}

/// A [`ConfigField`] of the named field of a configuration structure.
///
/// ```ignore
/// virtio_config_field!(virtio_balloon_config, num_pages)
/// // A member of an anonymous union, whose type must be given:
/// virtio_config_field!(virtio_balloon_config, __bindgen_anon_1.free_page_hint_cmd_id as u32)
/// ```
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
    /// Fails with [`ENODEV`] if `field` needs a feature that was not
    /// negotiated, or if the transport has no configuration access.
    fn config_check<C, T: ConfigValue>(&self, field: &ConfigField<C, T>) -> Result {
        if let Some(f) = field.feature {
            if !self.has_feature(f) {
                return Err(ENODEV);
            }
        }
        if !self.has_config_access() {
            return Err(ENODEV);
        }
        Ok(())
    }

    /// Reads `field` (`virtio_cread_bytes()`, consistent across the
    /// device's configuration generation). May sleep.
    pub fn config_read<C, T: ConfigValue>(&self, field: ConfigField<C, T>) -> Result<T> {
        self.config_check(&field)?;
        let mut b = [0u8; 8];
        // SAFETY: `self.as_raw()` is a bound device whose transport is live (type invariant of
        // `Device`); the field lies within the device's configuration space: within `C`
        // (invariant of `ConfigField`) and present (feature checked above); `b` holds
        // `T::SIZE <= 8` bytes. `Device<Bound>` is only handed out in process context, where
        // configuration reads may sleep.
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
    pub fn config_write<C, T: ConfigValue>(&self, field: ConfigField<C, T>, value: T) -> Result {
        self.config_check(&field)?;
        // SAFETY: The transport's `config` ops table is valid for a bound device.
        let set = unsafe { (*(*self.as_raw()).config).set }.ok_or(ENODEV)?;
        let b = value.to_le();
        // SAFETY: `set` is the transport's configuration writer for this bound device; the field
        // lies within the present configuration space as above; `b` holds `T::SIZE` bytes.
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
