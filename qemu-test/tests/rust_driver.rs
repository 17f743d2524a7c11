//! The QEMU suite ([`qemu_test::scenarios::suite`], [`qemu_test::scenarios::features`]) against
//! our driver, `virtio_balloon_rs`, with the same tests and thresholds as the
//! C baseline (`c_driver.rs`), plus what only ours has and what compares the
//! two in one boot.

use anyhow::Result;
use qemu_test::{scenarios::suite, Driver};

const DRIVER: Driver = Driver::Rust;

qemu_test::driver_tests!(DRIVER);

/// Where the C driver lets the guest run out of memory, ours holds at its
/// reserve.
#[test]
fn holds_at_reserve_beyond_guest_memory() -> Result<()> {
    suite::holds_at_reserve_beyond_guest_memory(DRIVER)
}

/// The module's own KUnit suites (5 suites, 16 cases today).
#[test]
fn kunit_suites_pass() -> Result<()> {
    suite::kunit_suites_pass(DRIVER, 27)
}

/// The same target sequence on the C driver and ours in one boot.
#[test]
fn same_targets_as_c() -> Result<()> {
    suite::same_targets_as_c()
}

/// Every statistic of the C driver, from ours, in the same boot.
#[test]
fn stats_match_c() -> Result<()> {
    suite::stats_match_c()
}

/// Hot-unplug right after a cancelled migration, while hinting; C beside.
#[test]
fn unplug_during_hinting() -> Result<()> {
    qemu_test::scenarios::hotplug::unplug_during_hinting_beside_c()
}

/// Hugetlb-backed guest RAM, free page reporting on: inflating 256 MiB of
/// 1 GiB gives the host back at least 75 % of it as whole hugetlb pages,
/// from whole ballooned blocks; C's figure (next to nothing) recorded.
#[test]
fn hugetlb_inflate_returns_huge_pages() -> Result<()> {
    qemu_test::scenarios::hugepages::hugetlb_inflate_returns_huge_pages()
}
