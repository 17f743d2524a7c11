//! QEMU test harness for the virtio memory balloon drivers.
//!
//! A [`Vm`] is one QEMU guest booted from the project's kernel
//! (`$BALLOON_KDIR/vmlinux`, or the image `$BALLOON_KERNEL`, such as the
//! distribution kernel of `make test-distro`) and initramfs
//! (`$BALLOON_INITRAMFS`, built by `scripts/mkinitramfs.sh`), configured
//! with a [`VmConfig`]. The harness
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
//! The crate is in two parts, as crosvm's `e2e_tests` (`fixture/` beside the
//! tests) and cloud-hypervisor's `test_infra`:
//!
//! - [`rig`]: what boots and drives a guest, and nothing about what a test
//!   checks (QEMU command line, QMP, the agent, the console, the
//!   initramfs, host memory, KTAP, the accelerator);
//! - [`scenarios`]: the tests themselves, parametrized by [`Driver`] where
//!   both drivers run, so the C driver's results are the baseline the Rust
//!   driver is held to; `tests/*.rs` only lists them.
//!
//! [`bench`] measures the drivers side by side (`make bench`).
//!
//! Environment: `BALLOON_KDIR`, `BALLOON_INITRAMFS` (required, `make test`
//! sets them; `BALLOON_KERNEL` instead of the first), `ACCEL=tcg|kvm|auto` (see [`rig::accel`]), `BALLOON_QEMU` (binary,
//! else `QEMU`, else `qemu-system-x86_64`), `BALLOON_QEMU_DATA` (`-L`
//! directories), `BALLOON_LOG_DIR` (default `target/qemu-logs`),
//! `BALLOON_CACHE`.

#![warn(missing_docs)]

pub mod bench;
pub mod rig;
pub mod scenarios;

pub use rig::accel::Accel;
pub use rig::agent::CmdOutput;
pub use rig::arch::Arch;
pub use rig::config::{
    scaled, Backing, BalloonOptions, Driver, GuestImage, KernelFormat, ThpMode, Tier, VmConfig,
    DATA_MOUNT,
};
pub use rig::qmp::{QmpClient, QmpEvent};
pub use rig::stats::GuestStats;
pub use rig::units::{format_bytes, parse_size, GIB, KIB, MIB, PAGE_SIZE};
pub use rig::vm::{Vm, Wait};

/// Declares, in a test file, the QEMU tests every driver must pass, for the
/// given [`Driver`]: the same functions and thresholds for the C baseline
/// (`tests/c_driver.rs`) and ours (`tests/rust_driver.rs`).
#[macro_export]
macro_rules! driver_tests {
    ($driver:expr) => {
        $crate::driver_tests!(@tests $driver;
            suite::agent_roundtrip,
            suite::inflate_deflate_actual,
            suite::memtotal_follows_balloon,
            suite::inflate_releases_host_memory,
            suite::guest_stats,
            suite::several_targets,
            suite::unaligned_target,
            suite::rmmod_while_inflated,
            suite::modprobe_by_alias,
            suite::flapping_targets,
            features::free_page_reporting,
            features::free_page_hint_migration,
            features::hinting_under_memory_pressure,
            features::balloon_page_migration,
            features::freeze_restore,
        );

        #[test]
        fn deflate_on_oom_on() -> anyhow::Result<()> {
            $crate::scenarios::features::deflate_on_oom($driver, true)
        }

        #[test]
        fn deflate_on_oom_off() -> anyhow::Result<()> {
            $crate::scenarios::features::deflate_on_oom($driver, false)
        }

        #[test]
        fn page_poison_none() -> anyhow::Result<()> {
            $crate::scenarios::features::page_poison($driver, $crate::scenarios::features::Poisoning::None)
        }

        #[test]
        fn page_poison_on() -> anyhow::Result<()> {
            $crate::scenarios::features::page_poison($driver, $crate::scenarios::features::Poisoning::Poison)
        }

        #[test]
        fn page_poison_init_on_free() -> anyhow::Result<()> {
            $crate::scenarios::features::page_poison($driver, $crate::scenarios::features::Poisoning::InitOnFree)
        }

        #[test]
        fn unplug_while_inflating() -> anyhow::Result<()> {
            $crate::scenarios::hotplug::unplug_while($driver, $crate::scenarios::hotplug::Busy::Inflating)
        }

        #[test]
        fn unplug_while_deflating() -> anyhow::Result<()> {
            $crate::scenarios::hotplug::unplug_while($driver, $crate::scenarios::hotplug::Busy::Deflating)
        }

        #[test]
        fn unplug_during_stats() -> anyhow::Result<()> {
            $crate::scenarios::hotplug::unplug_while($driver, $crate::scenarios::hotplug::Busy::Stats)
        }
    };
    (@tests $driver:expr; $($module:ident :: $test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() -> anyhow::Result<()> {
                $crate::scenarios::$module::$test($driver)
            }
        )*
    };
}
