//! Fault injection (debug tier only): allocation failures aimed at the
//! driver, in each context it allocates in, with the kernel's fault
//! injection framework (`failslab` for slab objects, `fail_page_alloc` for
//! pages; Documentation/fault-injection/fault-injection.rst).
//!
//! Aim: both attributes get a stack-trace filter, `require-start` /
//! `require-end` = the driver module's text, so only allocations with the
//! driver on the call stack fail, in whatever task they run (the size work
//! and hinting run in kworkers, the OOM notifier in the allocating task).
//! Two modes:
//!
//! - **systematic** (probe and remove, which run in the task that writes
//!   `bind` / `unbind`): `/proc/self/fail-nth` = n fails exactly the n-th
//!   aimed allocation of that task; n counts up from 1 until a bind or
//!   unbind passes without reaching its n-th allocation, so every
//!   allocation site on the path fails once.
//! - **random** (the size work, statistics, the OOM notifier, hinting):
//!   `probability` percent of the aimed allocations fail for a while; the
//!   attribute's `times` counts how many did.
//!
//! After the faults stop, the driver must recover (follow the next target),
//! and after `rmmod`: no kernel problem on the console, no kmemleak report,
//! MemTotal back to its value before the driver loaded and QEMU's `actual`
//! back to the whole RAM.
//!
//! The C driver goes through the same scenarios; what happens to it is
//! recorded (stderr, the test log), not asserted.

use crate::rig::config::Tier;
use crate::rig::units::format_bytes;
use crate::rig::vm::{rs_counter, Vm};
use crate::scenarios::suite::{target_for, GUEST_MIB};
use crate::{Driver, VmConfig};
use anyhow::{bail, ensure, Context as _, Result};
use std::time::Duration;

mod inject;

use inject::{
    inject_hinting, inject_oom, inject_probe, inject_remove, inject_size_work, inject_stats,
    recovers,
};

/// The fault injection attributes the tests aim.
const ATTRS: [&str; 2] = ["failslab", "fail_page_alloc"];
/// kmemleak's control file.
const KMEMLEAK: &str = "/sys/kernel/debug/kmemleak";
/// Upper bound on the systematic mode's n: more aimed allocations than this
/// on one probe or remove is itself a finding.
const MAX_NTH: u32 = 400;
/// `times` for the random mode: large enough never to run out, so that the
/// number left says how many faults were injected.
const TIMES: u64 = 1_000_000;

/// Where the faults are aimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// `probe` (binding the driver to the device), systematic.
    Probe,
    /// `remove` (unbinding it) with pages in the balloon, systematic.
    Remove,
    /// The size work: inflating and deflating, random.
    SizeWork,
    /// Statistics requests every second, random.
    Stats,
    /// The OOM notifier deflating under memory pressure, random.
    Oom,
    /// Free page hinting during a live migration, random.
    Hinting,
}

impl Context {
    fn name(self) -> &'static str {
        match self {
            Context::Probe => "probe",
            Context::Remove => "remove",
            Context::SizeWork => "size-work",
            Context::Stats => "stats",
            Context::Oom => "oom",
            Context::Hinting => "hinting",
        }
    }
}

/// The VM for a scenario: no driver at boot (the test loads it after
/// clearing kmemleak), and what the context needs.
fn vm_config(driver: Driver, ctx: Context) -> VmConfig {
    let cfg = VmConfig::new(&format!("faults-{}-{}", ctx.name(), driver.load_param()))
        .memory_mib(GUEST_MIB)
        .driver_opt(None)
        .subject(driver);
    match ctx {
        Context::Oom => cfg.deflate_on_oom(true).swap_mib(None),
        // No disks: the migration stream is the guest's RAM only.
        Context::Hinting => cfg
            .free_page_hint(true)
            .data_disk_mib(None)
            .swap_mib(None)
            .numa_nodes(1),
        _ => cfg,
    }
}

/// Fails unless the guest kernel has what these tests use.
pub fn require_debug_kernel(vm: &mut Vm) -> Result<()> {
    let probe = format!(
        "for f in {} {KMEMLEAK} /proc/self/fail-nth; do [ -e $f ] || echo missing $f; done",
        ATTRS
            .map(|a| format!("/sys/kernel/debug/{a}/require-start"))
            .join(" ")
    );
    let missing = vm.run_ok(&probe)?;
    if !missing.trim().is_empty() {
        bail!(
            "this test needs the debug tier's kernel (fault injection with a stack-trace filter, \
             kmemleak): {}; run it with `make test-debug` (TIER=debug)",
            missing.trim().replace('\n', ", ")
        );
    }
    Ok(())
}

/// The address range of `module`'s text, from `/proc/kallsyms`: the first
/// text symbol to the last one plus 64 KiB (the size of the last function
/// is not listed; a module's text is one allocation).
pub fn module_text(vm: &mut Vm, module: &str) -> Result<(u64, u64)> {
    let out = vm.run_ok(&format!(
        "awk '$4 == \"[{module}]\" && ($2 == \"t\" || $2 == \"T\") {{ print $1 }}' /proc/kallsyms"
    ))?;
    let addrs: Vec<u64> = out
        .lines()
        .filter_map(|l| u64::from_str_radix(l.trim(), 16).ok())
        .collect();
    let (Some(&lo), Some(&hi)) = (addrs.iter().min(), addrs.iter().max()) else {
        bail!("no text symbols of {module} in /proc/kallsyms (is it loaded?)");
    };
    ensure!(lo != 0, "/proc/kallsyms hides addresses (kptr_restrict)");
    Ok((lo, hi + 0x10000))
}

/// Sets both attributes up: aimed at `text`, failing `probability` percent
/// of the aimed allocations (0: only through `fail-nth`), verbose (one
/// "FAULT_INJECTION: forcing a failure" line per fault, rate limited).
fn arm(vm: &mut Vm, text: (u64, u64), probability: u32) -> Result<()> {
    let mut script = String::from("set -e; ");
    for a in ATTRS {
        let d = format!("/sys/kernel/debug/{a}");
        script += &format!(
            "echo 0 > {d}/probability; echo 1 > {d}/interval; echo {TIMES} > {d}/times; \
             echo 0 > {d}/space; echo 1 > {d}/verbose; echo N > {d}/task-filter; \
             echo N > {d}/ignore-gfp-wait; echo 32 > {d}/stacktrace-depth; \
             echo 0 > {d}/reject-start; echo 0 > {d}/reject-end; \
             echo {:#x} > {d}/require-start; echo {:#x} > {d}/require-end; ",
            text.0, text.1
        );
    }
    script += "echo N > /sys/kernel/debug/fail_page_alloc/ignore-gfp-highmem; \
               echo 0 > /sys/kernel/debug/fail_page_alloc/min-order; ";
    for a in ATTRS {
        script += &format!("echo {probability} > /sys/kernel/debug/{a}/probability; ");
    }
    vm.run_ok(&script).context("arming fault injection")?;
    Ok(())
}

/// Stops injecting; returns how many faults the random mode injected.
fn disarm(vm: &mut Vm) -> Result<u64> {
    let mut injected = 0;
    for a in ATTRS {
        let d = format!("/sys/kernel/debug/{a}");
        let left = vm.run_ok(&format!("echo 0 > {d}/probability; cat {d}/times"))?;
        let left: u64 = left
            .trim()
            .parse()
            .with_context(|| format!("{d}/times: {left:?}"))?;
        injected += TIMES.saturating_sub(left);
    }
    Ok(injected)
}

/// Forgets what kmemleak knows so far: later reports are about objects
/// allocated from here on.
fn kmemleak_clear(vm: &mut Vm) -> Result<()> {
    vm.run_timeout(
        &format!("echo scan > {KMEMLEAK} && echo clear > {KMEMLEAK}"),
        Duration::from_secs(300),
    )?;
    Ok(())
}

/// Scans for leaks (objects unreferenced for 5 s at least, kmemleak's
/// minimum age) and returns the reports.
fn kmemleak_report(vm: &mut Vm) -> Result<String> {
    let out = vm.run_timeout(
        &format!("sleep 6; echo scan > {KMEMLEAK} && cat {KMEMLEAK}"),
        Duration::from_secs(300),
    )?;
    ensure!(out.code == 0, "kmemleak scan failed: {}", out.output);
    Ok(out.output)
}

/// The balloon device's name on the virtio bus (`virtioN`).
fn balloon_device(vm: &mut Vm) -> Result<String> {
    let out = vm.run_ok(
        "for d in /sys/bus/virtio/devices/*; do [ \"$(cat $d/device)\" = 0x0005 ] && \
         basename $d; done; true",
    )?;
    let name = out.trim();
    ensure!(
        !name.is_empty() && !name.contains('\n'),
        "expected one balloon device, found {name:?}"
    );
    Ok(name.to_string())
}

/// Whether `driver` is bound to `dev`.
fn bound(vm: &mut Vm, driver: Driver, dev: &str) -> Result<bool> {
    let out = vm.run(&format!(
        "[ -e /sys/bus/virtio/drivers/{}/{dev} ]",
        driver.module_name()
    ))?;
    Ok(out.code == 0)
}

/// The driver's directory on the virtio bus.
fn driver_dir(driver: Driver) -> String {
    format!("/sys/bus/virtio/drivers/{}", driver.module_name())
}

/// A guest shell function `fault N CMD`: runs CMD (a builtin, so in the
/// same task) with the N-th aimed allocation of that task failing, and
/// prints "rc=<exit of CMD> fired=<1 if the fault was injected>".
/// fail-nth reads back 0 once the fault fired.
const FAULT_FN: &str = "fault() { sh -c 'echo $1 > /proc/self/fail-nth; eval \"$2\" 2>/dev/null; \
    rc=$?; read left < /proc/self/fail-nth; echo 0 > /proc/self/fail-nth; \
    [ \"$left\" = 0 ] && f=1 || f=0; echo rc=$rc fired=$f' _ \"$1\" \"$2\"; }";

/// The systematic probe loop, in the guest: bind with the n-th aimed
/// allocation failing, n = 1, 2, ... until a bind reaches no n-th
/// allocation; unbind again whenever a bind succeeded. One line per n.
fn probe_loop(driver: Driver, dev: &str) -> String {
    let drv = driver_dir(driver);
    format!(
        "{FAULT_FN}; n=1; while [ $n -le {MAX_NTH} ]; do \
           r=$(fault $n 'echo {dev} > {drv}/bind'); \
           b=0; [ -e {drv}/{dev} ] && b=1; echo \"n=$n $r bound=$b\"; \
           case $r in *fired=0*) break;; esac; \
           [ $b = 1 ] && echo {dev} > {drv}/unbind; n=$((n+1)); done"
    )
}

/// The systematic remove loop, in the guest: with the balloon inflated to
/// `balloon_kib`, unbind with the n-th aimed allocation failing, then
/// check that every page came back (`MemTotal` = `total0`, no `Balloon`),
/// bind again and wait for the balloon; until an unbind reaches no n-th
/// allocation.
fn remove_loop(driver: Driver, dev: &str, total0: u64, balloon_kib: u64) -> String {
    let drv = driver_dir(driver);
    let total0_kib = total0 >> 10;
    // Balloon: in /proc/meminfo (NR_BALLOON_PAGES) counts both drivers' pages.
    // It is a vmstat counter: each CPU keeps a delta of up to its threshold
    // (dozens of pages) that /proc/meminfo does not add, so pages inflated
    // on one CPU and deflated on another read as a few dozen kB left over
    // until vmstat folds the deltas (seen on the debug tier: 12 and 36 kB).
    // `stat_refresh` folds them first; the unfolded value is printed beside.
    let want = balloon_kib * 9 / 10;
    format!(
        "{FAULT_FN}; mi() {{ awk -v k=$1: '$1 == k {{ print $2 }}' /proc/meminfo; }}; n=1; \
         while [ $n -le {MAX_NTH} ]; do \
           i=0; while [ $(mi Balloon) -lt {want} ] && [ $i -lt 600 ]; do sleep 0.2; i=$((i+1)); done; \
           before=$(mi Balloon); r=$(fault $n 'echo {dev} > {drv}/unbind'); \
           b=0; [ -e {drv}/{dev} ] && b=1; \
           raw=$(mi Balloon); rf=ok; echo 1 2>/dev/null > /proc/sys/vm/stat_refresh || rf=failed; \
           neg=$(dmesg | grep -c 'vmstat_refresh: nr_balloon_pages'); \
           echo \"n=$n $r bound=$b ballooned_before=$before total=$(mi MemTotal) refresh=$rf negative=$neg unfolded=$raw balloon=$(mi Balloon)\"; \
           case $r in *fired=0*) break;; esac; \
           [ $b = 1 ] || echo {dev} > {drv}/bind; n=$((n+1)); done; \
         [ $(mi MemTotal) = {total0_kib} ] || echo \"MemTotal $(mi MemTotal) kB, {total0_kib} kB before\""
    )
}

/// Runs a systematic loop; returns its lines.
fn systematic(vm: &mut Vm, script: &str) -> Result<Vec<String>> {
    let out = vm.run_timeout(script, Duration::from_secs(1800))?;
    vm.log(&out.output);
    ensure!(out.code == 0, "the systematic loop failed: {}", out.output);
    Ok(out.output.lines().map(str::to_string).collect())
}

/// Outcome of one scenario.
#[derive(Debug, Default)]
struct Outcome {
    /// Faults injected.
    injected: u64,
    /// Bind/unbind writes that failed.
    failed_writes: u32,
    /// Allocation sites the systematic mode went through.
    sites: u32,
}

impl Outcome {
    /// Reads the lines of a systematic loop: each fault fired, the last
    /// line is a clean bind/unbind that succeeded, nothing was lost. A path
    /// that makes no aimed allocation at all (n=1 fires nothing) is fine
    /// here; the caller proves the aim separately.
    fn tally(&mut self, lines: &[String]) -> Result<()> {
        let field = |l: &str, k: &str| -> Option<u64> {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
        };
        let mut last = None;
        for l in lines {
            if l.starts_with("MemTotal") {
                bail!("after the loop: {l}: balloon pages were not given back");
            }
            let (Some(n), Some(rc), Some(fired)) =
                (field(l, "n"), field(l, "rc"), field(l, "fired"))
            else {
                continue;
            };
            ensure!(
                !l.contains("refresh=failed"),
                "vm/stat_refresh could not fold the balloon count: {l}"
            );
            // A counter below zero reads as 0 in /proc/meminfo; the fold logs it.
            ensure!(
                field(l, "negative").unwrap_or(0) == 0,
                "the kernel's balloon page count went below zero (vmstat_refresh logged it): {l}"
            );
            if let (Some(total), Some(balloon)) = (field(l, "total"), field(l, "balloon")) {
                ensure!(
                    balloon == 0,
                    "after an unbind whose aimed allocation {n} failed, {balloon} kB stayed \
                     ballooned (MemTotal {total} kB): {l}"
                );
            }
            if fired == 1 {
                self.injected += 1;
                if rc != 0 {
                    self.failed_writes += 1;
                }
            }
            last = Some((n, rc, fired));
        }
        let Some((n, rc, fired)) = last else {
            bail!("the systematic loop printed nothing: {lines:?}");
        };
        ensure!(
            fired == 0,
            "more than {MAX_NTH} aimed allocations on one path (last line n={n})"
        );
        ensure!(rc == 0, "without a fault, the write failed (exit {rc})");
        self.sites = (n - 1) as u32;
        Ok(())
    }
}

/// How long every allocation of the driver fails in [`out_of_puff`].
const OUT_OF_PUFF_WINDOW: Duration = Duration::from_secs(20);
/// Most size-work rounds ours may run in [`OUT_OF_PUFF_WINDOW`]: its
/// backoff (200 ms, doubling up to 5 s) allows 8; retrying every 200 ms,
/// as C does, would be about 100.
const OUT_OF_PUFF_MAX_ROUNDS: u64 = 10;

/// Every aimed allocation fails while the host asks for `target`: the
/// driver says it is out of puff and backs off. Ours must slow down
/// (rounds from its debugfs counters); C's log is recorded.
fn out_of_puff(vm: &mut Vm, driver: Driver, text: (u64, u64), target: u64) -> Result<()> {
    arm(vm, text, 100)?;
    let mark = vm.console_mark();
    let rounds = |vm: &mut Vm| -> Result<Option<u64>> {
        if driver != Driver::Rust {
            return Ok(None);
        }
        rs_counter(&vm.rs_counters()?, "rounds").map(Some)
    };
    let r0 = rounds(vm)?;
    vm.set_balloon_target_bytes(target)?;
    std::thread::sleep(OUT_OF_PUFF_WINDOW);
    let r1 = rounds(vm)?;
    let actual = vm.query_balloon_actual()?;
    let puffs = vm.console_find(mark, "Out of puff");
    vm.note(&format!(
        "{driver}: every allocation failing for {OUT_OF_PUFF_WINDOW:?}: size-work rounds {:?}, \
         actual {}, {} \"Out of puff\" lines, the last {:?}",
        r0.zip(r1).map(|(a, b)| b - a),
        format_bytes(actual),
        puffs.len(),
        puffs.last()
    ));
    ensure!(
        !puffs.is_empty(),
        "no \"Out of puff\" logged with every allocation failing"
    );
    if let (Some(r0), Some(r1)) = (r0, r1) {
        ensure!(
            r1 - r0 <= OUT_OF_PUFF_MAX_ROUNDS,
            "with every allocation failing the size work ran {} rounds in {OUT_OF_PUFF_WINDOW:?}: \
             it does not back off",
            r1 - r0
        );
    }
    Ok(())
}

/// Runs the scenario for `ctx`. Ours must pass; for the C driver the
/// outcome is recorded and the test passes unless the harness itself
/// failed to run it.
pub fn fault_injection(driver: Driver, ctx: Context) -> Result<()> {
    match (driver, scenario(driver, ctx)) {
        (Driver::Rust, r) => r,
        (Driver::C, Ok(())) => {
            eprintln!("[faults-{}] virtio_balloon: passed", ctx.name());
            Ok(())
        }
        (Driver::C, Err(e)) => {
            eprintln!(
                "[faults-{}] virtio_balloon (recorded, not asserted): {e:#}",
                ctx.name()
            );
            Ok(())
        }
    }
}

fn scenario(driver: Driver, ctx: Context) -> Result<()> {
    if Tier::current()? != Tier::Debug {
        bail!(
            "fault injection runs on the debug tier only (BALLOON_TIER=debug): run `make \
             test-debug`"
        );
    }
    let mut vm = Vm::boot(vm_config(driver, ctx))?;
    require_debug_kernel(&mut vm)?;
    let ram = vm.ram_bytes();
    let total0 = vm.meminfo_field("MemTotal")?;
    kmemleak_clear(&mut vm)?;
    let module = driver.module_name();
    let args = if driver == Driver::Rust {
        "host_timeout_ms=2000"
    } else {
        ""
    };
    vm.run_ok(&format!("modprobe {module} {args}"))?;
    let dev = balloon_device(&mut vm)?;
    ensure!(bound(&mut vm, driver, &dev)?, "{module} did not bind {dev}");
    let s = Setup {
        driver,
        text: module_text(&mut vm, module)?,
        dev,
        ram,
        total0,
    };
    let out = match ctx {
        Context::Probe => inject_probe(&mut vm, &s)?,
        Context::Remove => inject_remove(&mut vm, &s)?,
        Context::SizeWork => inject_size_work(&mut vm, &s)?,
        Context::Stats => inject_stats(&mut vm, &s)?,
        Context::Oom => inject_oom(&mut vm, &s)?,
        Context::Hinting => inject_hinting(&mut vm, &s)?,
    };
    vm.note(&format!("{driver} {}: {out:?}", ctx.name()));
    recovers(vm, &s)
}

/// What a fault scenario works with once the driver is bound.
struct Setup {
    driver: Driver,
    /// The bound device.
    dev: String,
    /// The module's text, where the faults are aimed.
    text: (u64, u64),
    /// Guest RAM, bytes.
    ram: u64,
    /// `MemTotal` before the driver loaded, bytes.
    total0: u64,
}
