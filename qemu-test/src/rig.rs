//! The rig: what boots and drives a guest for a test, and nothing about
//! what the test checks.
//!
//! A [`vm::Vm`] is QEMU ([`qemu`]) booting the project's kernel and
//! initramfs ([`cpio`]) as a [`config::VmConfig`] says, with an accelerator
//! ([`accel`]) for its architecture ([`arch`]); the harness talks to it through QMP ([`qmp`]), the command
//! agent ([`agent`]) and the serial console ([`console`]), parses KTAP
//! ([`ktap`]) and the balloon statistics ([`stats`]), and looks at the
//! host's memory behind the guest ([`hostmem`]). [`units`] formats sizes.

pub mod accel;
pub mod agent;
pub mod arch;
pub mod config;
pub mod console;
pub mod cpio;
pub mod hostmem;
pub mod ktap;
pub mod qemu;
pub mod qmp;
pub mod stats;
pub mod units;
pub mod vm;
