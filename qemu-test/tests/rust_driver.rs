//! The QEMU suite ([`qemu_test::suite`]) against our driver,
//! `virtio_balloon_rs`, with the same functions and thresholds as the C
//! baseline in `c_driver.rs`.

use anyhow::Result;
use qemu_test::features::{self, Poisoning};
use qemu_test::{suite, Driver};

const DRIVER: Driver = Driver::Rust;

#[test]
fn agent_roundtrip() -> Result<()> {
    suite::agent_roundtrip(DRIVER)
}

#[test]
fn inflate_deflate_actual() -> Result<()> {
    suite::inflate_deflate_actual(DRIVER)
}

#[test]
fn memtotal_follows_balloon() -> Result<()> {
    suite::memtotal_follows_balloon(DRIVER)
}

#[test]
fn inflate_releases_host_memory() -> Result<()> {
    suite::inflate_releases_host_memory(DRIVER)
}

#[test]
fn guest_stats() -> Result<()> {
    suite::guest_stats(DRIVER)
}

#[test]
fn several_targets() -> Result<()> {
    suite::several_targets(DRIVER)
}

#[test]
fn rmmod_while_inflated() -> Result<()> {
    suite::rmmod_while_inflated(DRIVER)
}

#[test]
fn modprobe_by_alias() -> Result<()> {
    suite::modprobe_by_alias(DRIVER)
}

#[test]
fn flapping_targets() -> Result<()> {
    suite::flapping_targets(DRIVER)
}

/// Where the C driver panics the guest, ours holds at its reserve.
#[test]
fn holds_at_reserve_beyond_guest_memory() -> Result<()> {
    suite::holds_at_reserve_beyond_guest_memory(DRIVER)
}

/// The module's own KUnit suites (3 suites, 8 cases today).
#[test]
fn kunit_suites_pass() -> Result<()> {
    suite::kunit_suites_pass(DRIVER, 8)
}

/// The same target sequence on the C driver and ours in one boot.
#[test]
fn same_targets_as_c() -> Result<()> {
    suite::same_targets_as_c()
}

// ---- optional features and system sleep (qemu_test::features) ----

#[test]
fn deflate_on_oom_on() -> Result<()> {
    features::deflate_on_oom(DRIVER, true)
}

#[test]
fn deflate_on_oom_off() -> Result<()> {
    features::deflate_on_oom(DRIVER, false)
}

#[test]
fn free_page_reporting() -> Result<()> {
    features::free_page_reporting(DRIVER)
}

#[test]
fn page_poison_none() -> Result<()> {
    features::page_poison(DRIVER, Poisoning::None)
}

#[test]
fn page_poison_on() -> Result<()> {
    features::page_poison(DRIVER, Poisoning::Poison)
}

#[test]
fn page_poison_init_on_free() -> Result<()> {
    features::page_poison(DRIVER, Poisoning::InitOnFree)
}

#[test]
fn free_page_hint_migration() -> Result<()> {
    features::free_page_hint_migration(DRIVER)
}

#[test]
fn balloon_page_migration() -> Result<()> {
    features::balloon_page_migration(DRIVER)
}

#[test]
fn freeze_restore() -> Result<()> {
    features::freeze_restore(DRIVER)
}

/// Every statistic of the C driver, from ours, in the same boot.
#[test]
fn stats_match_c() -> Result<()> {
    suite::stats_match_c()
}
