// SPDX-License-Identifier: GPL-2.0

//! Safe abstractions of kernel APIs the `kernel` crate of this kernel lacks
//! and that are not virtio: balloon page lists and migration, OOM notifiers,
//! shrinkers, free page reporting, free page hint blocks, memory information
//! and statistics, and cancelling `Arc` work items.
//!
//! Like `crate::virtio`, this is where the module's `unsafe` code lives; the
//! driver in `crate::balloon` only uses these safe interfaces.

pub(crate) mod balloon;
pub(crate) mod embed;
pub(crate) mod free_page_hint;
pub(crate) mod mm;
pub(crate) mod oom;
pub(crate) mod page_reporting;
pub(crate) mod shrinker;
pub(crate) mod workqueue;
