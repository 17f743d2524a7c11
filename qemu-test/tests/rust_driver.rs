//! The QEMU suite ([`qemu_test::suite`]) against our driver,
//! `virtio_balloon_rs`, with the same functions and thresholds as the C
//! baseline in `c_driver.rs`.

use anyhow::Result;
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
