// SPDX-License-Identifier: GPL-2.0

//! Raw bindings for the C APIs this module uses that `kernel::bindings` lacks.
//!
//! Generated at build time by bindgen from `bindings_helper.h` (see `Kbuild`);
//! the types they refer to come from `kernel::bindings`. Only the safe
//! abstractions in `crate::virtio` and `crate::kext` use this module.

#![allow(
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    improper_ctypes,
    unreachable_pub,
    unsafe_op_in_unsafe_fn
)]

use kernel::ffi;
use pin_init::MaybeZeroable;

// The kernel's own bindings provide every type the generated items refer to;
// items generated here take precedence over this glob import.
#[allow(unused_imports)]
use kernel::bindings::*;

include!("bindings_generated.rs");
