//! QEMU test harness for the virtio memory balloon drivers.
//!
//! A [`Vm`] is one QEMU guest booted from the project's kernel
//! (`$BALLOON_KDIR/vmlinux`) and initramfs (`$BALLOON_INITRAMFS`, built by
//! `scripts/mkinitramfs.sh`), configured with a [`VmConfig`]. The harness
//! talks to it three ways:
//!
//! - QMP (through the `qapi` crate) on a unix socket: balloon target, balloon
//!   statistics, events, and anything else ([`Vm::qmp`]);
//! - a command agent on a virtio-serial port (`scripts/guest/agent`): run a
//!   shell command in the guest and get its output and exit code
//!   ([`Vm::run`]);
//! - the serial console (kernel messages), logged to
//!   `$BALLOON_LOG_DIR/<test-name>.log` and kept in memory
//!   ([`Vm::console_tail`]).
//!
//! The reusable QEMU tests live in [`suite`], parametrized by [`Driver`], so
//! the C driver's results are the baseline the Rust driver is held to.
//!
//! Environment: `BALLOON_KDIR`, `BALLOON_INITRAMFS` (required, `make test`
//! sets them), `ACCEL=tcg|kvm|auto` (see [`accel`]), `BALLOON_QEMU` (binary,
//! else `QEMU`, else `qemu-system-x86_64`), `BALLOON_QEMU_DATA` (`-L`
//! directories), `BALLOON_LOG_DIR` (default `target/qemu-logs`),
//! `BALLOON_CACHE`.

#![warn(missing_docs)]

pub mod accel;
pub mod agent;
pub mod bench;
pub mod config;
pub mod console;
pub mod cpio;
pub mod features;
pub mod ktap;
pub mod qemu;
pub mod qmp;
pub mod stats;
pub mod suite;
pub mod units;
pub mod vm;

pub use accel::Accel;
pub use agent::CmdOutput;
pub use config::{BalloonOptions, Driver, GuestImage, VmConfig};
pub use qmp::{QmpClient, QmpEvent};
pub use stats::GuestStats;
pub use units::{format_bytes, parse_size, GIB, KIB, MIB, PAGE_SIZE};
pub use vm::{Vm, Wait};
