// SPDX-License-Identifier: GPL-2.0

//! Code that must not compile: configuration access through a type that is
//! not a device's configuration layout ([`ConfigSpace`](super::ConfigSpace)),
//! which could reach past the device's configuration space.
//!
//! Compiled only by `make lint` (`MUST_NOT_BUILD=1`: Kbuild adds
//! `--cfg must_not_build`), which requires the build to fail, with every
//! line after one marked `MUST NOT BUILD: <Trait>` rejected by an unsatisfied bound
//! naming `<Trait>` and no other error (`scripts/must-not-build.sh`).
//! (Out-of-tree doctests are never compiled, so `compile_fail` examples
//! would check nothing.)

use super::{
    ConfigField,
    Device, //
};
use kernel::{
    device::Bound,
    prelude::*, //
};

/// A field 8000 bytes into a plain array, far past any device's space.
// MUST NOT BUILD: ConfigSpace
const PAST_THE_END: ConfigField<[u8; 8192], u8> = ConfigField::sized(8000);

/// A read through a layout that is not a [`ConfigSpace`](super::ConfigSpace).
fn read_past_the_end(dev: &Device<Bound>) -> Result<u8> {
    // MUST NOT BUILD: ConfigSpace
    dev.config_read::<[u8; 8192], u8>(ConfigField::sized(8000))
}

/// A write through a layout that is not a [`ConfigSpace`](super::ConfigSpace).
fn write_past_the_end(dev: &Device<Bound>) -> Result {
    // MUST NOT BUILD: ConfigSpace
    dev.config_write::<[u16; 4096], u16>(ConfigField::sized(8000), 0)
}
