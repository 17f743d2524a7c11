// SPDX-License-Identifier: GPL-2.0

//! Memory management APIs the kernel crate of the supported kernels lacks,
//! in the shape an upstream `rust/kernel/mm/` abstraction would have:
//! generic, knowing nothing of virtio or of the balloon protocol.
//!
//! - balloon page lists (`include/linux/balloon.h`) and balloon page
//!   migration, in [`balloon`];
//! - OOM notifiers, in [`oom`];
//! - shrinkers, in [`shrinker`];
//! - free page reporting devices, in [`page_reporting`];
//! - blocks of free pages and NUMA nodes, in [`page`];
//! - memory counters (`/proc/meminfo`, `/proc/vmstat`), in [`stat`].
//!
//! Registrations ([`oom::Registration`], [`shrinker::Registration`],
//! [`page_reporting::Registration`]) follow `irq::Registration`: they
//! register in their pinned initializer, carry the handler their callback
//! calls, and unregister (waiting for running callbacks) when dropped.

pub(crate) mod balloon;
pub(crate) mod oom;
pub(crate) mod page;
pub(crate) mod page_reporting;
pub(crate) mod shrinker;
pub(crate) mod stat;

pub(crate) use page::{
    Node,
    PageBlock, //
};
