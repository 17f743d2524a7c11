//! A device that misbehaves: the test device `virtio_balloon_fake.ko`
//! (`qemu-test/fake-device`), a virtio balloon inside the guest that can
//! keep buffers, return bogus or duplicate ones, claim more bytes used than
//! a buffer has, or break. Whatever balloon driver is loaded binds it beside
//! QEMU's balloon.
//!
//! What the driver must do (README, "When the host misbehaves"): a wait for
//! the host is bounded (`host_timeout_ms`), a broken queue gives `EIO`,
//! the OOM notifier never waits behind a stuck request, `rmmod` finishes in
//! bounded time with a clear log line, and pages the host was told about
//! and never returned are never reused (they leak, logged).
//!
//! The C driver is run against the same device where it can be: it waits
//! forever for a silent host (`wait_event()` in `tell_host()`), so for it
//! these scenarios record what happens, with a time limit, and assert
//! nothing.

use crate::rig::units::{format_bytes, MIB};
use crate::rig::vm::{rs_counter, Vm, Wait};
use crate::scenarios::realistic::vmstat;
use crate::{Driver, VmConfig};
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The driver's host timeout in these tests.
pub const HOST_TIMEOUT_MS: u64 = 1000;
/// How long `rmmod` may take with a silent device.
pub const RMMOD_LIMIT: Duration = Duration::from_secs(15);
/// The fake device's debugfs directory.
const FAKE: &str = "/sys/kernel/debug/virtio_balloon_fake";

/// The VM: no driver at boot (the test loads it with its parameters), no
/// swap (the OOM scenario must run out of memory).
pub fn config(test: &str) -> VmConfig {
    VmConfig::new(test)
        .memory_mib(crate::scenarios::suite::GUEST_MIB)
        .swap_mib(None)
}

/// Loads `driver` (ours with a short host timeout).
pub fn load_driver(vm: &mut Vm, driver: Driver) -> Result<()> {
    load_driver_timeout(vm, driver, HOST_TIMEOUT_MS)
}

/// Loads `driver` (ours with a host timeout of `host_timeout_ms`).
pub fn load_driver_timeout(vm: &mut Vm, driver: Driver, host_timeout_ms: u64) -> Result<()> {
    let args = match driver {
        Driver::Rust => format!("host_timeout_ms={host_timeout_ms}"),
        Driver::C => String::new(),
    };
    vm.run_ok(&format!("modprobe {} {args}", driver.module_name()))?;
    Ok(())
}

/// Loads the fake device in `mode`, offering `features`.
pub fn load_fake(vm: &mut Vm, mode: &str, features: u32) -> Result<()> {
    vm.run_ok(&format!(
        "insmod /lib/modules/$(uname -r)/extra/virtio_balloon_fake.ko features={features} && \
         echo {mode} > {FAKE}/mode"
    ))?;
    Ok(())
}

/// The fake device's counters.
pub fn fake_stats(vm: &mut Vm) -> Result<BTreeMap<String, String>> {
    let out = vm.run_ok(&format!("cat {FAKE}/stats"))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect())
}

fn stat_u64(s: &BTreeMap<String, String>, k: &str) -> Result<u64> {
    s.get(k)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {k} in the fake device's stats: {s:?}"))
}

/// Sets the fake host's target, in 4 KiB pages.
pub fn fake_target(vm: &mut Vm, pages: u64) -> Result<()> {
    vm.run_ok(&format!("echo {pages} > {FAKE}/target"))?;
    Ok(())
}

/// Our driver's debugfs counters ([`Vm::rs_counters`]) for the fake
/// device alone: the directory of the virtio device that is not on PCI
/// (QEMU's balloon is).
pub fn fake_rs_counters(vm: &mut Vm) -> Result<BTreeMap<String, u64>> {
    let out = vm.run_ok(
        "for d in /sys/bus/virtio/devices/*; do \
           case \"$(readlink -f $d)\" in */pci*) continue;; esac; \
           f=/sys/kernel/debug/virtio_balloon_rs-$(basename $d)/stats; \
           [ -e $f ] && cat $f; \
         done",
    )?;
    let counters: BTreeMap<String, u64> = out
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect();
    ensure!(
        !counters.is_empty(),
        "no debugfs stats of virtio_balloon_rs for the fake device: {out:?}"
    );
    Ok(counters)
}

/// Waits until the fake device's `actual` is `pages`.
fn wait_fake_actual(vm: &mut Vm, pages: u64, timeout: Duration) -> Result<()> {
    vm.wait_until(
        &format!("the fake device's actual = {pages}"),
        timeout,
        Duration::from_millis(200),
        |vm| {
            let s = fake_stats(vm)?;
            let a = stat_u64(&s, "actual")?;
            Ok(Wait::when(a == pages, a))
        },
    )?;
    Ok(())
}

/// A well-behaved fake device: the driver follows its targets, and every
/// PFN it deflates was inflated before. Then the device goes away
/// (`unplug`, what hot-unplug does) while the balloon is inflated.
pub fn fake_device_normal(driver: Driver) -> Result<()> {
    let mut vm = Vm::boot(config(&format!("{}-fake-normal", driver.load_param())).subject(driver))?;
    load_driver(&mut vm, driver)?;
    load_fake(&mut vm, "normal", 0x5)?;
    let pages = 32 * MIB / 4096;
    fake_target(&mut vm, pages)?;
    wait_fake_actual(&mut vm, pages, Duration::from_secs(30))?;
    fake_target(&mut vm, pages / 2)?;
    wait_fake_actual(&mut vm, pages / 2, Duration::from_secs(30))?;
    let s = fake_stats(&mut vm)?;
    vm.note(&format!("{driver}: fake device stats {s:?}"));
    ensure!(
        stat_u64(&s, "deflated_never_inflated")? == 0,
        "{driver} deflated PFNs it never inflated: {s:?}"
    );
    let t0 = Instant::now();
    vm.run_ok(&format!("echo 1 > {FAKE}/unplug"))?;
    vm.note(&format!(
        "{driver}: unplugged with {} inflated in {:.2?}",
        format_bytes(pages / 2 * 4096),
        t0.elapsed()
    ));
    let s = fake_stats(&mut vm)?;
    ensure!(
        stat_u64(&s, "actual")? == 0 && stat_u64(&s, "deflated_never_inflated")? == 0,
        "{driver}: after unplug {s:?}"
    );
    vm.shutdown()
}

/// A device whose deflate ring is smaller (4 entries) than its inflate
/// ring: the driver keeps fewer deflate buffers in flight (half the ring's
/// 4 with the default `buffers`), and tells the host about every page
/// it frees (`MUST_TELL_HOST`): once the balloon is empty, the device has
/// seen each inflated PFN deflated. (Before the fix, our deflate used the
/// inflate ring's depth; `send` then failed with `ENOSPC` and the pages of
/// the refused buffers were freed untold.)
pub fn small_deflate_ring(driver: Driver) -> Result<()> {
    let mut vm = Vm::boot(
        config(&format!("{}-fake-small-deflate-ring", driver.load_param())).subject(driver),
    )?;
    load_driver(&mut vm, driver)?;
    vm.run_ok(
        "insmod /lib/modules/$(uname -r)/extra/virtio_balloon_fake.ko features=0x5 \
         deflate_ring=4",
    )?;
    let pages = 64 * MIB / 4096;
    fake_target(&mut vm, pages)?;
    wait_fake_actual(&mut vm, pages, Duration::from_secs(60))?;
    fake_target(&mut vm, 0)?;
    wait_fake_actual(&mut vm, 0, Duration::from_secs(60))?;
    let s = fake_stats(&mut vm)?;
    vm.note(&format!("{driver}: fake device stats {s:?}"));
    let (inflated, deflated) = (
        stat_u64(&s, "inflated_pfns")?,
        stat_u64(&s, "deflated_pfns")?,
    );
    ensure!(
        inflated >= pages && deflated == inflated,
        "{driver} inflated {inflated} PFNs and told the device of {deflated} deflated ones with \
         the balloon empty: pages were freed untold"
    );
    ensure!(
        stat_u64(&s, "deflated_never_inflated")? == 0,
        "{driver} deflated PFNs it never inflated: {s:?}"
    );
    vm.shutdown()
}

/// Waits for a console line after `mark` containing `needle`.
fn logged(vm: &mut Vm, mark: usize, needle: &str, timeout: Duration) -> Result<String> {
    vm.wait_console(mark, needle, timeout)
}

/// A device that never returns a buffer: our driver stops waiting after
/// `host_timeout_ms` and says so; the OOM notifier does not block (a
/// workload that runs the guest out of memory is OOM-killed promptly, and
/// the guest keeps running); `rmmod` ends in bounded time and says which
/// pages it cannot give back. The host "answering again" later is seen.
pub fn silent_device(driver: Driver) -> Result<()> {
    let mut vm = Vm::boot(config(&format!("{}-fake-silent", driver.load_param())).subject(driver))?;
    load_driver(&mut vm, driver)?;
    load_fake(&mut vm, "silent", 0x5)?;
    let mark = vm.console_mark();
    fake_target(&mut vm, 64 * MIB / 4096)?;
    let stuck = logged(
        &mut vm,
        mark,
        "did not return an",
        Duration::from_millis(HOST_TIMEOUT_MS) * 5,
    );
    match (&stuck, driver) {
        (Ok(line), _) => vm.note(&format!("{driver}: {line}")),
        (Err(_), Driver::C) => vm.note("virtio_balloon: no message about the silent device"),
        (Err(e), Driver::Rust) => bail!("ours did not report the silent device: {e:#}"),
    }

    // Run out of memory: the OOM notifier must not wait behind the request.
    let kills = vmstat(&mut vm, "oom_kill")?;
    vm.run_ok("echo 1 > /proc/sys/vm/overcommit_memory")?;
    let t0 = Instant::now();
    let oom = vm.run_timeout(
        "memhog -m 1200 > /dev/null 2>&1; echo rc=$?",
        Duration::from_secs(90),
    );
    let oom_time = t0.elapsed();
    match (&oom, driver) {
        (Ok(out), _) => vm.note(&format!(
            "{driver}: out-of-memory workload ended in {oom_time:.2?}: {}",
            out.output.trim()
        )),
        (Err(e), Driver::C) => {
            vm.note(&format!(
                "virtio_balloon: out-of-memory workload did not end in 90 s: {e:#}"
            ));
            // The C driver holds its lock forever: nothing more to see.
            return vm.abandon();
        }
        (Err(e), Driver::Rust) => bail!("the guest stalled running out of memory: {e:#}"),
    }
    let killed = vmstat(&mut vm, "oom_kill")? - kills;
    if driver == Driver::Rust {
        ensure!(killed >= 1, "the workload was not OOM-killed");
        ensure!(
            oom_time < Duration::from_secs(60),
            "running out of memory took {oom_time:.2?}"
        );
    }

    // Unload the driver: bounded, and it says what it keeps.
    let mark = vm.console_mark();
    let t0 = Instant::now();
    let rm = vm.run_timeout(&format!("rmmod {}", driver.module_name()), RMMOD_LIMIT * 2);
    let rm_time = t0.elapsed();
    match (&rm, driver) {
        (Ok(out), _) => vm.note(&format!(
            "{driver}: rmmod took {rm_time:.2?} (exit {})",
            out.code
        )),
        (Err(e), Driver::C) => {
            vm.note(&format!("virtio_balloon: rmmod did not finish: {e:#}"));
            return vm.abandon();
        }
        (Err(e), Driver::Rust) => bail!("rmmod did not finish: {e:#}"),
    }
    if driver == Driver::Rust {
        ensure!(rm_time < RMMOD_LIMIT, "rmmod took {rm_time:.2?}");
        let line = logged(&mut vm, mark, "never freed", Duration::from_secs(5))?;
        vm.note(&format!("ours: {line}"));
    }
    let s = fake_stats(&mut vm)?;
    vm.note(&format!("{driver}: fake device stats {s:?}"));
    vm.shutdown()
}

/// A device that misbehaves in `mode` (`bogus-id`, `twice`, `broken`,
/// `oversize`): our driver must not crash or hang; a broken queue stops it
/// with a log line, an oversized used length is clamped (and the balloon
/// still reaches the target); `rmmod` is bounded.
pub fn misbehaving_device(mode: &str) -> Result<()> {
    let driver = Driver::Rust;
    let mut vm = Vm::boot(config(&format!("rs-fake-{mode}")).subject(driver))?;
    load_driver(&mut vm, driver)?;
    load_fake(&mut vm, mode, 0x5)?;
    let mark = vm.console_mark();
    let pages = 16 * MIB / 4096;
    fake_target(&mut vm, pages)?;
    let expect = match mode {
        "oversize" => "bytes used in a",
        _ => "queue broke",
    };
    let line = logged(
        &mut vm,
        mark,
        expect,
        Duration::from_millis(HOST_TIMEOUT_MS) * 5,
    )
    .with_context(|| format!("no {expect:?} log line with a device in mode {mode}"))?;
    vm.note(&format!("{mode}: {line}"));
    if mode == "oversize" {
        wait_fake_actual(&mut vm, pages, Duration::from_secs(30))?;
    }
    vm.run_ok("echo alive")?;
    let t0 = Instant::now();
    vm.run_timeout(&format!("rmmod {}", driver.module_name()), RMMOD_LIMIT)?;
    vm.note(&format!("{mode}: rmmod took {:.2?}", t0.elapsed()));
    let s = fake_stats(&mut vm)?;
    vm.note(&format!("{mode}: fake device stats {s:?}"));
    vm.shutdown()
}

/// A device that keeps its buffers for a while, then returns them: the
/// driver says the device answers again and follows the next target.
pub fn device_recovers() -> Result<()> {
    let driver = Driver::Rust;
    let mut vm = Vm::boot(config("rs-fake-recovers").subject(driver))?;
    load_driver(&mut vm, driver)?;
    load_fake(&mut vm, "silent", 0x5)?;
    let mark = vm.console_mark();
    let pages = 16 * MIB / 4096;
    fake_target(&mut vm, pages)?;
    logged(
        &mut vm,
        mark,
        "did not return an",
        Duration::from_millis(HOST_TIMEOUT_MS) * 5,
    )?;
    vm.run_ok(&format!(
        "echo normal > {FAKE}/mode && echo 1 > {FAKE}/release"
    ))?;
    fake_target(&mut vm, pages * 2)?;
    logged(
        &mut vm,
        mark,
        "the device answers again",
        Duration::from_secs(10),
    )?;
    wait_fake_actual(&mut vm, pages * 2, Duration::from_secs(30))?;
    fake_target(&mut vm, 0)?;
    wait_fake_actual(&mut vm, 0, Duration::from_secs(30))?;
    let s = fake_stats(&mut vm)?;
    ensure!(
        stat_u64(&s, "deflated_never_inflated")? == 0,
        "deflated PFNs never inflated: {s:?}"
    );
    vm.note(&format!("recovered: {s:?}"));
    vm.shutdown()
}

mod late_host;
mod reports;

pub use late_host::{
    oom_with_late_host, refused_inflate_buffer, LATE_HOST_TIMEOUT_MS, LATE_MS, OOM_NOTIFY_LIMIT,
};
pub use reports::{
    rmmod_with_report_held, suspend_with_report_held, FEATURES_REPORTING, FREEZER_TEST_LIMIT,
};
