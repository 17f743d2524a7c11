//! The QEMU suite ([`qemu_test::suite`]) against the in-tree C driver
//! `virtio_balloon`: proves the rig and sets the baseline the Rust driver
//! must match (`rust_driver.rs` calls the same functions).

use anyhow::Result;
use qemu_test::features::{self, Poisoning};
use qemu_test::{suite, Driver};

const DRIVER: Driver = Driver::C;

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
