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

use crate::realistic::vmstat;
use crate::units::{format_bytes, MIB};
use crate::vm::{rs_counter, Vm, Wait};
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
        .memory_mib(crate::suite::GUEST_MIB)
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
/// ring: the driver keeps fewer deflate buffers in flight, waits for a
/// completion when the ring is full, and tells the host about every page
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

// ---- a free page report the host keeps --------------------------------------

/// Feature bits of the fake device for a held report: `MUST_TELL_HOST |
/// DEFLATE_ON_OOM | REPORTING` (bit 5).
pub const FEATURES_REPORTING: u32 = 0x5 | 1 << 5;

/// How long a system sleep test (`pm_test=freezer`: freeze the tasks, wait
/// `pm_test_delay`, 5 s, thaw) may take with a report held. The freezer
/// gives up after 20 s (`freeze_timeout_msecs`) when a task or a freezable
/// work item does not freeze.
pub const FREEZER_TEST_LIMIT: Duration = Duration::from_secs(12);

/// Boots a guest whose fake device keeps free page reports (mode
/// `keep-reports`, `REPORTING` offered; the first `keep` reports, or all
/// with 0), loads `driver`, and asks at once for a balloon of 64 MiB, so
/// that ours inflates whole 2 MiB blocks and reports them (a block report)
/// before the page allocator's own first report (2 s after the driver
/// registered); returns once the device holds a report.
///
/// The C driver makes no block reports: what it holds is the page
/// allocator's report.
fn boot_with_report_held(driver: Driver, test: &str, keep: u32) -> Result<Vm> {
    let mut vm = Vm::boot(config(&format!("{}-fake-{test}", driver.load_param())).subject(driver))?;
    load_driver(&mut vm, driver)?;
    vm.run_ok(&format!(
        "insmod /lib/modules/$(uname -r)/extra/virtio_balloon_fake.ko \
         features={FEATURES_REPORTING} keep_reports={keep} && \
         echo keep-reports > {FAKE}/mode && echo {} > {FAKE}/target",
        64 * MIB / 4096
    ))?;
    vm.wait_until(
        "the fake device to hold a free page report",
        Duration::from_secs(30),
        Duration::from_millis(200),
        |vm| {
            let s = fake_stats(vm)?;
            let held = stat_u64(&s, "reports_held")?;
            Ok(Wait::when(held >= 1, s))
        },
    )?;
    // Let the other reporter (the page allocator's report, or ours) run into
    // the held one too.
    std::thread::sleep(Duration::from_secs(3));
    let s = fake_stats(&mut vm)?;
    vm.note(&format!("{driver}: report held; fake device stats {s:?}"));
    if driver == Driver::Rust {
        let c = fake_rs_counters(&mut vm)?;
        vm.note(&format!(
            "ours: inflate_blocks {:?}, reported_blocks {:?}, inflate_pages {:?}",
            c.get("inflate_blocks"),
            c.get("reported_blocks"),
            c.get("inflate_pages")
        ));
    }
    Ok(vm)
}

/// Our driver's log lines since `mark` about a report or a buffer the
/// device did not return.
fn report_lines(vm: &Vm, mark: usize) -> Vec<String> {
    vm.console_since(mark)
        .into_iter()
        .filter(|l| {
            l.contains("virtio_balloon_rs")
                && (l.to_lowercase().contains("report") || l.contains("did not return"))
        })
        .collect()
}

/// `rmmod` while the host keeps a free page report (a block report of
/// ours, and the page allocator's report): ours must finish within
/// [`RMMOD_LIMIT`] and log why the report is abandoned; C's outcome is
/// recorded (it waits for its report with `wait_event()`, and unregistering
/// free page reporting waits for that).
pub fn rmmod_with_report_held(driver: Driver) -> Result<()> {
    let mut vm = boot_with_report_held(driver, "rmmod-report-held", 0)?;
    if driver == Driver::Rust {
        // The device keeps the first report, which is our block report (the
        // size work reports at once; the page allocator's report waits 2 s,
        // then finds the queue busy): after the host timeout it is ours.
        let kept = rs_counter(&fake_rs_counters(&mut vm)?, "kept_reports")?;
        ensure!(
            kept >= 1,
            "the report the device holds is not a block report of ours (kept_reports {kept})"
        );
    }
    let t0 = Instant::now();
    let rm = vm.run_timeout(&format!("rmmod {}", driver.module_name()), RMMOD_LIMIT * 2);
    let rm_time = t0.elapsed();
    match (&rm, driver) {
        (Ok(out), _) => vm.note(&format!(
            "{driver}: rmmod with a report held took {rm_time:.2?} (exit {}): {}",
            out.code,
            out.output.trim()
        )),
        (Err(e), Driver::C) => {
            vm.note(&format!(
                "virtio_balloon: rmmod with a report held did not finish in {:?}: {e:#}",
                RMMOD_LIMIT * 2
            ));
            return vm.abandon();
        }
        (Err(e), Driver::Rust) => bail!(
            "rmmod with a free page report held did not finish in {:?}: {e:#}",
            RMMOD_LIMIT * 2
        ),
    }
    if driver == Driver::Rust {
        let out = rm.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
        ensure!(
            out.code == 0,
            "rmmod failed (exit {}): {}",
            out.code,
            out.output
        );
        ensure!(
            rm_time < RMMOD_LIMIT,
            "rmmod with a report held took {rm_time:.2?} (limit {RMMOD_LIMIT:?})"
        );
        // Why the report is given up: said when the device kept it (before
        // rmmod), or at rmmod.
        let lines = report_lines(&vm, 0);
        ensure!(
            !lines.is_empty(),
            "rmmod with a report held finished in {rm_time:.2?} but ours logged nothing about the \
             report it gave up on"
        );
        vm.note(&format!("ours: {}", lines.join(" | ")));
    }
    let s = fake_stats(&mut vm)?;
    vm.note(&format!("{driver}: after rmmod, fake device stats {s:?}"));
    if driver == Driver::Rust {
        // The report held was a block report of ours, which the driver owns
        // by then: nothing to wait for, so the device is not reset before
        // the balloon is deflated, telling the host of every page.
        let (inflated, deflated) = (
            stat_u64(&s, "inflated_pfns")?,
            stat_u64(&s, "deflated_pfns")?,
        );
        ensure!(
            deflated == inflated,
            "rmmod with our block report held told the device of {deflated} of the {inflated} \
             PFNs it had inflated: the rest were kept, never freed"
        );
    }
    vm.shutdown()
}

/// A system sleep test (`pm_test=freezer`, `freeze`) while the host keeps a
/// free page report (the first one only: ours' block report; C's is the
/// page allocator's): ours must let the guest freeze (the write to
/// `/sys/power/state` returns 0 within [`FREEZER_TEST_LIMIT`]); C's outcome
/// is recorded. Then the device returns the report and the balloon
/// reaches its target.
///
/// Only the first report is held: the page allocator's reporting work runs
/// on the freezable system workqueue (`page_reporting_process`), and a
/// report of its that the host keeps blocks the freezer whatever the
/// driver does (it cannot give those pages back to the allocator while the
/// host may still discard them; C fails the same way). Ours must not make
/// the page allocator's later reports, or its own size work, wait behind
/// its held block report.
pub fn suspend_with_report_held(driver: Driver) -> Result<()> {
    let mut vm = boot_with_report_held(driver, "suspend-report-held", 1)?;
    let mark = vm.console_mark();
    let pm =
        crate::features::pm_test_suspend(&mut vm, "freezer", "freeze", Duration::from_secs(60));
    let freezer_lines = vm
        .console_since(mark)
        .into_iter()
        .filter(|l| {
            l.contains("Freezing")
                || l.contains("freezable")
                || l.contains("in-flight:")
                || l.contains("refusing to freeze")
        })
        .collect::<Vec<_>>();
    match (&pm, driver) {
        (Ok(pm), _) => vm.note(&format!(
            "{driver}: suspend test (freezer) with a report held: exit {} in {:.2?}{}",
            pm.rc,
            pm.took,
            if freezer_lines.is_empty() {
                String::new()
            } else {
                format!("; {}", freezer_lines.join(" | "))
            }
        )),
        (Err(e), Driver::C) => {
            vm.note(&format!(
                "virtio_balloon: the suspend test with a report held did not finish: {e:#}"
            ));
            return vm.abandon();
        }
        (Err(e), Driver::Rust) => {
            bail!("the suspend test with a report held did not finish: {e:#}")
        }
    }
    if driver == Driver::Rust {
        let pm = pm.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
        ensure!(
            pm.rc == 0 && pm.took < FREEZER_TEST_LIMIT,
            "with a free page report held the guest did not freeze: echo freeze > \
             /sys/power/state exited {} after {:.2?} (limit {FREEZER_TEST_LIMIT:?}){}",
            pm.rc,
            pm.took,
            if freezer_lines.is_empty() {
                String::new()
            } else {
                format!(":\n{}", freezer_lines.join("\n"))
            }
        );
    }
    // The host answers again: the balloon reaches its target.
    vm.run_ok(&format!(
        "echo normal > {FAKE}/mode && echo 1 > {FAKE}/release"
    ))?;
    let reached = wait_fake_actual(&mut vm, 64 * MIB / 4096, Duration::from_secs(60));
    match (reached, driver) {
        (Ok(()), _) => vm.note(&format!("{driver}: reached the target after the release")),
        (Err(e), Driver::C) => vm.note(&format!(
            "virtio_balloon: did not reach the target after the release: {e:#}"
        )),
        (Err(e), Driver::Rust) => {
            return Err(e.context("ours did not reach the target once the reports came back"))
        }
    }
    let s = fake_stats(&mut vm)?;
    vm.note(&format!("{driver}: fake device stats {s:?}"));
    vm.shutdown()
}

// ---- a buffer the queue refuses ------------------------------------------------

/// A device that is broken before the driver sends anything (`break`):
/// every buffer the driver adds is refused (`EIO`) before the device sees
/// it. Ours must not count the pages of a refused buffer as ballooned:
/// `actual` stays 0 (the device saw no PFN), and `rmmod` has no ballooned
/// page to keep (before the fix it counted 256, wrote them to `actual`, and
/// leaked them at `rmmod` as "never freed"). C is recorded: it warns at
/// each refused add and counts the pages all the same (measured: `actual`
/// 4096 for a 16 MiB target, the device having seen no PFN).
pub fn refused_inflate_buffer(driver: Driver) -> Result<()> {
    // C warns when the add fails (`tell_host()`): recorded, not failed on.
    let mut vm = Vm::boot(
        config(&format!("{}-fake-refused", driver.load_param()))
            .subject(driver)
            .c_problems_expected(),
    )?;
    load_driver(&mut vm, driver)?;
    load_fake(&mut vm, "normal", 0x5)?;
    vm.run_ok(&format!("echo 1 > {FAKE}/break"))?;
    let mark = vm.console_mark();
    fake_target(&mut vm, 16 * MIB / 4096)?;
    let refused = logged(
        &mut vm,
        mark,
        "refused PFNs",
        Duration::from_millis(HOST_TIMEOUT_MS) * 5,
    );
    // Whatever the driver does next, it has had time to write `actual`.
    std::thread::sleep(Duration::from_secs(2));
    let s = fake_stats(&mut vm)?;
    vm.note(&format!(
        "{driver}: after the refusal, fake device stats {s:?}"
    ));
    if driver == Driver::C {
        vm.note(&format!(
            "virtio_balloon: {}; actual {:?} with {:?} PFNs seen by the device",
            match &refused {
                Ok(line) => line.clone(),
                Err(_) => "no log line about the refused buffer".into(),
            },
            s.get("actual"),
            s.get("inflated_pfns")
        ));
        return vm.shutdown();
    }
    let line = refused.context("ours did not log the refused inflate buffer")?;
    vm.note(&format!("ours: {line}"));
    let (actual, seen) = (stat_u64(&s, "actual")?, stat_u64(&s, "inflated_pfns")?);
    ensure!(
        actual == seen,
        "ours wrote actual = {actual} balloon pages, but the device saw {seen} PFNs: pages of a \
         refused buffer were counted"
    );
    let mark = vm.console_mark();
    vm.run_timeout(&format!("rmmod {}", driver.module_name()), RMMOD_LIMIT)?;
    let leaked: Vec<String> = vm
        .console_since(mark)
        .into_iter()
        .filter(|l| l.contains("never freed") || l.contains("leaked"))
        .collect();
    ensure!(
        leaked.is_empty(),
        "rmmod kept pages the device never saw: {}",
        leaked.join(" | ")
    );
    vm.shutdown()
}

// ---- the OOM notifier against a slow host ------------------------------------

/// How late the fake host returns each inflate and deflate buffer: below
/// the notifier's patience for the host (1 s, past which ours marks the
/// device unresponsive), and long enough that a deflate round of ours (64
/// buffers, 32 in flight: two waits) holds the balloon lock about 1 s, so
/// that a notifier waiting for a whole round would exceed
/// [`OOM_NOTIFY_LIMIT`].
pub const LATE_MS: u64 = 500;
/// Our driver's host timeout in the slow-host scenario: far above
/// [`LATE_MS`], so that the device is never marked unresponsive.
pub const LATE_HOST_TIMEOUT_MS: u64 = 10_000;
/// The longest an OOM notifier call of ours may take: the balloon lock
/// (100 ms, `LOCK_PATIENCE` in `src/balloon/oom.rs`) plus the host (1 s,
/// `HOST_PATIENCE`) plus 200 ms of scheduling slack.
pub const OOM_NOTIFY_LIMIT: Duration = Duration::from_millis(100 + 1000 + 200);
/// How long the out-of-memory workload may run.
const OOM_WORKLOAD_LIMIT: Duration = Duration::from_secs(120);

/// The OOM notifier while a size round waits for a slow host: the fake
/// device (`DEFLATE_ON_OOM`) holds 60 % of RAM in the balloon, then returns
/// every buffer [`LATE_MS`] late; the host asks for the balloon back
/// (target 0), so the size work deflates round after round, holding the
/// balloon lock while it waits, and meanwhile a workload needing more than
/// the guest's memory makes the OOM notifier run again and again. Ours:
/// the workload ends (OOM-killed once the balloon is empty), and the
/// longest notifier call (`oom_notify_max_ns` in debugfs) stays within
/// [`OOM_NOTIFY_LIMIT`]. C: the workload's duration and OOM kills are
/// recorded.
pub fn oom_with_late_host(driver: Driver) -> Result<()> {
    let mut vm =
        Vm::boot(config(&format!("{}-fake-oom-late-host", driver.load_param())).subject(driver))?;
    load_driver_timeout(&mut vm, driver, LATE_HOST_TIMEOUT_MS)?;
    load_fake(&mut vm, "normal", 0x5)?;
    let big = vm.ram_bytes() / 4096 * 60 / 100;
    fake_target(&mut vm, big)?;
    wait_fake_actual(&mut vm, big, Duration::from_secs(120))?;
    let avail = vm.meminfo_field("MemAvailable")?;
    vm.note(&format!(
        "{driver}: balloon {} on the fake device, MemAvailable {}",
        format_bytes(big * 4096),
        format_bytes(avail)
    ));
    vm.run_ok(&format!(
        "echo {LATE_MS} > {FAKE}/delay_ms && echo late > {FAKE}/mode && \
         echo 1 > /proc/sys/vm/overcommit_memory"
    ))?;
    let kills = vmstat(&mut vm, "oom_kill")?;
    // More than the guest has even with the balloon empty: the notifier
    // runs until the balloon is empty, then the workload is OOM-killed.
    let hog_mib = vm.ram_bytes() / MIB + 200;
    fake_target(&mut vm, 0)?;
    let t0 = Instant::now();
    let oom = vm.run_timeout(
        &format!("memhog -m {hog_mib} > /dev/null 2>&1; echo rc=$?"),
        OOM_WORKLOAD_LIMIT,
    );
    let oom_time = t0.elapsed();
    match (&oom, driver) {
        (Ok(out), _) => vm.note(&format!(
            "{driver}: a {hog_mib} MiB workload against a host {LATE_MS} ms late ended in \
             {oom_time:.2?}: {}",
            out.output.trim()
        )),
        (Err(e), Driver::C) => {
            vm.note(&format!(
                "virtio_balloon: a {hog_mib} MiB workload against a host {LATE_MS} ms late did \
                 not end in {OOM_WORKLOAD_LIMIT:?}: {e:#}"
            ));
            return vm.abandon();
        }
        (Err(e), Driver::Rust) => bail!(
            "a {hog_mib} MiB workload against a host {LATE_MS} ms late did not end in \
             {OOM_WORKLOAD_LIMIT:?}: {e:#}"
        ),
    }
    let killed = vmstat(&mut vm, "oom_kill")? - kills;
    let s = fake_stats(&mut vm)?;
    vm.note(&format!(
        "{driver}: {killed} OOM kill(s) in {oom_time:.2?}; fake device stats {s:?}"
    ));
    if driver == Driver::Rust {
        let c = fake_rs_counters(&mut vm)?;
        let field = |name: &str| {
            rs_counter(&c, name).context(
                "ours has no OOM notifier timing in its debugfs stats (the counters \
                 oom_notify_calls and oom_notify_max_ns, src/balloon/perf.rs)",
            )
        };
        let calls = field("oom_notify_calls")?;
        let max = Duration::from_nanos(field("oom_notify_max_ns")?);
        vm.note(&format!(
            "ours: {calls} OOM notifier calls, the longest {max:.2?} (limit {OOM_NOTIFY_LIMIT:?})"
        ));
        ensure!(
            calls >= 1,
            "the OOM notifier never ran: the scenario did not happen ({killed} OOM kills)"
        );
        ensure!(
            max <= OOM_NOTIFY_LIMIT,
            "an OOM notifier call took {max:.2?} with a host {LATE_MS} ms late (limit \
             {OOM_NOTIFY_LIMIT:?}): the guest's allocations waited for it"
        );
        ensure!(killed >= 1, "the workload was not OOM-killed");
    }
    vm.shutdown()
}
