// SPDX-License-Identifier: GPL-2.0

//! Raw bindings for the C APIs this module uses that `kernel::bindings` lacks.
//!
//! Generated at build time by bindgen from `bindings_helper.h` (see `Kbuild`);
//! the types they refer to come from `kernel::bindings`. Only the safe
//! abstractions in `crate::virtio`, `crate::mm` and `crate::workqueue` use
//! this module.

#![allow(
    clippy::all,
    clippy::ptr_as_ptr,
    clippy::ref_as_ptr,
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

include!("bindings/bindings_generated.rs");

/// The virtio balloon device ABI (`include/uapi/linux/virtio_balloon.h` and
/// the generic virtio feature bits it relies on): constants and the
/// configuration layout, which the driver may use directly.
pub(crate) mod uapi {
    pub(crate) use super::{
        virtio_balloon_config,
        VIRTIO_BALLOON_CMD_ID_DONE,
        VIRTIO_BALLOON_CMD_ID_STOP,
        VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
        VIRTIO_BALLOON_F_FREE_PAGE_HINT,
        VIRTIO_BALLOON_F_MUST_TELL_HOST,
        VIRTIO_BALLOON_F_PAGE_POISON,
        VIRTIO_BALLOON_F_REPORTING,
        VIRTIO_BALLOON_F_STATS_VQ,
        VIRTIO_BALLOON_PFN_SHIFT,
        VIRTIO_BALLOON_S_NR,
        VIRTIO_F_ACCESS_PLATFORM,
        VIRTIO_ID_BALLOON,
        VIRTIO_RING_F_INDIRECT_DESC, //
    };
}
