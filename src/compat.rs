// SPDX-License-Identifier: GPL-2.0

//! What differs between the kernels this module builds against, in one
//! place.
//!
//! Kbuild sets `--cfg kernel_before_7_3` for kernels older than 7.3 (see
//! `Kbuild`); everything else in the crate is written against the 7.3 API
//! and reaches the few items that differ through this module. Supported:
//! 7.2 and 7.3. Linux 6.12 lacks what a sound driver of this shape needs
//! (driver registration, device contexts, `Devres`-era device ids, pinned
//! initialization crate, module parameters); `Kbuild` refuses it with the
//! list.

/// Sleepable RCU: `kernel::sync::srcu` (7.3); a local copy of the same API
/// over the C functions for 7.2, which does not have it.
pub(crate) mod srcu {
    #[cfg(not(kernel_before_7_3))]
    pub(crate) use kernel::{
        new_srcu,
        sync::srcu::{
            Guard,
            Srcu, //
        },
    };
}
