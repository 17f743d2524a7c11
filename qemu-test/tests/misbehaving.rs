//! A device that misbehaves ([`qemu_test::scenarios::misbehaving`]): the in-guest test
//! device `virtio_balloon_fake.ko` keeps, fakes, duplicates or oversizes
//! buffers, or breaks. Ours must stay bounded and never reuse pages the
//! host holds; the C driver is run where it can be, and what it does is
//! recorded.

use anyhow::Result;
use qemu_test::{scenarios::misbehaving, Driver};

#[test]
fn fake_device_normal_c() -> Result<()> {
    misbehaving::fake_device_normal(Driver::C)
}

#[test]
fn fake_device_normal_rs() -> Result<()> {
    misbehaving::fake_device_normal(Driver::Rust)
}

/// Recorded, not asserted: C waits for the host forever.
#[test]
fn silent_device_c() -> Result<()> {
    misbehaving::silent_device(Driver::C)
}

#[test]
fn silent_device_rs() -> Result<()> {
    misbehaving::silent_device(Driver::Rust)
}

#[test]
fn small_deflate_ring_c() -> Result<()> {
    misbehaving::small_deflate_ring(Driver::C)
}

#[test]
fn small_deflate_ring_rs() -> Result<()> {
    misbehaving::small_deflate_ring(Driver::Rust)
}

#[test]
fn bogus_buffer_id() -> Result<()> {
    misbehaving::misbehaving_device("bogus-id")
}

#[test]
fn buffer_returned_twice() -> Result<()> {
    misbehaving::misbehaving_device("twice")
}

#[test]
fn used_length_beyond_the_buffer() -> Result<()> {
    misbehaving::misbehaving_device("oversize")
}

#[test]
fn broken_queue() -> Result<()> {
    misbehaving::misbehaving_device("broken")
}

#[test]
fn device_recovers() -> Result<()> {
    misbehaving::device_recovers()
}

/// Recorded, not asserted: C waits for its free page report forever.
#[test]
fn rmmod_with_report_held_c() -> Result<()> {
    misbehaving::rmmod_with_report_held(Driver::C)
}

#[test]
fn rmmod_with_report_held_rs() -> Result<()> {
    misbehaving::rmmod_with_report_held(Driver::Rust)
}

/// Recorded, not asserted.
#[test]
fn suspend_with_report_held_c() -> Result<()> {
    misbehaving::suspend_with_report_held(Driver::C)
}

#[test]
fn suspend_with_report_held_rs() -> Result<()> {
    misbehaving::suspend_with_report_held(Driver::Rust)
}

/// Recorded, not asserted: the workload's duration and OOM kills.
#[test]
fn oom_with_late_host_c() -> Result<()> {
    misbehaving::oom_with_late_host(Driver::C)
}

#[test]
fn oom_with_late_host_rs() -> Result<()> {
    misbehaving::oom_with_late_host(Driver::Rust)
}

/// Recorded, not asserted: C ignores the refused buffer and waits forever.
#[test]
fn refused_inflate_buffer_c() -> Result<()> {
    misbehaving::refused_inflate_buffer(Driver::C)
}

#[test]
fn refused_inflate_buffer_rs() -> Result<()> {
    misbehaving::refused_inflate_buffer(Driver::Rust)
}
