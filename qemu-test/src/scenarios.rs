//! The scenarios: what the QEMU tests do and check, on the [`crate::rig`].
//!
//! - [`suite`], [`features`], [`hotplug`]: every driver's tests, the same
//!   functions and thresholds for the C baseline and ours
//!   ([`crate::driver_tests!`]);
//! - [`realistic`]: guests as users run them (page cache, swap, THP,
//!   cgroups, NUMA, a long-running workload), and the timed comparisons;
//! - [`hugepages`]: hosts that back the guest with huge pages;
//! - [`misbehaving`]: a device that misbehaves (the in-guest fake device);
//! - [`faults`]: fault injection on the debug tier;
//! - [`install`]: the Debian package in a full Debian guest.

pub mod faults;
pub mod features;
pub mod hotplug;
pub mod hugepages;
pub mod install;
pub mod misbehaving;
pub mod realistic;
pub mod suite;
