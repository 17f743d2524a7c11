//! The QEMU test suite, parametrized by [`Driver`]: the C driver's run is the
//! baseline, and the Rust driver is held to the same functions and the same
//! thresholds (`tests/c_driver.rs`, `tests/rust_driver.rs`).
//!
//! Every check reports the measured numbers when it fails.

use crate::units::{format_bytes, format_delta, MIB};
use crate::vm::{Vm, Wait};
use crate::{Driver, GuestStats, VmConfig};
use anyhow::{ensure, Context, Result};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Guest RAM of the suite's VMs, in MiB.
pub const GUEST_MIB: u64 = 1024;
/// Fraction of guest RAM the tests inflate the balloon to (25 %).
pub const INFLATE_FRACTION: (u64, u64) = (1, 4);
/// How long an inflate or deflate of 25 % of RAM may take.
pub const BALLOON_TIMEOUT: Duration = Duration::from_secs(60);
/// MemTotal must change by the balloon size within this fraction of it.
pub const MEMTOTAL_TOLERANCE: f64 = 0.01;
/// After inflating, QEMU's RSS must fall by at least this fraction of the
/// balloon size.
pub const RSS_RELEASE_MIN: f64 = 0.85;
/// Free memory the dirtying workload leaves the guest.
pub const DIRTY_HEADROOM: u64 = 64 * MIB;
/// Free/available memory in the statistics must move by the balloon size
/// within this fraction of it.
pub const STATS_TOLERANCE: f64 = 0.10;
/// Statistics polling interval the tests use, in seconds.
pub const STATS_INTERVAL: u64 = 1;
/// How long fresh statistics may take to show a change.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(20);
/// Statistics every driver must report (what the C driver reports on the
/// test kernel).
pub const REQUIRED_STATS: [&str; 10] = [
    "stat-swap-in",
    "stat-swap-out",
    "stat-major-faults",
    "stat-minor-faults",
    "stat-free-memory",
    "stat-total-memory",
    "stat-available-memory",
    "stat-disk-caches",
    "stat-htlb-pgalloc",
    "stat-htlb-pgfail",
];

/// Statistics added to virtio in 2024 (kernel 6.10, QEMU 9.1): required when
/// the QEMU in use knows them (lists them in `guest-stats`), as the C driver
/// reports them.
pub const NEWER_STATS: [&str; 6] = [
    "stat-oom-kills",
    "stat-alloc-stalls",
    "stat-async-scans",
    "stat-direct-scans",
    "stat-async-reclaims",
    "stat-direct-reclaims",
];

/// The suite's VM configuration for `driver`, logging to
/// `<c|rs>-<test>.log`.
pub fn config(driver: Driver, test: &str) -> VmConfig {
    VmConfig::new(&format!("{}-{test}", driver.load_param()))
        .driver(driver)
        .memory_mib(GUEST_MIB)
}

/// Boots the suite's VM for `driver` and `test`.
pub fn boot(driver: Driver, test: &str) -> Result<Vm> {
    Vm::boot(config(driver, test))
}

/// Balloon target (guest memory size) with 25 % of RAM inflated, and the
/// balloon size.
pub fn inflate_target(vm: &Vm) -> (u64, u64) {
    let ram = vm.ram_bytes();
    let balloon = ram * INFLATE_FRACTION.0 / INFLATE_FRACTION.1;
    (ram - balloon, balloon)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn within(measured: i64, expected: i64, tolerance: f64) -> bool {
    (measured - expected).unsigned_abs() as f64 <= expected.unsigned_abs() as f64 * tolerance
}

/// Sets the target and waits for `actual` to reach it.
pub fn balloon_to(vm: &mut Vm, target: u64) -> Result<()> {
    vm.log(&format!("balloon target {}", format_bytes(target)));
    let t0 = Instant::now();
    vm.set_balloon_target_bytes(target)?;
    let actual = vm.wait_balloon_actual(target, BALLOON_TIMEOUT)?;
    vm.note(&format!(
        "balloon actual {} after {:.2?}",
        format_bytes(actual),
        t0.elapsed()
    ));
    Ok(())
}

/// The rig itself: the expected driver is bound, guest commands return
/// their output (binary-safe) and exit codes.
pub fn agent_roundtrip(driver: Driver) -> Result<()> {
    let mut vm = boot(driver, "agent-roundtrip")?;
    let bound = vm.balloon_driver()?;
    ensure!(
        bound.as_deref() == Some(driver.module_name()),
        "balloon bound to {bound:?}, expected {}",
        driver.module_name()
    );
    let out = vm.run("printf 'a b\\nEND r1 0\\nBEGIN x\\n'; echo err >&2; exit 3")?;
    ensure!(
        out.code == 3 && out.output == "a b\nEND r1 0\nBEGIN x\nerr\n",
        "unexpected output/exit code: {out:?}"
    );
    let big = vm.run_ok("seq 1 20000")?;
    ensure!(
        big.lines().count() == 20000 && big.ends_with("20000\n"),
        "large output mangled: {} lines",
        big.lines().count()
    );
    ensure!(vm
        .run_ok("cat /proc/modules")?
        .contains(driver.module_name()));
    vm.shutdown()
}

/// (a) Inflating to 25 % of RAM and back: QEMU's `actual` reaches each
/// target, and `BALLOON_CHANGE` events report it.
pub fn inflate_deflate_actual(driver: Driver) -> Result<()> {
    let mut vm = boot(driver, "inflate-deflate-actual")?;
    let ram = vm.ram_bytes();
    let a0 = vm.query_balloon_actual()?;
    ensure!(
        a0 == ram,
        "before inflating, actual = {} but RAM = {}",
        format_bytes(a0),
        format_bytes(ram)
    );
    let (target, _) = inflate_target(&vm);
    for (what, t) in [("inflate", target), ("deflate", ram)] {
        vm.qmp().drain_events();
        balloon_to(&mut vm, t).with_context(|| format!("{what} to {}", format_bytes(t)))?;
        // BALLOON_CHANGE is rate-limited to one a second; the last one
        // carries the final value.
        let ev = vm
            .qmp()
            .wait_event("BALLOON_CHANGE", Duration::from_secs(5), |e| {
                e.balloon_actual() == Some(t)
            })
            .with_context(|| format!("{what}: no BALLOON_CHANGE with actual {t}"))?;
        vm.log(&format!("{what}: BALLOON_CHANGE at {:?}", ev.timestamp));
    }
    // Stays there.
    std::thread::sleep(Duration::from_secs(1));
    let a = vm.query_balloon_actual()?;
    ensure!(
        a == ram,
        "after deflating, actual drifted to {}",
        format_bytes(a)
    );
    vm.shutdown()
}

/// (b) The guest's MemTotal drops by the balloon size (± 1 %) and comes
/// back after deflating.
pub fn memtotal_follows_balloon(driver: Driver) -> Result<()> {
    let mut vm = boot(driver, "memtotal")?;
    let ram = vm.ram_bytes();
    let total0 = vm.meminfo_field("MemTotal")?;
    let (target, balloon) = inflate_target(&vm);
    let tolerance = (balloon as f64 * MEMTOTAL_TOLERANCE) as u64;

    balloon_to(&mut vm, target)?;
    let seen = vm.wait_until(
        &format!(
            "MemTotal to drop by {} ± {} from {}",
            format_bytes(balloon),
            format_bytes(tolerance),
            format_bytes(total0)
        ),
        Duration::from_secs(10),
        Duration::from_millis(200),
        |vm| {
            let t = vm.meminfo_field("MemTotal")?;
            let drop = total0 as i64 - t as i64;
            Ok(Wait::when(
                drop.abs_diff(balloon as i64) <= tolerance,
                format!(
                    "MemTotal {} (change {})",
                    format_bytes(t),
                    format_delta(-drop)
                ),
            ))
        },
    )?;
    vm.note(&format!("inflated {}: {seen}", format_bytes(balloon)));

    balloon_to(&mut vm, ram)?;
    let seen = vm.wait_until(
        &format!(
            "MemTotal to return to {} ± {}",
            format_bytes(total0),
            format_bytes(tolerance)
        ),
        Duration::from_secs(10),
        Duration::from_millis(200),
        |vm| {
            let t = vm.meminfo_field("MemTotal")?;
            Ok(Wait::when(
                t.abs_diff(total0) <= tolerance,
                format!(
                    "MemTotal {} (was {})",
                    format_bytes(t),
                    format_bytes(total0)
                ),
            ))
        },
    )?;
    vm.note(&format!("deflated: {seen}"));
    vm.shutdown()
}

/// (c) With most guest memory dirtied, inflating 25 % gives at least 85 %
/// of the balloon back to the host (QEMU's RSS falls).
pub fn inflate_releases_host_memory(driver: Driver) -> Result<()> {
    let mut vm = boot(driver, "rss")?;
    let free = vm.meminfo_field("MemFree")?;
    ensure!(
        free > DIRTY_HEADROOM + 256 * MIB,
        "guest has only {} free",
        format_bytes(free)
    );
    let dirty = free - DIRTY_HEADROOM;
    let rss0 = vm.qemu_rss_bytes()?;
    // dd allocates a `bs`-sized buffer, fills it from /dev/zero and exits:
    // the guest pages get written (so backed on the host) and freed.
    vm.run_ok(&format!(
        "dd if=/dev/zero of=/dev/null bs={dirty} count=1 2>&1"
    ))?;
    let rss1 = vm.qemu_rss_bytes()?;
    vm.note(&format!(
        "dirtied {}: QEMU RSS {} -> {}",
        format_bytes(dirty),
        format_bytes(rss0),
        format_bytes(rss1)
    ));
    ensure!(
        rss1 >= rss0 + dirty / 2,
        "dirtying {} in the guest grew QEMU's RSS only from {} to {}: the workload does not \
         touch guest memory",
        format_bytes(dirty),
        format_bytes(rss0),
        format_bytes(rss1)
    );

    let (target, balloon) = inflate_target(&vm);
    balloon_to(&mut vm, target)?;
    let want = (balloon as f64 * RSS_RELEASE_MIN) as u64;
    let seen = vm.wait_until(
        &format!(
            "QEMU RSS to fall by >= {} ({:.0} % of the {} balloon) from {}",
            format_bytes(want),
            RSS_RELEASE_MIN * 100.0,
            format_bytes(balloon),
            format_bytes(rss1)
        ),
        Duration::from_secs(10),
        Duration::from_millis(200),
        |vm| {
            let rss = vm.qemu_rss_bytes()?;
            let released = rss1.saturating_sub(rss);
            Ok(Wait::when(
                released >= want,
                format!(
                    "RSS {} (released {})",
                    format_bytes(rss),
                    format_bytes(released)
                ),
            ))
        },
    )?;
    vm.note(&format!("inflated {}: {seen}", format_bytes(balloon)));
    vm.shutdown()
}

fn stat(s: &GuestStats, name: &str) -> Result<i64> {
    Ok(s.require(name)? as i64)
}

/// (d) Statistics: all of [`REQUIRED_STATS`] (and [`NEWER_STATS`] if QEMU
/// knows them) are reported and consistent
/// with `/proc/meminfo`; free/available/total memory fall by the balloon
/// size when inflating and rise again when deflating; the minor fault
/// counter rises after a workload.
pub fn guest_stats(driver: Driver) -> Result<()> {
    let mut vm = boot(driver, "stats")?;
    let ram = vm.ram_bytes();
    vm.enable_stats_polling(STATS_INTERVAL)?;
    let s0 = vm
        .wait_stats_after(unix_now(), STATS_TIMEOUT)
        .context("no statistics from the guest after enabling polling")?;
    for name in REQUIRED_STATS {
        s0.require(name)?;
    }
    let qemu_knows = |n: &str| s0.stats.contains_key(n) || s0.unreported.contains(n);
    for name in NEWER_STATS.into_iter().filter(|n| qemu_knows(n)) {
        s0.require(name)?;
    }
    vm.note(&format!(
        "{} stats reported, unreported: {:?}",
        s0.stats.len(),
        s0.unreported
    ));
    let memtotal = vm.meminfo_field("MemTotal")? as i64;
    let total0 = stat(&s0, "stat-total-memory")?;
    ensure!(
        within(total0, memtotal, 0.01),
        "stat-total-memory {} but MemTotal {}",
        format_bytes(total0 as u64),
        format_bytes(memtotal as u64)
    );
    let free0 = stat(&s0, "stat-free-memory")?;
    let avail0 = stat(&s0, "stat-available-memory")?;
    ensure!(
        free0 > 0 && free0 <= total0 && avail0 >= free0 / 2 && avail0 <= total0,
        "implausible stats: {s0:?}"
    );

    // Inflate: free, available and total fall by about the balloon size.
    // Free memory moves in steps: pages freed on deflate first sit on the
    // per-CPU free lists (not counted as free) and reach the buddy
    // allocator over the next ~10 s, so the checks poll fresh statistics
    // until the change is within tolerance rather than take one sample.
    let (target, balloon) = inflate_target(&vm);
    let b = balloon as i64;
    balloon_to(&mut vm, target)?;
    let after = unix_now();
    let s1 = vm.wait_until(
        &format!(
            "fresh stats showing free/available/total memory down by {} (± {:.0} %)",
            format_bytes(balloon),
            STATS_TOLERANCE * 100.0
        ),
        STATS_TIMEOUT,
        Duration::from_millis(250),
        |vm| {
            let s = vm.guest_stats()?;
            let d = |n: &str| -> Result<i64> { Ok(stat(&s0, n)? - stat(&s, n)?) };
            let (df, da, dt) = (
                d("stat-free-memory")?,
                d("stat-available-memory")?,
                d("stat-total-memory")?,
            );
            let ok = s.last_update > after
                && within(df, b, STATS_TOLERANCE)
                && within(da, b, STATS_TOLERANCE)
                && within(dt, b, STATS_TOLERANCE);
            Ok(Wait::when(
                ok,
                (
                    format!(
                        "last-update {} (need > {after}); drops: free {}, available {}, total {}",
                        s.last_update,
                        format_delta(df),
                        format_delta(da),
                        format_delta(dt)
                    ),
                    s,
                ),
            ))
        },
    )?;
    vm.note(&format!("inflated {}: {}", format_bytes(balloon), s1.0));
    let s1 = s1.1;

    // Deflate: they rise again.
    balloon_to(&mut vm, ram)?;
    let after = unix_now();
    let seen = vm.wait_until(
        &format!(
            "fresh stats showing free/available memory back up by {} (± {:.0} %)",
            format_bytes(balloon),
            STATS_TOLERANCE * 100.0
        ),
        STATS_TIMEOUT,
        Duration::from_millis(250),
        |vm| {
            let s = vm.guest_stats()?;
            let d = |n: &str| -> Result<i64> { Ok(stat(&s, n)? - stat(&s1, n)?) };
            let (df, da, dt) = (
                d("stat-free-memory")?,
                d("stat-available-memory")?,
                d("stat-total-memory")?,
            );
            let ok = s.last_update > after
                && within(df, b, STATS_TOLERANCE)
                && within(da, b, STATS_TOLERANCE)
                && within(dt, b, STATS_TOLERANCE);
            Ok(Wait::when(
                ok,
                format!(
                    "last-update {} (need > {after}); rises: free {}, available {}, total {}",
                    s.last_update,
                    format_delta(df),
                    format_delta(da),
                    format_delta(dt)
                ),
            ))
        },
    )?;
    vm.note(&format!("deflated: {seen}"));

    // A workload touching 32 MiB of fresh anonymous memory takes at least
    // 8192 minor faults.
    let s2 = vm.guest_stats()?;
    let minor0 = stat(&s2, "stat-minor-faults")?;
    vm.run_ok("dd if=/dev/zero of=/dev/null bs=32M count=1 2>&1")?;
    let after = unix_now();
    let seen = vm.wait_until(
        "fresh stats with stat-minor-faults up by >= 4096",
        STATS_TIMEOUT,
        Duration::from_millis(250),
        |vm| {
            let s = vm.guest_stats()?;
            let m = stat(&s, "stat-minor-faults")?;
            Ok(Wait::when(
                s.last_update > after && m - minor0 >= 4096,
                format!(
                    "last-update {} (need > {after}); minor faults {minor0} -> {m}",
                    s.last_update
                ),
            ))
        },
    )?;
    vm.note(&format!("32 MiB workload: {seen}"));
    vm.shutdown()
}
