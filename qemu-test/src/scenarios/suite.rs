//! The QEMU test suite, parametrized by [`Driver`]: the C driver's run is the
//! baseline, and the Rust driver is held to the same functions and the same
//! thresholds (`tests/c_driver.rs`, `tests/rust_driver.rs`).
//!
//! Every check reports the measured numbers when it fails. The statistics
//! tests are in `suite/statistics.rs`, the target sequences in `suite/targets.rs`.

use crate::rig::units::{format_bytes, format_delta, MIB};
use crate::rig::vm::{rs_counter, Vm, Wait};
use crate::{Driver, VmConfig};
use anyhow::{ensure, Context, Result};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod statistics;
mod targets;

pub use statistics::{
    fresh_stats, guest_stats, stats_match_c, NEWER_STATS, REQUIRED_STATS, STATS_INTERVAL,
    STATS_TIMEOUT, STATS_TOLERANCE,
};
pub use targets::{
    flapping_targets, same_targets_as_c, several_targets, target_for, target_sequence,
    unaligned_target, Step, TARGET_SEQUENCE,
};

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

/// Seconds since the epoch, as the guest's statistics time them.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether `measured` is within `tolerance` (a fraction) of `expected`.
fn within(measured: i64, expected: i64, tolerance: f64) -> bool {
    (measured - expected).unsigned_abs() as f64 <= expected.unsigned_abs() as f64 * tolerance
}

/// Sets the target and waits for `actual` to reach it.
pub fn balloon_to(vm: &mut Vm, target: u64) -> Result<()> {
    balloon_to_within(vm, target, BALLOON_TIMEOUT)
}

/// [`balloon_to`], waiting up to `timeout`.
pub fn balloon_to_within(vm: &mut Vm, target: u64, timeout: Duration) -> Result<()> {
    vm.log(&format!("balloon target {}", format_bytes(target)));
    let t0 = Instant::now();
    vm.set_balloon_target_bytes(target)?;
    let actual = vm.wait_balloon_actual(target, timeout)?;
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

/// Unloading the driver with the balloon inflated gives every page back:
/// MemTotal returns to the page, QEMU sees an empty balloon, nothing is
/// leaked; loading the driver again follows the target again.
pub fn rmmod_while_inflated(driver: Driver) -> Result<()> {
    let mut vm = boot(driver, "rmmod-inflated")?;
    let ram = vm.ram_bytes();
    let module = driver.module_name();
    let total0 = vm.meminfo_field("MemTotal")?;
    let (target, balloon) = inflate_target(&vm);
    balloon_to(&mut vm, target)?;
    let total1 = vm.meminfo_field("MemTotal")?;
    ensure!(
        total0 - total1 >= balloon * 99 / 100,
        "inflating {} took MemTotal only from {} to {}",
        format_bytes(balloon),
        format_bytes(total0),
        format_bytes(total1)
    );

    vm.run_ok(&format!("rmmod {module}"))?;
    let total2 = vm.meminfo_field("MemTotal")?;
    ensure!(
        total2 == total0,
        "after rmmod {module}, MemTotal is {} ({} bytes), before inflating it was {} ({} bytes)",
        format_bytes(total2),
        total2,
        format_bytes(total0),
        total0
    );
    let modules = vm.run_ok("cat /proc/modules")?;
    ensure!(
        !modules.contains(module),
        "{module} still loaded: {modules}"
    );
    let actual = vm.query_balloon_actual()?;
    ensure!(
        actual == ram,
        "after rmmod QEMU reports actual {} (RAM {})",
        format_bytes(actual),
        format_bytes(ram)
    );
    vm.note(&format!(
        "rmmod with {} inflated: MemTotal back to {} bytes exactly",
        format_bytes(balloon),
        total2
    ));

    // The target is still set: a new probe inflates again.
    vm.run_ok(&format!("modprobe {module}"))?;
    vm.wait_balloon_actual(target, BALLOON_TIMEOUT)
        .context("re-probed driver did not follow the target")?;
    balloon_to(&mut vm, ram)?;
    vm.shutdown()
}

/// The module's id table gives it the device's modalias: with only this
/// driver left in `modules.alias`, `modprobe <modalias of the balloon>`
/// loads it and it binds the device.
pub fn modprobe_by_alias(driver: Driver) -> Result<()> {
    let mut vm = Vm::boot(config(driver, "modalias").driver_opt(None))?;
    let module = driver.module_name();
    let other = match driver {
        Driver::C => Driver::Rust,
        Driver::Rust => Driver::C,
    }
    .module_name();
    let alias = vm.run_ok(
        "for d in /sys/bus/virtio/devices/*; do \
         if [ \"$(cat $d/device)\" = 0x0005 ]; then cat $d/modalias; fi; done",
    )?;
    let alias = alias.trim().to_string();
    ensure!(
        alias.starts_with("virtio:d00000005v"),
        "no balloon device modalias found: {alias:?}"
    );
    let table = vm.run_ok("cat /lib/modules/*/modules.alias")?;
    ensure!(
        table
            .lines()
            .any(|l| l.starts_with("alias virtio:d00000005v") && l.ends_with(&format!(" {module}"))),
        "modules.alias has no balloon alias for {module}:\n{table}"
    );
    vm.run_ok(&format!(
        "sed -i '/ {other}$/d' /lib/modules/*/modules.alias && modprobe '{alias}'"
    ))?;
    let bound = vm.balloon_driver()?;
    ensure!(
        bound.as_deref() == Some(module),
        "after modprobe '{alias}' the balloon is bound to {bound:?}, expected {module}"
    );
    vm.note(&format!("modprobe '{alias}' loaded and bound {module}"));
    vm.shutdown()
}

/// The host asks for (almost) all guest memory: 1 MiB left.
pub const BEYOND_TARGET: u64 = MIB;

/// Ours, held at its reserve, stays idle for 10 s: the size work runs only
/// on its slow recheck, inflates nothing, and its wakeup source is not
/// active. The guest's reclaim meanwhile is logged.
fn hold_is_idle(vm: &mut Vm, power: &str) -> Result<()> {
    // Holding is idle: the size work runs again on a config change or
    // a slow recheck (every 5 s), not in a loop, and the wakeup event
    // of the last request is finished, so the guest may suspend.
    let hold_mark = vm.console_mark();
    // What the guest's reclaim did meanwhile: memory it found for the
    // balloon to take may come from swapping out or dropping caches.
    const RECLAIM: [&str; 4] = [
        "pswpout",
        "pgsteal_kswapd",
        "pgsteal_direct",
        "workingset_refault_file",
    ];
    let reclaim = |vm: &mut Vm| -> Result<Vec<u64>> {
        Ok(vm
            .vmstat_fields(&RECLAIM)?
            .into_iter()
            .map(|v| v.unwrap_or(0))
            .collect())
    };
    // Where memory the balloon took meanwhile came from.
    const MEMINFO: [&str; 7] = [
        "MemFree",
        "MemAvailable",
        "AnonPages",
        "Cached",
        "Shmem",
        "SReclaimable",
        "SwapFree",
    ];
    let v0 = reclaim(vm)?;
    let m0 = vm.meminfo()?;
    let c0 = vm.rs_counters()?;
    std::thread::sleep(Duration::from_secs(10));
    let c1 = vm.rs_counters()?;
    let m1 = vm.meminfo()?;
    let v1 = reclaim(vm)?;
    let mib = |m: &std::collections::BTreeMap<String, u64>, k: &str| {
        m.get(k).copied().unwrap_or(0) as f64 / MIB as f64
    };
    let mem: Vec<String> = MEMINFO
        .iter()
        .map(|k| format!("{k} {:.1} -> {:.1} MiB", mib(&m0, k), mib(&m1, k)))
        .collect();
    vm.note(&format!("meminfo over the 10 s: {}", mem.join(", ")));
    let moved: Vec<String> = RECLAIM
        .iter()
        .zip(v0.iter().zip(&v1))
        .map(|(k, (a, b))| format!("{k} +{}", b.saturating_sub(*a)))
        .collect();
    vm.note(&format!("reclaim in the 10 s: {}", moved.join(", ")));
    let rounds = rs_counter(&c1, "rounds")? - rs_counter(&c0, "rounds")?;
    let inflated = rs_counter(&c1, "inflate_pages")? - rs_counter(&c0, "inflate_pages")?;
    let active = vm.run_ok(&format!("cat {power}/wakeup_active"))?;
    // What the driver said meanwhile, to tell a loop's cause.
    let said: Vec<String> = vm
        .console_since(hold_mark)
        .into_iter()
        .filter(|l| l.contains("virtio_balloon_rs"))
        .collect();
    vm.note(&format!(
        "holding: {rounds} size-work rounds in 10 s, {inflated} pages inflated; \
         wakeup_active {}; the driver said: {said:#?}",
        active.trim()
    ));
    ensure!(
        rounds <= 4,
        "holding at the reserve ran the size work {rounds} times in 10 s (a recheck every \
         5 s is expected); {inflated} pages inflated meanwhile; the driver said: {said:#?}"
    );
    // Nor does it start and stop: the few pages an idle guest frees
    // between rechecks do not restart it (before, it logged "inflating
    // again" and held again every 5 s, creeping a few pages each time).
    ensure!(
        inflated == 0 && !said.iter().any(|l| l.contains("inflating again")),
        "the held balloon restarted while the guest was idle ({inflated} pages inflated in \
         10 s): {said:#?}"
    );
    ensure!(
        active.trim() == "0",
        "the balloon device's wakeup source is still active while the balloon holds"
    );
    Ok(())
}

/// A target the guest cannot meet (all but 1 MiB of its memory): our
/// driver stops at its reserve (`min_available_mib`) and says so, the guest
/// keeps running, and the balloon deflates completely afterwards. (The C
/// driver has no reserve: it inflates until allocations fail, and the guest
/// may die of memory exhaustion, "System is deadlocked on memory".)
pub fn holds_at_reserve_beyond_guest_memory(driver: Driver) -> Result<()> {
    let mut vm = boot(driver, "beyond-memory")?;
    let ram = vm.ram_bytes();
    let total0 = vm.meminfo_field("MemTotal")?;
    // The device's wakeup source on, as a user who lets the balloon's host
    // requests keep the guest awake has it.
    let power = "$(for d in /sys/bus/virtio/devices/*; do [ \"$(cat $d/device)\" = 0x0005 ] && \
                 echo $d; done)/power";
    vm.run_ok(&format!("echo enabled > {power}/wakeup"))?;
    let mark = vm.console_mark();
    vm.set_balloon_target_bytes(BEYOND_TARGET)?;
    // Settled: the driver says it holds, and `actual` has not moved for
    // three of the driver's 5 s rechecks (a round may take seconds on a
    // loaded TCG host, and a first hold may end rightly: a guest that has
    // just booted keeps freeing memory for a while; on Debian's arm64
    // kernel MemAvailable rose by 15 MiB in the 10 s after the first hold,
    // with no reclaim, and the balloon took it then).
    let seen = vm.wait_until(
        "the balloon to stop growing at the reserve",
        Duration::from_secs(120),
        Duration::from_secs(2),
        {
            let mut prev = (u64::MAX, Instant::now());
            move |vm| {
                let a = vm.query_balloon_actual()?;
                if a != prev.0 {
                    prev = (a, Instant::now());
                }
                let settled = prev.1.elapsed() >= Duration::from_secs(15)
                    && !vm.console_find(mark, "holding the balloon").is_empty();
                Ok(Wait::when(settled, format!("actual {}", format_bytes(a))))
            }
        },
    )?;
    vm.note(&format!("target 1 MiB: settled at {seen}"));
    let avail = vm.meminfo_field("MemAvailable")?;
    vm.note(&format!("MemAvailable {}", format_bytes(avail)));
    // The reserve is 20 MiB for 1 GiB; the guest's own use moves
    // MemAvailable a little after the balloon stops.
    ensure!(
        avail >= 8 * MIB,
        "the balloon left the guest only {} available",
        format_bytes(avail)
    );
    vm.run_ok("echo alive")
        .context("guest unresponsive with the balloon at its limit")?;
    let held = vm.console_find(mark, "holding the balloon");
    ensure!(
        !held.is_empty(),
        "the driver never reported holding the balloon at its reserve"
    );
    vm.note(&held[0]);
    if driver == Driver::Rust {
        hold_is_idle(&mut vm, power)?;
    }
    balloon_to(&mut vm, ram)?;
    let total = vm.meminfo_field("MemTotal")?;
    ensure!(
        total.abs_diff(total0) <= MIB,
        "after deflating, MemTotal {} but {} at boot",
        format_bytes(total),
        format_bytes(total0)
    );
    vm.shutdown()
}

/// KUnit suites built into a driver module, as reported on the console when
/// it loads: every suite named `<module>_*` finished and passed, and there
/// are `min_cases` cases at least. The C driver has none, so this is
/// checked for the Rust driver only.
pub fn kunit_suites_pass(driver: Driver, min_cases: usize) -> Result<()> {
    let vm = boot(driver, "kunit")?;
    let prefix = format!("{}_", driver.module_name());
    let lines = vm.console_since(0);
    let suites: Vec<_> = crate::rig::ktap::parse(&lines)
        .into_iter()
        .filter(|s| s.name.starts_with(&prefix))
        .collect();
    let cases: usize = suites.iter().map(|s| s.cases.len()).sum();
    for s in &suites {
        ensure!(
            s.ok == Some(true),
            "KUnit suite {} did not pass: {s:?}",
            s.name
        );
        for c in &s.cases {
            ensure!(
                c.ok && !c.skipped,
                "KUnit case {}.{} failed or skipped",
                s.name,
                c.name
            );
        }
    }
    ensure!(
        cases >= min_cases,
        "found {} KUnit cases in {} suites named {prefix}*, expected at least {min_cases}",
        cases,
        suites.len()
    );
    vm.note(&format!(
        "KUnit: {} suites, {cases} cases passed: {:?}",
        suites.len(),
        suites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>()
    ));
    vm.shutdown()
}
