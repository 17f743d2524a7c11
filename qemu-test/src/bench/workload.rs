//! The workload mode of `make bench` (`--workload`): what a moving balloon
//! costs the guest's own work, C and ours alternately in one boot.
//!
//! Each repetition, for each driver (C first in even repetitions, ours
//! first in odd ones, so neither always follows the other's moving phase):
//! the driver is loaded, the guest is put
//! in [`BenchOpts::guest_state`] and the guest tool `workload`
//! (`scripts/guest/workload.c`: anonymous memory written 64 MiB at a time,
//! fork and exec, page-cache reads; operations counted per second) runs
//! for [`PHASE`] undisturbed; then the state is prepared again and the same
//! workload runs while the host sets [`TARGETS`] targets, one every
//! [`PHASE`]`/`[`TARGETS`], balloons of 10 to 60 % of RAM in the order of
//! the long-running test (`10 + (37 i + 11) mod 51` %). Around each phase
//! it reads the guest's `/proc/vmstat` (allocation stalls, compaction
//! stalls, direct scanning, pages the balloon moved, OOM kills),
//! `/proc/pressure/memory` (PSI `some` and `full` time) and `/proc/stat`
//! (system time: the guest kernel's CPU, the balloon's work in it), the
//! guest's kworker threads' CPU time (both drivers' balloon work runs on
//! kworkers; no profiler runs in the guest), the host CPU time of QEMU's
//! vCPU and main threads and of the rest of the host, and in the moving
//! phase how long `actual` took to reach each target.
//!
//! A phase's throughput is one number: the geometric mean, over the three
//! kinds of operation, of its rate relative to the undisturbed rate of the
//! same repetition, both drivers' undisturbed phases averaged (geometric
//! mean), so that neither driver's noise is the other's baseline.

use super::guest::{load, prepare};
use super::report::name;

mod report;
use super::{check_backing, host_setup, qemu_threads, stat_comm_ticks, vm_config, BenchOpts};
use crate::rig::units::MIB;
use crate::rig::vm::Vm;
use crate::{Driver, DATA_MOUNT};
use anyhow::{bail, ensure, Context, Result};
use report::{plot, report};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the workload runs in each phase.
pub const PHASE: Duration = Duration::from_secs(60);
/// Targets the host sets in the moving phase.
pub const TARGETS: u64 = 30;
/// The file the workload reads (random data, in the page cache).
const READ_FILE_MIB: u64 = 64;
/// The workload's anonymous memory per round.
const MEM_CHUNK_MIB: u64 = 64;
/// The kinds of operation `workload` counts, in its output's order.
const KINDS: [&str; 3] = ["mem", "fork", "read"];
/// `/proc/vmstat` counters recorded per phase (summed where the name is a
/// prefix: `allocstall_` covers every zone).
const VMSTAT: [&str; 9] = [
    "allocstall_",
    "compact_stall",
    "pgscan_direct",
    "pgscan_kswapd",
    "balloon_inflate",
    "balloon_deflate",
    "oom_kill",
    // The guest's transparent huge pages (THP "always"): the workload's
    // anonymous memory faults in huge pages while free 2 MiB blocks last.
    "thp_fault_alloc",
    "thp_fault_fallback",
];

/// The guest's counters at one moment.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    vmstat: BTreeMap<&'static str, u64>,
    /// PSI memory `some` and `full` totals, microseconds.
    psi_some_us: u64,
    psi_full_us: u64,
    /// `/proc/stat` `cpu` line: user nice system idle iowait irq softirq.
    cpu: Vec<u64>,
    /// CPU ticks (user + system) of each guest kworker thread, by thread id.
    kworkers: BTreeMap<u32, u64>,
    /// Host CPU seconds of QEMU's threads, by name (vCPUs summed).
    qemu: BTreeMap<String, f64>,
    /// Host CPU seconds busy (user, nice, system, irq, softirq), all CPUs.
    host_busy: f64,
}

/// Host CPU seconds busy since boot, from the host's `/proc/stat`.
fn host_busy_secs() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse::<u64>)
        .collect::<Result<_, _>>()
        .with_context(|| format!("host /proc/stat line {line:?}"))?;
    ensure!(f.len() >= 7, "short host /proc/stat line {line:?}");
    // user nice system idle iowait irq softirq steal guest guest_nice:
    // guest time is already in user and nice, steal is not this host's
    // work. USER_HZ is 100.
    Ok((f[0] + f[1] + f[2] + f[5] + f[6]) as f64 / 100.0)
}

/// Parses `/proc/*/task/*/stat` lines of kworker threads: ticks by thread.
fn parse_kworkers(out: &str) -> BTreeMap<u32, u64> {
    out.lines()
        .filter_map(|l| {
            let tid = l.split_whitespace().next()?.parse().ok()?;
            let (comm, ticks) = stat_comm_ticks(l)?;
            comm.starts_with("kworker").then_some((tid, ticks))
        })
        .collect()
}

/// Guest kworker CPU seconds from `before` to `after`: a thread that
/// exited in between is lost, one that started counts whole (USER_HZ 100).
fn kworker_secs(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>) -> f64 {
    after
        .iter()
        .map(|(tid, t)| t.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum::<u64>() as f64
        / 100.0
}

fn snapshot(vm: &mut Vm) -> Result<Snapshot> {
    let out = vm.run_ok(
        "cat /proc/vmstat; echo @@; cat /proc/pressure/memory; echo @@; head -1 /proc/stat; \
         echo @@; cat /proc/[0-9]*/task/[0-9]*/stat 2>/dev/null | grep kworker",
    )?;
    let mut parts = out.split("@@");
    let (Some(vmstat), Some(psi), Some(stat), Some(kworkers)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("bad vmstat/pressure/stat output {out:?}");
    };
    let mut s = Snapshot {
        kworkers: parse_kworkers(kworkers),
        qemu: qemu_threads(vm.pid())?,
        host_busy: host_busy_secs()?,
        ..Snapshot::default()
    };
    for key in VMSTAT {
        let values: Vec<u64> = vmstat
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(k, _)| {
                if key.ends_with('_') {
                    k.starts_with(key)
                } else {
                    *k == key
                }
            })
            .map(|(k, v)| {
                v.trim()
                    .parse::<u64>()
                    .with_context(|| format!("/proc/vmstat {k}"))
            })
            .collect::<Result<_>>()?;
        ensure!(
            !values.is_empty(),
            "no {key}* counter in the guest's /proc/vmstat"
        );
        s.vmstat.insert(key, values.iter().sum());
    }
    let mut psi_lines = 0;
    for line in psi.lines() {
        let total = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("total="))
            .map(str::parse::<u64>)
            .transpose()
            .with_context(|| format!("PSI line {line:?}"))?;
        match (line.split_whitespace().next(), total) {
            (Some("some"), Some(t)) => s.psi_some_us = t,
            (Some("full"), Some(t)) => s.psi_full_us = t,
            _ => continue,
        }
        psi_lines += 1;
    }
    ensure!(
        psi_lines == 2,
        "no PSI memory totals in the guest (CONFIG_PSI?): {psi:?}"
    );
    s.cpu = stat
        .split_whitespace()
        .skip(1)
        .take(7)
        .map(str::parse::<u64>)
        .collect::<Result<_, _>>()
        .with_context(|| format!("/proc/stat line {stat:?}"))?;
    ensure!(s.cpu.len() == 7, "short /proc/stat line {stat:?}");
    Ok(s)
}

/// One phase of one driver in one repetition.
#[derive(Debug, Clone)]
struct PhaseResult {
    driver: Driver,
    rep: usize,
    moving: bool,
    /// Operations per second, per kind.
    per_second: Vec<[u64; 3]>,
    /// Operations in the whole phase, per kind.
    totals: [u64; 3],
    /// How long the workload ran, as it measured it (seconds).
    elapsed: f64,
    /// Counter increases over the phase.
    vmstat: BTreeMap<&'static str, u64>,
    psi_some_ms: f64,
    psi_full_ms: f64,
    /// Share of the guest's CPU time in the kernel (system, irq, softirq).
    system_share: f64,
    /// Share of the guest's CPU time idle (idle, iowait).
    idle_share: f64,
    /// Guest kworker CPU seconds (the balloon's work runs on kworkers).
    kworker_secs: f64,
    /// Host CPU seconds of QEMU's main thread (the balloon's virtqueues
    /// are handled there), its vCPU threads, and all other host CPU, any
    /// process (QEMU's other threads, the host kernel's threads, the bench).
    host_main_secs: f64,
    host_vcpu_secs: f64,
    host_other_secs: f64,
    /// Moving phase: the balloon size over time (s, bytes).
    balloon: Vec<(f64, u64)>,
    /// Moving phase: seconds `actual` took to reach each target, `None` if
    /// it had not when the next target came.
    settle: Vec<Option<f64>>,
    /// Guest page size, bytes (for the churn in MiB).
    page: u64,
}

impl PhaseResult {
    /// Operations per second, per kind.
    fn rates(&self) -> [f64; 3] {
        self.totals.map(|t| t as f64 / self.elapsed)
    }
}

/// Parses `workload`'s output: one line per second, the totals and the
/// time it measured.
fn parse_workload(out: &str) -> Result<(Vec<[u64; 3]>, [u64; 3], f64)> {
    let field = |l: &str, k: &str| -> Option<u64> {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
    };
    let mut per_second = Vec::new();
    let mut totals = None;
    let mut elapsed = None;
    for l in out.lines() {
        let counts = [field(l, KINDS[0]), field(l, KINDS[1]), field(l, KINDS[2])];
        let [Some(a), Some(b), Some(c)] = counts else {
            continue;
        };
        if l.starts_with("total ") {
            totals = Some([a, b, c]);
            elapsed = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("elapsed=")?.parse::<f64>().ok());
        } else if l.starts_with("t=") {
            per_second.push([a, b, c]);
        }
    }
    let totals = totals.with_context(|| format!("the guest's workload failed: {out:?}"))?;
    let elapsed = elapsed
        .filter(|e| *e > 0.0)
        .with_context(|| format!("no elapsed time in the workload's totals: {out:?}"))?;
    ensure!(
        totals.iter().all(|&t| t > 0),
        "a kind of operation did not run at all: {out:?}"
    );
    Ok((per_second, totals, elapsed))
}

/// Balloon target for a balloon of `percent` % of `ram`, in whole MiB.
fn target_for(ram: u64, percent: u64) -> u64 {
    ram - (ram * percent / 100) / MIB * MIB
}

/// The command that runs the workload for [`PHASE`].
fn workload_cmd(file: &str) -> String {
    format!(
        "workload -t {} -f {file} -m {MEM_CHUNK_MIB}",
        PHASE.as_secs()
    )
}

/// Runs one phase: the workload, undisturbed or while the host moves the
/// balloon; then the balloon is emptied again.
fn run_phase(
    vm: &mut Vm,
    driver: Driver,
    rep: usize,
    moving: bool,
    file: &str,
) -> Result<PhaseResult> {
    let ram = vm.ram_bytes();
    let page = vm.guest_page_size()?;
    let before = snapshot(vm)?;
    let mut balloon = Vec::new();
    let mut settle = Vec::new();
    let out = if moving {
        vm.run_ok(&format!(
            "rm -f /tmp/w.out /tmp/w.done; ({} > /tmp/w.out 2>&1; echo rc=$? >> /tmp/w.out; \
             touch /tmp/w.done) > /dev/null 2>&1 &",
            workload_cmd(file)
        ))?;
        // Targets on a fixed schedule from the start (QMP calls do not
        // push the later ones past the workload's end); `actual` polled
        // every 50 ms, so a settle time is good to about that.
        let t0 = Instant::now();
        let step = PHASE / TARGETS as u32;
        for i in 0..TARGETS {
            let target = target_for(ram, 10 + (i * 37 + 11) % 51);
            let next = t0 + step * (i as u32 + 1);
            let set_at = Instant::now();
            vm.set_balloon_target_bytes(target)?;
            let mut settled = None;
            while Instant::now() < next {
                let actual = vm.query_balloon_actual()?;
                balloon.push((t0.elapsed().as_secs_f64(), ram.saturating_sub(actual)));
                if settled.is_none() && actual.abs_diff(target) <= page {
                    settled = Some(set_at.elapsed().as_secs_f64());
                }
                let left = next.saturating_duration_since(Instant::now());
                std::thread::sleep(Duration::from_millis(50).min(left));
            }
            settle.push(settled);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while vm.run("test -e /tmp/w.done")?.code != 0 {
            ensure!(
                Instant::now() < deadline,
                "{driver}: the workload did not end within a minute of its {} s",
                PHASE.as_secs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        vm.run_ok("cat /tmp/w.out")?
    } else {
        vm.run_ok_timeout(
            &format!("{} 2>&1; echo rc=$?", workload_cmd(file)),
            PHASE + Duration::from_secs(60),
        )?
    };
    let after = snapshot(vm)?;
    vm.set_balloon_target_bytes(ram)?;
    vm.wait_balloon_actual(ram, Duration::from_secs(300))
        .with_context(|| format!("{driver}: the balloon did not empty after the phase"))?;
    let (per_second, totals, elapsed) = parse_workload(&out)?;
    ensure!(
        out.contains("rc=0"),
        "{driver}: the workload failed: {}",
        out.trim()
    );
    let vmstat = VMSTAT
        .iter()
        .map(|&k| (k, after.vmstat[k].saturating_sub(before.vmstat[k])))
        .collect();
    let cpu: Vec<u64> = after
        .cpu
        .iter()
        .zip(&before.cpu)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let oom = after.vmstat["oom_kill"].saturating_sub(before.vmstat["oom_kill"]);
    ensure!(
        oom == 0,
        "{driver}: {oom} OOM kill(s) during the {} phase",
        if moving { "moving" } else { "undisturbed" }
    );
    let all: u64 = cpu.iter().sum();
    let kernel = cpu[2] + cpu[5] + cpu[6];
    let share = |x: u64| if all == 0 { 0.0 } else { x as f64 / all as f64 };
    let qemu = |s: &Snapshot, main: bool| -> f64 {
        s.qemu
            .iter()
            .filter(|(k, _)| match main {
                true => k.starts_with("qemu-system"),
                false => k.as_str() == "vcpu",
            })
            .map(|(_, v)| v)
            .sum()
    };
    let host_main_secs = qemu(&after, true) - qemu(&before, true);
    let host_vcpu_secs = qemu(&after, false) - qemu(&before, false);
    Ok(PhaseResult {
        driver,
        rep,
        moving,
        per_second,
        totals,
        elapsed,
        vmstat,
        psi_some_ms: after.psi_some_us.saturating_sub(before.psi_some_us) as f64 / 1000.0,
        psi_full_ms: after.psi_full_us.saturating_sub(before.psi_full_us) as f64 / 1000.0,
        system_share: share(kernel),
        idle_share: share(cpu[3] + cpu[4]),
        kworker_secs: kworker_secs(&before.kworkers, &after.kworkers),
        host_main_secs,
        host_vcpu_secs,
        // Ticks against per-thread runtimes: a few hundredths either way.
        host_other_secs: (after.host_busy - before.host_busy - host_main_secs - host_vcpu_secs)
            .max(0.0),
        balloon,
        settle,
        page,
    })
}

/// Runs the workload mode and writes its report into `out`.
pub fn run(opts: &BenchOpts, out: &Path) -> Result<()> {
    ensure!(
        opts.guest_state != super::GuestState::Fragmented,
        "--workload runs with --guest-state fresh, dirty or cache"
    );
    let cfg = vm_config(opts);
    let (host_thp, pool) = host_setup(opts, &cfg)?;
    let mut vm = Vm::boot(cfg).context("booting the benchmark VM")?;
    check_backing(opts.backing, vm.pid())?;
    let file = format!("{DATA_MOUNT}/workload-read");
    let cache_file = format!("{DATA_MOUNT}/bench-cache");
    vm.run_timeout(
        &format!(
            "dd if=/dev/urandom of={file} bs=1M count={READ_FILE_MIB} 2>/dev/null && \
             truncate -s {} {cache_file} && sync",
            2 * vm.ram_bytes()
        ),
        Duration::from_secs(300),
    )?;
    let mut results = Vec::new();
    for rep in 0..opts.reps {
        let mut order = opts.drivers.clone();
        if rep % 2 == 1 {
            order.reverse();
        }
        for driver in order {
            load(&mut vm, driver)?;
            for moving in [false, true] {
                prepare(&mut vm, opts, &cache_file)?;
                let r = run_phase(&mut vm, driver, rep, moving, &file)?;
                eprintln!(
                    "bench: rep {rep} {:>4} {:<11} ops {:?}, PSI full {:.0} ms, settled {}/{}",
                    name(driver),
                    if moving { "moving" } else { "undisturbed" },
                    r.totals,
                    r.psi_full_ms,
                    r.settle.iter().filter(|s| s.is_some()).count(),
                    r.settle.len()
                );
                results.push(r);
            }
        }
    }
    let accel = vm.accel();
    drop(vm);
    drop(pool);
    let text = report(opts, &results, &format!("{accel:?}"), &host_thp)?;
    std::fs::write(out.join("workload-report.txt"), &text)?;
    let mut raw = String::new();
    for r in &results {
        for (s, c) in r.per_second.iter().enumerate() {
            writeln!(
                raw,
                "rep={} driver={} moving={} t={} mem={} fork={} read={}",
                r.rep,
                name(r.driver),
                r.moving,
                s + 1,
                c[0],
                c[1],
                c[2]
            )?;
        }
    }
    std::fs::write(out.join("workload-per-second.txt"), raw)?;
    plot(&results, &out.join("workload.png"))?;
    print!("{text}");
    eprintln!("bench: report in {}", out.display());
    Ok(())
}
