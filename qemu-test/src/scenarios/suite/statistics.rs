//! The statistics queue: what the guest reports and how it follows the
//! balloon (`guest_stats`), and the C driver's statistics beside ours in
//! one boot (`stats_match_c`).

use super::{balloon_to, boot, config, inflate_target, unix_now, within};
use crate::rig::units::{format_bytes, format_delta, MIB};
use crate::rig::vm::{Vm, Wait};
use crate::{Driver, GuestStats};
use anyhow::{ensure, Context, Result};
use std::time::Duration;

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

fn stat(s: &GuestStats, name: &str) -> Result<i64> {
    Ok(s.require(name)? as i64)
}

/// Waits for fresh statistics in which free, available and total memory
/// moved by `by` bytes (± [`STATS_TOLERANCE`]) since `from`; returns what
/// was seen and those statistics.
fn wait_memory_stats_moved(
    vm: &mut Vm,
    from: &GuestStats,
    by: i64,
) -> Result<(String, GuestStats)> {
    let after = unix_now();
    let dir = if by < 0 { "down" } else { "up" };
    let (seen, s) = vm.wait_until(
        &format!(
            "fresh stats showing free/available/total memory {dir} by {} (± {:.0} %)",
            format_bytes(by.unsigned_abs()),
            STATS_TOLERANCE * 100.0
        ),
        STATS_TIMEOUT,
        Duration::from_millis(250),
        |vm| {
            let s = vm.guest_stats()?;
            // Free pages on the per-CPU lists are not counted as free: with
            // 64 KiB pages they hold tens of MiB.
            let pcp = vm.pcp_free_bytes()? as i64;
            let d = |n: &str| -> Result<i64> { Ok(stat(&s, n)? - stat(from, n)?) };
            let (df, da, dt) = (
                d("stat-free-memory")?,
                d("stat-available-memory")?,
                d("stat-total-memory")?,
            );
            let slack = (by.abs() as f64 * STATS_TOLERANCE) as i64 + pcp;
            let ok = s.last_update > after
                && [df, da].iter().all(|&x| (x - by).abs() <= slack)
                && within(dt, by, STATS_TOLERANCE);
            Ok(Wait::when(
                ok,
                (
                    format!(
                        "last-update {} (need > {after}); changes: free {}, available {}, total {} \
                         (per-CPU lists hold {})",
                        s.last_update,
                        format_delta(df),
                        format_delta(da),
                        format_delta(dt),
                        format_bytes(pcp as u64)
                    ),
                    s,
                ),
            ))
        },
    )?;
    Ok((seen, s))
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
    balloon_to(&mut vm, target)?;
    let (seen, s1) = wait_memory_stats_moved(&mut vm, &s0, -(balloon as i64))?;
    vm.note(&format!("inflated {}: {seen}", format_bytes(balloon)));

    // Deflate: they rise again.
    balloon_to(&mut vm, ram)?;
    let (seen, _) = wait_memory_stats_moved(&mut vm, &s1, balloon as i64)?;
    vm.note(&format!("deflated: {seen}"));

    // A workload touching 32 MiB of fresh anonymous memory in guest pages
    // (no transparent huge pages) takes a fault per page: at least half of
    // them must show (4096 with 4 KiB pages, 256 with 64 KiB).
    let faults = (32 * MIB / vm.guest_page_size()? / 2) as i64;
    let s2 = vm.guest_stats()?;
    let minor0 = stat(&s2, "stat-minor-faults")?;
    vm.run_ok("memhog -m 32 -N")?;
    let after = unix_now();
    let seen = vm.wait_until(
        &format!("fresh stats with stat-minor-faults up by >= {faults}"),
        STATS_TIMEOUT,
        Duration::from_millis(250),
        |vm| {
            let s = vm.guest_stats()?;
            let m = stat(&s, "stat-minor-faults")?;
            Ok(Wait::when(
                s.last_update > after && m - minor0 >= faults,
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

/// Fresh statistics (updated after now), waiting up to `timeout`.
pub fn fresh_stats(vm: &mut Vm, timeout: Duration) -> Result<GuestStats> {
    let t = unix_now();
    vm.wait_stats_after(t, timeout)
}

/// Statistics whose values are amounts of memory (compared within 5 %);
/// the others are event counters (ours may only have grown a little).
const MEMORY_STATS: [&str; 4] = [
    "stat-free-memory",
    "stat-available-memory",
    "stat-total-memory",
    "stat-disk-caches",
];

/// All 16 statistics, C driver and ours, in one boot: after an OOM kill
/// (so that the reclaim and OOM counters are not all zero) the C driver
/// reports, then ours takes over the device and reports. Every tag the C driver sends
/// ours sends too, memory amounts agree within 5 % and counters within
/// what the guest did in between (the module swap).
pub fn stats_match_c() -> Result<()> {
    // No swap: the workload must run the guest out of memory.
    let mut vm = Vm::boot(config(Driver::C, "stats-vs-c").swap_mib(None))?;
    let ram = vm.ram_bytes();
    // Give the reclaim, stall and OOM counters something to count: run out
    // of memory once (a workload bigger than what the balloon leaves).
    let target = crate::scenarios::features::oom_target(&mut vm)?;
    balloon_to(&mut vm, target)?;
    vm.run_ok("echo 1 > /proc/sys/vm/overcommit_memory")?;
    let oom = vm.run(&format!(
        "dd if=/dev/zero of=/dev/null bs={}M count=1",
        crate::scenarios::features::OOM_WORKLOAD_MIB
    ))?;
    ensure!(
        oom.code != 0,
        "the workload did not run out of memory: {oom:?}"
    );
    balloon_to(&mut vm, ram)?;
    vm.enable_stats_polling(STATS_INTERVAL)?;
    let c = fresh_stats(&mut vm, STATS_TIMEOUT).context("no statistics from the C driver")?;
    vm.run_ok(&format!(
        "rmmod {} && modprobe {}",
        Driver::C.module_name(),
        Driver::Rust.module_name()
    ))?;
    let rs = fresh_stats(&mut vm, STATS_TIMEOUT).context("no statistics from our driver")?;
    ensure!(
        c.stats.len() >= REQUIRED_STATS.len(),
        "the C driver reported only {:?}",
        c.stats.keys()
    );
    let mut report = Vec::new();
    for (name, &cv) in &c.stats {
        let rv = rs.require(name)?;
        report.push(format!("{name}: C {cv} / ours {rv}"));
        if MEMORY_STATS.contains(&name.as_str()) {
            // (The module swap itself reads files into the page cache, in
            // guest pages: up to a MiB with 64 KiB pages.)
            ensure!(
                within(rv as i64, cv as i64, 0.05) || rv.abs_diff(cv) <= MIB,
                "{name}: C {} but ours {}",
                format_bytes(cv),
                format_bytes(rv)
            );
        } else {
            ensure!(
                rv >= cv && rv - cv <= cv / 10 + 5000,
                "{name}: counter C {cv} but ours {rv}"
            );
        }
    }
    ensure!(
        rs.stats.len() == c.stats.len(),
        "ours reports {} statistics, C {}",
        rs.stats.len(),
        c.stats.len()
    );
    vm.note(&format!(
        "{} statistics:\n  {}",
        c.stats.len(),
        report.join("\n  ")
    ));
    vm.shutdown()
}
