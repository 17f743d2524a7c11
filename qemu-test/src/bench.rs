//! The inflate/deflate benchmark behind `make bench`: both drivers in one
//! boot, alternating, same guest, same workload.
//!
//! Each run loads one driver, dirties the guest's free memory (so the host
//! really has memory to take back), then inflates the balloon by the
//! requested size and deflates it again. For each phase it records:
//!
//! - the wall time from the QMP `balloon` command to QEMU's `actual`
//!   reaching the target (QMP polled every [`BenchOpts::poll`]; the
//!   rate-limited `BALLOON_CHANGE` events give a second, coarser figure);
//! - `actual` over time, for the plot;
//! - guest CPU time (non-idle time in the guest's `/proc/stat`);
//! - host CPU time of each QEMU thread (vCPUs run the guest, the main loop
//!   and I/O threads run the device model and free the host memory), which
//!   splits the time between guest work and host work;
//! - QEMU's RSS before and after;
//! - for our driver, its own counters from debugfs (time allocating, time
//!   waiting for the host, requests, notifications).

use crate::units::MIB;
use crate::vm::Vm;
use crate::{Driver, VmConfig};
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The guest's memory before each inflate (`--guest-state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestState {
    /// As booted: free memory the host never backed.
    Fresh,
    /// Free memory dirtied and freed by a process (the host backs it, so
    /// inflating returns memory to the host).
    Dirty,
    /// Free memory full of clean page cache (a sparse file twice the RAM
    /// read from the ext4 data disk), as in every long-running guest:
    /// inflating must reclaim it.
    Cache,
}

impl GuestState {
    /// Parses `fresh`, `dirty` or `cache`.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "fresh" => GuestState::Fresh,
            "dirty" => GuestState::Dirty,
            "cache" => GuestState::Cache,
            _ => bail!("unknown guest state {s:?} (fresh, dirty or cache)"),
        })
    }

    /// The name `parse` takes.
    pub fn name(self) -> &'static str {
        match self {
            GuestState::Fresh => "fresh",
            GuestState::Dirty => "dirty",
            GuestState::Cache => "cache",
        }
    }
}

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct BenchOpts {
    /// Repetitions per driver.
    pub reps: usize,
    /// Guest RAM in MiB.
    pub guest_mib: u64,
    /// Balloon size to inflate to and deflate from, in MiB.
    pub balloon_mib: u64,
    /// Drivers, in the order they alternate.
    pub drivers: Vec<Driver>,
    /// QMP polling interval for `actual`.
    pub poll: Duration,
    /// Extra guest kernel command line (for example a module parameter).
    pub cmdline: Vec<String>,
    /// The guest's memory before each inflate.
    pub guest_state: GuestState,
}

impl Default for BenchOpts {
    fn default() -> Self {
        BenchOpts {
            reps: 5,
            guest_mib: 2048,
            balloon_mib: 1024,
            drivers: vec![Driver::C, Driver::Rust],
            poll: Duration::from_millis(10),
            cmdline: Vec::new(),
            guest_state: GuestState::Dirty,
        }
    }
}

/// `actual` (balloon size, bytes) at a time (seconds since the phase began).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds since the QMP command.
    pub t: f64,
    /// Balloon size in bytes (RAM minus QEMU's `actual`).
    pub balloon: u64,
}

/// One inflate or deflate.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    /// Seconds from the QMP command until `actual` reached the target.
    pub secs: f64,
    /// Seconds from the command to the last `BALLOON_CHANGE` event's
    /// timestamp (QEMU rate-limits these to one a second).
    pub event_secs: Option<f64>,
    /// Guest CPU time (all CPUs, non-idle), seconds.
    pub guest_cpu: f64,
    /// Host CPU seconds per QEMU thread name (summed over same-named threads).
    pub qemu_cpu: BTreeMap<String, f64>,
    /// Our driver's debugfs counters, difference over the phase.
    pub counters: BTreeMap<String, u64>,
    /// The balloon size over time.
    pub samples: Vec<Sample>,
}

/// One run (one driver, one repetition).
#[derive(Debug, Clone)]
pub struct Run {
    /// Which driver.
    pub driver: Driver,
    /// Repetition number, from 0.
    pub rep: usize,
    /// Inflating by the balloon size.
    pub inflate: Phase,
    /// Deflating back to empty.
    pub deflate: Phase,
    /// QEMU RSS after dirtying, after inflating, after deflating (bytes).
    pub rss: [u64; 3],
}

/// Non-idle guest CPU time in seconds (`/proc/stat`, USER_HZ = 100).
fn guest_busy(vm: &mut Vm) -> Result<f64> {
    let stat = vm.run_ok("head -1 /proc/stat")?;
    let v: Vec<u64> = stat
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    ensure!(v.len() >= 5, "bad /proc/stat line: {stat}");
    let total: u64 = v.iter().sum();
    let idle = v[3] + v[4];
    Ok((total - idle) as f64 / 100.0)
}

/// Host CPU seconds of each QEMU thread, by thread name.
fn qemu_threads(pid: u32) -> Result<BTreeMap<String, f64>> {
    // USER_HZ, the unit of /proc/*/stat times, is 100 on Linux.
    let hz = 100.0;
    let mut out = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // comm is in parentheses and may contain spaces.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let rest: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // Fields 14 and 15 (utime, stime) are at 11 and 12 after the state.
        let ticks: u64 = rest
            .get(11..13)
            .map(|f| f.iter().filter_map(|x| x.parse::<u64>().ok()).sum())
            .unwrap_or(0);
        // Group "CPU 0/TCG", "CPU 1/TCG" as vCPUs; keep other names.
        let name = if comm.starts_with("CPU ") {
            "vcpu".to_string()
        } else {
            comm
        };
        *out.entry(name).or_insert(0.0) += ticks as f64 / hz;
    }
    Ok(out)
}

fn diff_map(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// Our driver's debugfs counters (`name: value` lines), empty for C.
fn counters(vm: &mut Vm, driver: Driver) -> Result<BTreeMap<String, u64>> {
    if driver != Driver::Rust {
        return Ok(BTreeMap::new());
    }
    let out = vm.run_ok("cat /sys/kernel/debug/virtio_balloon_rs-*/stats")?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

fn diff_counters(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(a.get(k).copied().unwrap_or(0))))
        .collect()
}

/// Moves the balloon to `target` (guest memory, bytes) and measures it.
fn phase(vm: &mut Vm, driver: Driver, target: u64, opts: &BenchOpts) -> Result<Phase> {
    let ram = vm.ram_bytes();
    let cpu0 = guest_busy(vm)?;
    let thr0 = qemu_threads(vm.pid())?;
    let cnt0 = counters(vm, driver)?;
    vm.qmp().drain_events();
    let wall0 = std::time::SystemTime::now();
    let t0 = Instant::now();
    vm.set_balloon_target_bytes(target)?;
    let mut samples = Vec::new();
    loop {
        let actual = vm.query_balloon_actual()?;
        samples.push(Sample {
            t: t0.elapsed().as_secs_f64(),
            balloon: ram.saturating_sub(actual),
        });
        if actual == target {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("{driver:?}: actual stuck at {actual} (target {target})");
        }
        std::thread::sleep(opts.poll);
    }
    let secs = t0.elapsed().as_secs_f64();
    let thr1 = qemu_threads(vm.pid())?;
    let cpu1 = guest_busy(vm)?;
    let cnt1 = counters(vm, driver)?;
    // QEMU emits the last BALLOON_CHANGE up to a second late.
    std::thread::sleep(Duration::from_millis(1100));
    vm.qmp().poll_events()?;
    let event_secs = vm
        .qmp()
        .drain_events()
        .iter()
        .filter(|e| e.balloon_actual().is_some())
        .filter_map(|e| e.timestamp.duration_since(wall0).ok())
        .map(|d| d.as_secs_f64())
        .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
    Ok(Phase {
        secs,
        event_secs,
        guest_cpu: cpu1 - cpu0,
        qemu_cpu: diff_map(&thr0, &thr1),
        counters: diff_counters(&cnt0, &cnt1),
        samples,
    })
}

fn load(vm: &mut Vm, driver: Driver) -> Result<()> {
    let other = match driver {
        Driver::C => Driver::Rust,
        Driver::Rust => Driver::C,
    };
    vm.run_ok(&format!(
        "rmmod {} 2>/dev/null; modprobe {}",
        other.module_name(),
        driver.module_name()
    ))?;
    let bound = vm.balloon_driver()?;
    ensure!(
        bound.as_deref() == Some(driver.module_name()),
        "balloon bound to {bound:?}, wanted {}",
        driver.module_name()
    );
    Ok(())
}

/// Runs the benchmark; `progress` is told about each finished run.
pub fn run(opts: &BenchOpts, mut progress: impl FnMut(&Run)) -> Result<(Vm, Vec<Run>)> {
    let mut cfg = VmConfig::new("bench")
        .memory_mib(opts.guest_mib)
        .driver_opt(None)
        .loglevel(4)
        // Room for a page cache file twice the RAM.
        .data_disk_mib(Some(opts.guest_mib * 2 + 1024));
    for a in &opts.cmdline {
        cfg = cfg.cmdline_arg(a);
    }
    let mut vm = Vm::boot(cfg).context("booting the benchmark VM")?;
    let ram = vm.ram_bytes();
    ensure!(
        opts.balloon_mib * MIB < ram,
        "balloon of {} MiB does not fit a {} MiB guest",
        opts.balloon_mib,
        opts.guest_mib
    );
    let target = ram - opts.balloon_mib * MIB;
    let cache_file = format!("{}/bench-cache", crate::DATA_MOUNT);
    if opts.guest_state == GuestState::Cache {
        vm.run_ok(&format!("truncate -s {} {cache_file}", 2 * ram))?;
    }
    let mut runs = Vec::new();
    for rep in 0..opts.reps {
        for &driver in &opts.drivers {
            load(&mut vm, driver)?;
            match opts.guest_state {
                GuestState::Fresh => {}
                GuestState::Dirty => {
                    let free = vm.meminfo_field("MemFree")?;
                    let dirty = free.saturating_sub(256 * MIB);
                    vm.run_ok(&format!(
                        "dd if=/dev/zero of=/dev/null bs={dirty} count=1 2>&1"
                    ))?;
                }
                GuestState::Cache => {
                    vm.run_timeout(
                        &format!("cat {cache_file} > /dev/null"),
                        Duration::from_secs(600),
                    )?;
                }
            }
            let rss0 = vm.qemu_rss_bytes()?;
            let inflate = phase(&mut vm, driver, target, opts)
                .with_context(|| format!("{driver:?} inflate, rep {rep}"))?;
            let rss1 = vm.qemu_rss_bytes()?;
            let deflate = phase(&mut vm, driver, ram, opts)
                .with_context(|| format!("{driver:?} deflate, rep {rep}"))?;
            let rss2 = vm.qemu_rss_bytes()?;
            let r = Run {
                driver,
                rep,
                inflate,
                deflate,
                rss: [rss0, rss1, rss2],
            };
            progress(&r);
            runs.push(r);
        }
    }
    Ok((vm, runs))
}

/// Minimum, median and maximum.
pub fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (v[0], median, v[n - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(stats(vec![3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
        assert_eq!(stats(vec![4.0, 1.0, 2.0, 3.0]), (1.0, 2.5, 4.0));
        assert!(stats(vec![]).1.is_nan());
    }
}
