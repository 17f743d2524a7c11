//! QEMU tests of the optional balloon features and of system sleep, for
//! both drivers with the same QEMU options (`tests/c_driver.rs`,
//! `tests/rust_driver.rs`): deflate on OOM, free page reporting, free page
//! hinting across a live migration, page poisoning, balloon page migration
//! by compaction, freeze/restore. Each test fails if the feature does not
//! do its job, and reports what it measured.

use crate::rig::units::{format_bytes, MIB};
use crate::rig::vm::{rs_counter, Vm, Wait};
use crate::scenarios::realistic::vmstat;
use crate::scenarios::suite::{balloon_to, config, target_for, BALLOON_TIMEOUT};
use crate::{Driver, Tier, VmConfig};
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

mod hinting;
pub use hinting::{free_page_hint_migration, hinting_under_memory_pressure};

/// Virtio feature bit numbers of the balloon device.
pub mod bit {
    /// `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`.
    pub const DEFLATE_ON_OOM: usize = 2;
    /// `VIRTIO_BALLOON_F_FREE_PAGE_HINT`.
    pub const FREE_PAGE_HINT: usize = 3;
    /// `VIRTIO_BALLOON_F_PAGE_POISON`.
    pub const PAGE_POISON: usize = 4;
    /// `VIRTIO_BALLOON_F_REPORTING`.
    pub const REPORTING: usize = 5;
}

/// The balloon device's negotiated feature bits, from sysfs (one `0`/`1`
/// character per bit).
pub fn negotiated_features(vm: &mut Vm) -> Result<Vec<bool>> {
    let f = vm.run_ok(
        "for d in /sys/bus/virtio/devices/*; do \
         if [ \"$(cat $d/device)\" = 0x0005 ]; then cat $d/features; fi; done",
    )?;
    let f = f.trim();
    ensure!(!f.is_empty(), "no balloon device features in sysfs");
    Ok(f.chars().map(|c| c == '1').collect())
}

fn has_bit(features: &[bool], bit: usize) -> bool {
    features.get(bit).copied().unwrap_or(false)
}

/// Guest memory the workloads below dirty with random data, so that it is
/// neither zero nor compressible for the host.
fn fill_random_and_free(vm: &mut Vm, mib: u64) -> Result<()> {
    // `dd` allocates one `bs`-sized buffer, fills it and exits, freeing it.
    vm.run_timeout(
        &format!("dd if=/dev/urandom of=/dev/null bs={mib}M count=1 iflag=fullblock 2>&1"),
        Duration::from_secs(300),
    )
    .and_then(|o| {
        ensure!(o.code == 0, "dd failed: {}", o.output);
        Ok(())
    })
}

// ---- deflate on OOM -----------------------------------------------------------

/// What the OOM tests leave the guest (its `MemAvailable` before the
/// balloon, less the balloon), and the workload that then needs more. The
/// balloon follows from what the guest has (about 900 MiB of 1 GiB on the
/// base tier, 650 MiB on the debug tier, whose KASAN shadow and debug
/// structures take the rest), not from its RAM.
const OOM_LEFT_MIB: u64 = 192;
/// The workload the OOM tests run.
pub const OOM_WORKLOAD_MIB: u64 = 400;

/// The balloon target (guest memory) that leaves the guest
/// `OOM_LEFT_MIB` of what it has available now, in whole MiB.
pub fn oom_target(vm: &mut Vm) -> Result<u64> {
    let avail = vm.meminfo_field("MemAvailable")?;
    let balloon = avail.saturating_sub(OOM_LEFT_MIB * MIB) / MIB * MIB;
    Ok(vm.ram_bytes() - balloon)
}

/// With `deflate-on-oom=on`, a workload needing more memory than the
/// inflated guest has completes without an OOM kill: the driver's OOM
/// notifier gives balloon pages back (QEMU's `actual` grows). With
/// `deflate-on-oom=off` the same workload is OOM-killed.
pub fn deflate_on_oom(driver: Driver, on: bool) -> Result<()> {
    let name = if on {
        "oom-deflate-on"
    } else {
        "oom-deflate-off"
    };
    // No swap: the workload must run the guest out of memory.
    let mut vm = Vm::boot(config(driver, name).deflate_on_oom(on).swap_mib(None))?;
    let ram = vm.ram_bytes();
    let features = negotiated_features(&mut vm)?;
    ensure!(
        has_bit(&features, bit::DEFLATE_ON_OOM) == on,
        "DEFLATE_ON_OOM negotiated = {}, expected {on}",
        has_bit(&features, bit::DEFLATE_ON_OOM)
    );
    let target = oom_target(&mut vm)?;
    let balloon = ram - target;
    balloon_to(&mut vm, target)?;
    let avail = vm.meminfo_field("MemAvailable")?;
    vm.note(&format!(
        "balloon {}: MemAvailable {}; workload needs {} MiB",
        format_bytes(balloon),
        format_bytes(avail),
        OOM_WORKLOAD_MIB
    ));
    ensure!(
        avail < OOM_WORKLOAD_MIB * MIB,
        "the workload would fit anyway: {} available",
        format_bytes(avail)
    );
    let mark = vm.console_mark();
    // Always overcommit, so that the workload's buffer is granted and the
    // OOM path (not malloc) decides when it is touched.
    vm.run_ok("echo 1 > /proc/sys/vm/overcommit_memory")?;
    let out = vm.run_timeout(
        &format!("dd if=/dev/zero of=/dev/null bs={OOM_WORKLOAD_MIB}M count=1 2>&1; echo rc=$?"),
        Duration::from_secs(300),
    )?;
    let killed = vm.console_find(mark, "Killed process");
    let actual = vm.query_balloon_actual()?;
    vm.note(&format!(
        "workload: {:?}; OOM kills: {}; actual now {}",
        out.output.trim().lines().last(),
        killed.len(),
        format_bytes(actual)
    ));
    if driver == Driver::Rust {
        let stats = vm.run_ok("cat /sys/kernel/debug/virtio_balloon_rs-*/stats 2>/dev/null")?;
        let vmstat =
            vm.run_ok("grep -E '^(balloon_|compact_stall|compact_success)' /proc/vmstat")?;
        vm.note(&format!(
            "ours: {}; {}",
            stats.lines().collect::<Vec<_>>().join(", "),
            vmstat.lines().collect::<Vec<_>>().join(", ")
        ));
    }
    if on {
        ensure!(
            out.output.contains("rc=0") && killed.is_empty(),
            "with deflate-on-oom the workload must complete without an OOM kill: {} {killed:?}",
            out.output
        );
        ensure!(
            actual > target,
            "the balloon did not deflate (actual {}, target {})",
            format_bytes(actual),
            format_bytes(target)
        );
        if driver == Driver::Rust {
            oom_notifier_locked_once_never_blocked(&vm.rs_counters()?)?;
        }
    } else {
        ensure!(
            !killed.is_empty() && !out.output.contains("rc=0"),
            "without deflate-on-oom the workload must be OOM-killed: {}",
            out.output
        );
        ensure!(
            actual == target,
            "the balloon moved without deflate-on-oom: actual {}",
            format_bytes(actual)
        );
    }
    balloon_to(&mut vm, ram)?;
    vm.shutdown()
}

/// Ours, from its debugfs counters after OOM notifier calls that deflated:
/// the notifier deflated pages, got the balloon lock at most once per call
/// (`oom_notify_locks`, counted by `Host::lock_within` on the notifier's
/// task), and never took it blocking (`oom_notify_blocking_locks`, counted
/// by `Host::lock` on that task, contended or not). A notifier that took
/// the lock again after its round (to write `actual`, say) fails one or the
/// other at every call that deflates: deterministic, where a race to the
/// lock is not. A blocking take would wait behind a size round holding the
/// lock across a host wait, `oom_lock` held.
fn oom_notifier_locked_once_never_blocked(counters: &BTreeMap<String, u64>) -> Result<()> {
    let calls = rs_counter(counters, "oom_notify_calls")?;
    let pages = rs_counter(counters, "oom_notify_pages")?;
    let locks = rs_counter(counters, "oom_notify_locks")?;
    let blocking = rs_counter(counters, "oom_notify_blocking_locks")?;
    ensure!(
        pages >= 1,
        "the OOM notifier deflated no page: the path the lock checks guard did not run"
    );
    ensure!(
        locks <= calls,
        "the OOM notifier got the balloon lock {locks} times in {calls} calls: more than once \
         in a call"
    );
    ensure!(
        blocking == 0,
        "the OOM notifier's task took the balloon lock blocking {blocking} time(s) \
         ({pages} pages deflated by the notifier in {calls} calls)"
    );
    Ok(())
}

// ---- free page reporting ------------------------------------------------------

/// Memory the reporting test dirties and frees.
const REPORT_MIB: u64 = 512;
/// Part of it QEMU's RSS must give back.
const REPORT_RELEASE_MIN: f64 = 0.6;

/// Dirties [`REPORT_MIB`] of guest memory (`memhog`, which holds it until
/// told to go), takes QEMU's RSS while the memory is still held, frees it,
/// and returns that RSS and the lowest RSS seen within `window`, scaled for
/// the tier (reporting 512 MiB takes the debug tier minutes under TCG).
/// The RSS is taken before the free: measured after it, reporting may
/// already have run, and a release (or, with page poisoning, a release
/// that must not happen) would go unseen.
fn report_and_watch(vm: &mut Vm, window: Duration) -> Result<(u64, u64)> {
    let window = crate::rig::config::scaled(window);
    vm.hold_memhog(&format!("-m {REPORT_MIB}"), Duration::from_secs(300))?;
    let held = vm.qemu_rss_bytes()?;
    vm.release_memhog(Duration::from_secs(300))?;
    let t0 = Instant::now();
    let mut low = held;
    while t0.elapsed() < window {
        std::thread::sleep(Duration::from_millis(500));
        low = low.min(vm.qemu_rss_bytes()?);
        if held.saturating_sub(low) as f64 >= REPORT_MIB as f64 * MIB as f64 * REPORT_RELEASE_MIN {
            break;
        }
    }
    Ok((held, low))
}

/// With `free-page-reporting=on`, memory a guest process dirtied and freed
/// goes back to the host (QEMU's RSS falls by most of it) without any
/// balloon target change.
pub fn free_page_reporting(driver: Driver) -> Result<()> {
    let mut vm = Vm::boot(config(driver, "reporting").free_page_reporting(true))?;
    let features = negotiated_features(&mut vm)?;
    ensure!(
        has_bit(&features, bit::REPORTING),
        "REPORTING not negotiated"
    );
    let block = reporting_block(&mut vm)?;
    if driver == Driver::Rust {
        ensure!(
            block == REPORTING_BLOCK,
            "free page reporting in blocks of {}, not {} (what the host frees whole)",
            format_bytes(block),
            format_bytes(REPORTING_BLOCK)
        );
    }
    let rss0 = vm.qemu_rss_bytes()?;
    let (after, low) = report_and_watch(&mut vm, Duration::from_secs(30))?;
    let released = after.saturating_sub(low);
    let want = (REPORT_MIB * MIB) as f64 * REPORT_RELEASE_MIN;
    vm.note(&format!(
        "RSS {} at boot, {} holding {} MiB of dirtied memory, lowest {} after freeing it (released {})",
        format_bytes(rss0),
        format_bytes(after),
        REPORT_MIB,
        format_bytes(low),
        format_bytes(released)
    ));
    if driver == Driver::C && block > REPORTING_BLOCK && (released as f64) < want {
        // C leaves the order to the page allocator (pageblock_order) except
        // with 64 KiB pages: 32 MiB blocks with 16 KiB pages, which freed
        // memory seldom forms. Recorded, not asserted.
        vm.note(&format!(
            "C falls short here, as known: reporting blocks of {} returned {} of {} MiB",
            format_bytes(block),
            format_bytes(released),
            REPORT_MIB
        ));
    } else {
        ensure!(
            released as f64 >= want,
            "QEMU's RSS fell by only {} after freeing {} MiB (want >= {:.0} %; blocks of {})",
            format_bytes(released),
            REPORT_MIB,
            REPORT_RELEASE_MIN * 100.0,
            format_bytes(block)
        );
    }
    ensure!(
        vm.query_balloon_actual()? == vm.ram_bytes(),
        "the balloon moved"
    );
    vm.shutdown()
}

/// The block size free page reporting must use with any guest page size:
/// what the host can free whole (a 2 MiB huge page).
pub const REPORTING_BLOCK: u64 = 2 * MIB;

/// The size of the blocks the guest's free page reporting reports: the
/// guest page size times 2^`page_reporting_order`, which the first driver
/// registered in this boot fixed.
pub fn reporting_block(vm: &mut Vm) -> Result<u64> {
    let page = vm.guest_page_size()?;
    let order: u32 = vm
        .run_ok("cat /sys/module/page_reporting/parameters/page_reporting_order")?
        .trim()
        .parse()
        .context("page_reporting_order")?;
    let block = page << order;
    vm.note(&format!(
        "free page reporting: order {order} of {} pages, blocks of {}",
        format_bytes(page),
        format_bytes(block)
    ));
    Ok(block)
}

// ---- page poisoning -------------------------------------------------------------

/// Page poisoning in the guest and what the host must see:
///
/// - none: `PAGE_POISON` is declined, reporting works (RSS falls);
/// - `page_poison=1`: `PAGE_POISON` is negotiated with `poison_val`
///   0xaaaaaaaa, so QEMU keeps reported pages (their content must survive)
///   and RSS does not fall;
/// - `init_on_free=1`: `PAGE_POISON` with `poison_val` 0 (zeroed pages),
///   which QEMU may discard: RSS falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poisoning {
    /// No poisoning.
    None,
    /// `page_poison=1`.
    Poison,
    /// `init_on_free=1`.
    InitOnFree,
}

/// See [`Poisoning`].
pub fn page_poison(driver: Driver, mode: Poisoning) -> Result<()> {
    let (name, arg) = match mode {
        Poisoning::None => ("poison-none", None),
        Poisoning::Poison => ("poison-on", Some("page_poison=1")),
        Poisoning::InitOnFree => ("poison-init-on-free", Some("init_on_free=1")),
    };
    let mut cfg = config(driver, name).free_page_reporting(true);
    if let Some(arg) = arg {
        cfg = cfg.cmdline_arg(arg);
    }
    let mut vm = Vm::boot(cfg)?;
    let features = negotiated_features(&mut vm)?;
    let poison = has_bit(&features, bit::PAGE_POISON);
    let reporting = has_bit(&features, bit::REPORTING);
    vm.note(&format!(
        "{mode:?}: PAGE_POISON {poison}, REPORTING {reporting}"
    ));
    ensure!(
        poison == (mode != Poisoning::None),
        "PAGE_POISON negotiated = {poison} with {mode:?}"
    );
    ensure!(reporting, "REPORTING not negotiated with {mode:?}");
    let block = reporting_block(&mut vm)?;
    let (after, low) = report_and_watch(&mut vm, Duration::from_secs(20))?;
    let released = after.saturating_sub(low);
    let share = released as f64 / (REPORT_MIB * MIB) as f64;
    vm.note(&format!(
        "freed {} MiB: RSS {} -> lowest {} ({:.0} % released)",
        REPORT_MIB,
        format_bytes(after),
        format_bytes(low),
        share * 100.0
    ));
    let c_short = driver == Driver::C && block > REPORTING_BLOCK;
    match mode {
        // C's reporting blocks are larger than 2 MiB with 16 KiB pages
        // (see `free_page_reporting`): what it gives back is recorded.
        Poisoning::None | Poisoning::InitOnFree if c_short && share < REPORT_RELEASE_MIN => vm
            .note(&format!(
                "C falls short here, as known: reporting blocks of {}",
                format_bytes(block)
            )),
        Poisoning::Poison => ensure!(
            share < 0.1,
            "QEMU discarded {:.0} % of reported pages although their poison value is not 0: \
             the host did not get poison_val",
            share * 100.0
        ),
        _ => ensure!(
            share >= REPORT_RELEASE_MIN,
            "QEMU released only {:.0} % of the freed memory",
            share * 100.0
        ),
    }
    vm.shutdown()
}

// ---- balloon page migration (compaction) -------------------------------------

/// Ballooned pages stay movable: with them below and between free memory
/// (the guest tool `fragment` holds most memory with a hole every 4th
/// page, the balloon inflates into what is left, then the buffer goes
/// away), compaction can only build large free blocks by migrating
/// ballooned pages (`balloon_migrate` in `/proc/vmstat` rises).
/// A checksummed data set in tmpfs survives; afterwards the balloon
/// deflates completely and MemTotal is back to the page.
pub fn balloon_page_migration(driver: Driver) -> Result<()> {
    const HUGEPAGES_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
    let mut vm = Vm::boot(config(driver, "compaction"))?;
    let ram = vm.ram_bytes();
    let total0 = vm.meminfo_field("MemTotal")?;
    vm.run_ok(
        "dd if=/dev/urandom of=/tmp/data bs=1M count=64 2>/dev/null && md5sum /tmp/data > /tmp/sum",
    )?;
    // Counted from here: kcompactd may do some of the work on its own.
    let before = vmstat(&mut vm, "balloon_migrate")?;
    let mut after = before;
    // Where the page allocator puts things varies from boot to boot: set the
    // scene up to three times.
    for attempt in 1..=3 {
        vm.run_ok(
            "rm -f /tmp/ready /tmp/go; fragment 760 /tmp/ready /tmp/go 4 & \
             while [ ! -e /tmp/ready ]; do sleep 0.2; done",
        )?;
        // The balloon takes the low memory the buffer left and its holes.
        balloon_to(&mut vm, target_for(ram, 20))?;
        // Let the buffer go, and wait until its memory is freed.
        vm.run_ok("touch /tmp/go; while pidof fragment >/dev/null; do sleep 0.2; done")?;
        // Full compaction, then huge page allocations, which compact
        // wherever a ballooned page is in the way.
        vm.run_ok("echo 1 > /proc/sys/vm/compact_memory")?;
        // (2 MiB pages on every page size: the PMD size with 4 KiB pages,
        // contiguous PTEs with 16 and 64 KiB, where the default huge page,
        // 32 or 512 MiB, is a fraction of the guest.)
        vm.run_ok(&format!(
            "echo 200 > {HUGEPAGES_2M}; echo 0 > {HUGEPAGES_2M}"
        ))?;
        after = vmstat(&mut vm, "balloon_migrate")?;
        let counters = vm
            .run_ok("grep -E 'compact_(stall|success)|pgmigrate_success' /proc/vmstat")?
            .replace('\n', ", ");
        vm.note(&format!("attempt {attempt}: vmstat: {counters}"));
        if after > before {
            break;
        }
        balloon_to(&mut vm, ram)?;
    }
    vm.note(&format!(
        "compaction migrated {} balloon pages ({before} -> {after})",
        after - before
    ));
    ensure!(
        after > before,
        "compaction migrated no balloon page (balloon_migrate stayed at {before})"
    );
    let check = vm.run("md5sum -c /tmp/sum")?;
    ensure!(check.code == 0, "data corrupted: {}", check.output);
    balloon_to(&mut vm, ram)?;
    let total = vm.meminfo_field("MemTotal")?;
    ensure!(
        total == total0,
        "MemTotal {} after deflating, {} before",
        total,
        total0
    );
    vm.shutdown()
}

// ---- freeze / restore -------------------------------------------------------------

/// What a [`pm_test_suspend`] run gave.
#[derive(Debug)]
pub struct PmTest {
    /// Exit status of `echo <state> > /sys/power/state`.
    pub rc: i32,
    /// How long that write took, by the guest's clock (`/proc/uptime`).
    pub took: Duration,
}

/// Runs a system sleep test: `echo <level> > /sys/power/pm_test`, then
/// `echo <state> > /sys/power/state`, in the background (with `devices`
/// the agent's own virtio-serial port is frozen and reset too, so no reply
/// must be in flight then); waits up to `timeout` for the kernel's "PM:
/// suspend exit", reconnects the agent (its port was reset) unless the test
/// stops before the devices (`freezer`, `core` is not), and returns the
/// write's exit status and duration.
pub fn pm_test_suspend(vm: &mut Vm, level: &str, state: &str, timeout: Duration) -> Result<PmTest> {
    let mark = vm.console_mark();
    vm.run_ok(&format!(
        "rm -f /tmp/pm.rc; (sleep 1; echo {level} > /sys/power/pm_test && \
         t0=$(cut -d' ' -f1 /proc/uptime) && echo {state} > /sys/power/state; rc=$?; \
         t1=$(cut -d' ' -f1 /proc/uptime); echo \"$rc $t0 $t1\" > /tmp/pm.rc; \
         echo none > /sys/power/pm_test) >/dev/null 2>&1 &"
    ))?;
    vm.wait_console(mark, "PM: suspend exit", timeout)
        .with_context(|| format!("the suspend test ({level}, {state}) did not finish"))?;
    if level != "freezer" {
        vm.reconnect_agent()?;
    }
    let out = vm.run_ok("sleep 1; cat /tmp/pm.rc")?;
    let f: Vec<&str> = out.split_whitespace().collect();
    let parse = || -> Option<PmTest> {
        let rc = f.first()?.parse().ok()?;
        let t0: f64 = f.get(1)?.parse().ok()?;
        let t1: f64 = f.get(2)?.parse().ok()?;
        Some(PmTest {
            rc,
            took: Duration::from_secs_f64((t1 - t0).max(0.0)),
        })
    };
    parse().with_context(|| format!("unexpected suspend test result {out:?}"))
}

/// System sleep with the balloon inflated: `pm_test=devices` runs the
/// devices' freeze and restore callbacks (suspend-to-idle without sleeping).
/// The driver empties the balloon on freeze (QEMU sees `actual` back at
/// RAM), inflates again after restore, and keeps following targets.
pub fn freeze_restore(driver: Driver) -> Result<()> {
    let mut vm = Vm::boot(config(driver, "freeze-restore"))?;
    let ram = vm.ram_bytes();
    let total0 = vm.meminfo_field("MemTotal")?;
    let target = target_for(ram, 25);
    balloon_to(&mut vm, target)?;
    vm.qmp().drain_events();
    let pm = pm_test_suspend(&mut vm, "devices", "freeze", Duration::from_secs(60))?;
    ensure!(
        pm.rc == 0,
        "echo freeze > /sys/power/state failed: exit {}",
        pm.rc
    );
    // The balloon emptied while frozen and filled again after restore.
    vm.wait_balloon_actual(target, BALLOON_TIMEOUT)
        .context("the balloon did not return to its target after restore")?;
    let events = vm.qmp().drain_events();
    let emptied = events.iter().any(|e| e.balloon_actual() == Some(ram));
    vm.note(&format!(
        "after freeze/restore: {} BALLOON_CHANGE events, emptied while frozen: {emptied}",
        events
            .iter()
            .filter(|e| e.balloon_actual().is_some())
            .count()
    ));
    ensure!(
        emptied,
        "no BALLOON_CHANGE back to the full RAM during freeze: the driver did not empty \
         the balloon"
    );
    balloon_to(&mut vm, target_for(ram, 40))?;
    balloon_to(&mut vm, ram)?;
    let total = vm.meminfo_field("MemTotal")?;
    ensure!(
        total == total0,
        "MemTotal {total} after deflating, {total0} at boot"
    );
    vm.shutdown()
}
