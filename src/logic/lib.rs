// SPDX-License-Identifier: GPL-2.0

//! Kernel-independent logic of the balloon driver.
//!
//! Everything here uses `core` only, so the same files are compiled into the
//! kernel module (as `crate::logic`) and into a host crate whose `cargo test`
//! runs their unit tests.
#![cfg_attr(not(MODULE), no_std)]

#[cfg(test)]
extern crate std;
