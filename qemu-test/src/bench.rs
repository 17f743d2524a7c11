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
//!
//! Around the phases it records how huge pages fare ([`Run::host`],
//! [`Run::guest_before`], [`Run::guest_after`]): host memory returned per
//! MiB inflated (QEMU's RSS, and for hugetlb backing the free pages of the
//! host's pool), how much of the guest RAM the guest keeps stays backed by
//! host transparent huge pages, and the guest's own huge pages and free
//! 2 MiB blocks (`/proc/buddyinfo`) after the deflate.
//!
//! The host backing ([`BenchOpts::backing`]) is 4 KiB pages, transparent
//! huge pages or hugetlb pages ([`Backing`]); for hugetlb the benchmark
//! grows the host's pool for the guest and shrinks it back at the end
//! ([`crate::hostmem::HugePagePool`]). Every run starts from the same
//! state: the guest memory is dirtied (or fragmented, or cached) again and,
//! with THP backing, the host's huge pages that an earlier run split are
//! collapsed again (`process_madvise(MADV_COLLAPSE)`).
//!
//! With [`BenchOpts::compact`] each run also compacts the guest's memory
//! once after the inflate (`/proc/sys/vm/compact_memory`) and records the
//! host's memory again ([`Run::compaction`]): migrating ballooned pages
//! makes the host back memory the balloon had given back.

use crate::hostmem::{self, HugePagePool, QemuMem, HUGE_PAGE};
use crate::units::MIB;
use crate::vm::Vm;
use crate::{Accel, Backing, Driver, VmConfig};
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
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
    /// Free memory scattered as after a long run: the guest tool
    /// `fragment -N -n NODE -F`, one per NUMA node and bound to it, dirties
    /// the node's free memory but a margin with 4 KiB pages
    /// (`MADV_NOHUGEPAGE`), gives back a contiguous part (its share of the
    /// balloon size plus [`FRAG_SPARE_MIB`]: whole free 2 MiB blocks) and
    /// one page in every [`BenchOpts::frag_stride`] of the rest (single
    /// free pages all over the memory it holds, which order-0 allocations
    /// get first), and holds the rest until the deflate is measured. The
    /// guest runs with small per-CPU free lists ([`PCP_HIGH_FRACTION`]).
    Fragmented,
}

impl GuestState {
    /// Parses `fresh`, `dirty`, `cache` or `fragmented`.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "fresh" => GuestState::Fresh,
            "dirty" => GuestState::Dirty,
            "cache" => GuestState::Cache,
            "fragmented" => GuestState::Fragmented,
            _ => bail!("unknown guest state {s:?} (fresh, dirty, cache or fragmented)"),
        })
    }

    /// The name `parse` takes.
    pub fn name(self) -> &'static str {
        match self {
            GuestState::Fresh => "fresh",
            GuestState::Dirty => "dirty",
            GuestState::Cache => "cache",
            GuestState::Fragmented => "fragmented",
        }
    }
}

/// Free guest memory the dirty and fragmented states leave untouched.
pub const GUEST_MARGIN_MIB: u64 = 256;
/// What the fragmented state frees in one piece beyond the balloon size.
pub const FRAG_SPARE_MIB: u64 = 64;
/// Huge pages the hugetlb pool gets beyond the guest's RAM.
pub const HUGE_PAGE_MARGIN: u64 = 8;
/// The fragmented state's guest `vm.percpu_pagelist_high_fraction`: so
/// large that each CPU keeps at most 4 batches (about 1 MiB) of free pages
/// per zone. By default the kernel lets a CPU's list grow to 1/8 of a zone
/// when it frees much (since Linux 6.7), and an order-0 allocation takes
/// its own CPU's list first: the single free pages would sit on the list of
/// the CPU `fragment` ran on, and whether the balloon got them would depend
/// on the CPU it allocates on (host THP kept measured 31 % to 94 % from one
/// run to the next). Capped, they are in the buddy allocator's order-0
/// lists, which every CPU's order-0 allocations reach first.
pub const PCP_HIGH_FRACTION: u64 = 1_000_000;

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
    /// Host backing of the guest RAM.
    pub backing: Backing,
    /// Fragmented state: one free page in every this many of the memory
    /// held.
    pub frag_stride: u64,
    /// The device's `free-page-reporting`: `None` turns it on for hugetlb
    /// backing only (our driver reports its whole blocks there, the only
    /// way QEMU frees a hugetlb page for a balloon of 256-PFN elements),
    /// off otherwise (today's bench).
    pub free_page_reporting: Option<bool>,
    /// After the inflate (and its host figures), compact the guest's memory
    /// once and record the host's memory and the guest's migration
    /// counters again, before the deflate.
    pub compact: bool,
}

impl BenchOpts {
    /// Whether the device offers free page reporting.
    pub fn reporting(&self) -> bool {
        self.free_page_reporting
            .unwrap_or(self.backing == Backing::Hugetlb2M)
    }
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
            backing: Backing::Anonymous,
            frag_stride: 32,
            free_page_reporting: None,
            compact: false,
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

/// The guest's free memory and huge pages at one moment.
#[derive(Debug, Clone, Default)]
pub struct GuestMem {
    /// `/proc/buddyinfo` as read.
    pub buddyinfo: String,
    /// Free blocks per order, summed over nodes and zones.
    pub free_blocks: Vec<u64>,
    /// `AnonHugePages` of `/proc/meminfo`, bytes.
    pub anon_huge: u64,
    /// `MemFree`, bytes.
    pub mem_free: u64,
    /// Free pages on the per-CPU lists (`count` of the pagesets in
    /// `/proc/zoneinfo`): free, but not in `/proc/buddyinfo`, and the
    /// first an order-0 allocation gets.
    pub pcp_pages: u64,
}

impl GuestMem {
    /// Free memory in blocks of order 9 (2 MiB) or more, counted in 2 MiB
    /// blocks.
    pub fn free_2m_blocks(&self) -> u64 {
        self.free_blocks
            .iter()
            .enumerate()
            .skip(9)
            .map(|(order, n)| n << (order - 9))
            .sum()
    }

    /// Free single 4 KiB pages (order 0).
    pub fn free_single_pages(&self) -> u64 {
        self.free_blocks.first().copied().unwrap_or(0)
    }
}

/// Free blocks per order in `/proc/buddyinfo`, summed over its lines
/// (`Node 0, zone   Normal  n0 n1 ... n10`).
pub fn parse_buddyinfo(text: &str) -> Vec<u64> {
    let mut sum: Vec<u64> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(z) = f.iter().position(|w| *w == "zone") else {
            continue;
        };
        for (order, n) in f.iter().skip(z + 2).enumerate() {
            let n: u64 = n.parse().unwrap_or(0);
            if sum.len() <= order {
                sum.resize(order + 1, 0);
            }
            sum[order] += n;
        }
    }
    sum
}

fn guest_mem(vm: &mut Vm) -> Result<GuestMem> {
    let out = vm.run_ok(
        "cat /proc/buddyinfo; echo @@; cat /proc/meminfo; echo @@; \
         grep -E '^ +count:' /proc/zoneinfo",
    )?;
    let mut parts = out.split("@@");
    let (Some(buddy), Some(meminfo), Some(pcp)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("bad buddyinfo/meminfo/zoneinfo output {out:?}");
    };
    let m = crate::stats::parse_meminfo(meminfo)?;
    Ok(GuestMem {
        buddyinfo: buddy.trim_end().to_string(),
        free_blocks: parse_buddyinfo(buddy),
        anon_huge: m.get("AnonHugePages").copied().unwrap_or(0),
        mem_free: m.get("MemFree").copied().unwrap_or(0),
        pcp_pages: pcp
            .split_whitespace()
            .filter_map(|w| w.parse::<u64>().ok())
            .sum(),
    })
}

/// Re-collapsing the host's transparent huge pages before a run.
#[derive(Debug, Clone, Default)]
pub struct Collapse {
    /// Seconds `process_madvise(MADV_COLLAPSE)` took.
    pub secs: f64,
    /// Guest RAM in host huge pages before, bytes.
    pub anon_huge_before: u64,
    /// And after.
    pub anon_huge_after: u64,
    /// What `process_madvise(MADV_COLLAPSE)` did per 2 MiB range.
    pub ranges: hostmem::Collapsed,
}

/// The guest's `/proc/vmstat` counters [`Compaction`] records.
pub const COMPACT_COUNTERS: [&str; 4] = [
    "compact_migrate_scanned",
    "compact_success",
    "pgmigrate_success",
    "balloon_migrate",
];

/// Compacting the guest's memory once after the inflate (`--compact`).
#[derive(Debug, Clone, Default)]
pub struct Compaction {
    /// Seconds from writing `/proc/sys/vm/compact_memory` to the last
    /// change of the counters.
    pub secs: f64,
    /// QEMU's memory after the compaction.
    pub host: QemuMem,
    /// The guest before and after the compaction.
    pub guest: [GuestMem; 2],
    /// [`COMPACT_COUNTERS`] before and after (a counter the guest kernel
    /// lacks is absent).
    pub vmstat: [BTreeMap<String, u64>; 2],
}

impl Compaction {
    /// How much a counter rose, `None` if the guest kernel lacks it.
    pub fn counter(&self, name: &str) -> Option<u64> {
        Some(
            self.vmstat[1]
                .get(name)?
                .saturating_sub(*self.vmstat[0].get(name)?),
        )
    }
}

fn compact_counters(vm: &mut Vm) -> Result<BTreeMap<String, u64>> {
    let out = vm.run_ok("cat /proc/vmstat")?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            COMPACT_COUNTERS
                .contains(&k)
                .then(|| Some((k.to_string(), v.trim().parse().ok()?)))?
        })
        .collect())
}

/// Compacts the guest's memory once and waits until the counters have
/// held for 2 s (kcompactd may go on after the write returns; at most a
/// minute), then records QEMU's memory and the guest's.
fn compact(vm: &mut Vm, sizes: &[u64]) -> Result<Compaction> {
    let guest0 = guest_mem(vm)?;
    let before = compact_counters(vm)?;
    let t0 = Instant::now();
    vm.run_timeout(
        "echo 1 > /proc/sys/vm/compact_memory",
        Duration::from_secs(300),
    )?;
    let (mut last, mut since) = (compact_counters(vm)?, Instant::now());
    let mut secs = t0.elapsed().as_secs_f64();
    while t0.elapsed() < Duration::from_secs(60) && since.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(500));
        let now = compact_counters(vm)?;
        if now != last {
            (last, since) = (now, Instant::now());
            secs = t0.elapsed().as_secs_f64();
        }
    }
    Ok(Compaction {
        secs,
        host: hostmem::qemu_mem(vm.pid(), sizes)?,
        guest: [guest0, guest_mem(vm)?],
        vmstat: [before, last],
    })
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
    /// QEMU RSS after dirtying, after inflating, after deflating (bytes;
    /// `VmRSS` + `HugetlbPages`, which VmRSS leaves out).
    pub rss: [u64; 3],
    /// QEMU's memory before the inflate, after it, after the deflate.
    pub host: [QemuMem; 3],
    /// The guest before it is dirtied, fragmented or cached for the run.
    pub guest_rest: GuestMem,
    /// The guest before the inflate (after dirtying or fragmenting).
    pub guest_before: GuestMem,
    /// The guest after the deflate (a fragmented state's memory still held).
    pub guest_after: GuestMem,
    /// `/proc/pagetypeinfo` before the inflate.
    pub pagetypeinfo: String,
    /// Seconds setting up the guest state.
    pub prepare_secs: f64,
    /// THP backing: collapsing the host's huge pages before the run.
    pub collapse: Option<Collapse>,
    /// Guest RAM, bytes.
    pub ram: u64,
    /// Balloon size inflated, bytes.
    pub balloon: u64,
    /// `--compact`: the compaction after the inflate.
    pub compaction: Option<Compaction>,
}

impl Run {
    fn balloon_mib(&self) -> f64 {
        self.balloon as f64 / MIB as f64
    }

    /// Host memory returned per MiB inflated, by QEMU's RSS (with hugetlb
    /// pages).
    pub fn rss_returned_per_mib(&self) -> f64 {
        self.host[0].rss.saturating_sub(self.host[1].rss) as f64 / MIB as f64 / self.balloon_mib()
    }

    /// Host memory returned per MiB inflated, by the free pages the host's
    /// hugetlb pool gained.
    pub fn pool_returned_per_mib(&self) -> f64 {
        let pages = self.host[1]
            .free_huge_pages
            .saturating_sub(self.host[0].free_huge_pages);
        (pages * HUGE_PAGE) as f64 / MIB as f64 / self.balloon_mib()
    }

    /// Host memory returned per MiB inflated, by what QEMU's guest RAM
    /// mappings hold (4 KiB, THP and hugetlb pages): unlike the pool, blind
    /// to other users of the host's huge pages.
    pub fn ram_returned_per_mib(&self) -> f64 {
        self.host[0].ram_rss.saturating_sub(self.host[1].ram_rss) as f64
            / MIB as f64
            / self.balloon_mib()
    }

    /// One of our driver's counters over the inflate (`None` for C, or a
    /// module without it).
    pub fn inflate_counter(&self, name: &str) -> Option<u64> {
        self.inflate.counters.get(name).copied()
    }

    /// [`Self::ram_returned_per_mib`] after the compaction (not a number
    /// without one).
    pub fn ram_returned_compacted_per_mib(&self) -> f64 {
        self.compaction.as_ref().map_or(f64::NAN, |c| {
            self.host[0].ram_rss.saturating_sub(c.host.ram_rss) as f64
                / MIB as f64
                / self.balloon_mib()
        })
    }

    /// [`Self::host_thp_kept`] after the compaction (not a number without
    /// one).
    pub fn host_thp_kept_compacted(&self) -> f64 {
        self.compaction.as_ref().map_or(f64::NAN, |c| {
            c.host.ram_anon_huge as f64 / self.ram.saturating_sub(self.balloon) as f64
        })
    }

    /// How much a guest counter of [`COMPACT_COUNTERS`] rose over the
    /// compaction (not a number without one, or without the counter).
    pub fn compact_counter(&self, name: &str) -> f64 {
        self.compaction
            .as_ref()
            .and_then(|c| c.counter(name))
            .map_or(f64::NAN, |v| v as f64)
    }

    /// Share of the guest RAM in host transparent huge pages before the
    /// inflate.
    pub fn host_thp_before(&self) -> f64 {
        self.host[0].ram_anon_huge as f64 / self.ram as f64
    }

    /// Host transparent huge pages after the inflate per byte of guest RAM
    /// not ballooned: how much of what the guest keeps stays huge.
    pub fn host_thp_kept(&self) -> f64 {
        self.host[1].ram_anon_huge as f64 / self.ram.saturating_sub(self.balloon) as f64
    }
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
    vm.rs_counters()
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
    // `rmmod` may find the module busy for a while (on a loaded host,
    // seen with free page reporting on): try for a minute, and say what it
    // said.
    let mut said = String::new();
    for _ in 0..30 {
        said = vm.run_ok(&format!(
            "if grep -q '^{o} ' /proc/modules; then rmmod {o} 2>&1; fi; modprobe {d} 2>&1",
            o = other.module_name(),
            d = driver.module_name()
        ))?;
        if vm.balloon_driver()?.as_deref() == Some(driver.module_name()) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let bound = vm.balloon_driver()?;
    let diag = vm
        .run(&format!(
            "echo refcnt $(cat /sys/module/{o}/refcnt) holders: $(ls /sys/module/{o}/holders); \
             dmesg | tail -n 15",
            o = other.module_name()
        ))
        .map(|o| o.output)
        .unwrap_or_default();
    bail!(
        "balloon bound to {bound:?}, wanted {} (rmmod {} / modprobe said: {}; {})",
        driver.module_name(),
        other.module_name(),
        said.trim(),
        diag.trim()
    )
}

/// What [`run`] measured, once the VM is gone (and the host's hugetlb
/// pool is back as it was).
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The accelerator the VM ran on.
    pub accel: Accel,
    /// The runs, in order.
    pub runs: Vec<Run>,
    /// The host's THP mode (`always`, `madvise`, `never`).
    pub host_thp: String,
    /// Huge pages the benchmark added to the host's pool (hugetlb backing).
    pub huge_pages_added: u64,
}

/// Checks the host can give the configured backing and, for hugetlb, grows
/// the pool by what the guest needs (restored when the guard drops).
fn host_setup(opts: &BenchOpts, cfg: &VmConfig) -> Result<(String, Option<HugePagePool>)> {
    let thp = hostmem::thp_mode().unwrap_or_else(|_| "unsupported".into());
    match opts.backing {
        Backing::Anonymous => {
            ensure!(
                thp == "always" || thp == "madvise",
                "--backing thp: the host's transparent huge pages are [{thp}] in {}, so QEMU's \
                 guest RAM would be 4 KiB pages: `echo madvise > {}` (QEMU madvises guest RAM \
                 MADV_HUGEPAGE), or use --backing 4k",
                hostmem::THP_ENABLED,
                hostmem::THP_ENABLED
            );
            Ok((thp, None))
        }
        Backing::Anonymous4k => Ok((thp, None)),
        Backing::Hugetlb2M => {
            let blocks = crate::qemu::ram_block_mib(cfg);
            ensure!(
                blocks.iter().all(|m| (m * MIB).is_multiple_of(HUGE_PAGE)),
                "--backing hugetlb: RAM blocks of {blocks:?} MiB are not multiples of 2 MiB \
                 (use an even --guest-mib per NUMA node)"
            );
            let need = cfg.memory_bytes() / HUGE_PAGE + HUGE_PAGE_MARGIN;
            let pool = HugePagePool::grow(need)?;
            let free = hostmem::free_huge_pages()?;
            ensure!(
                free >= need,
                "--backing hugetlb: only {free} free 2 MiB pages in the host's pool after \
                 adding {need}; someone else is using them"
            );
            Ok((thp, Some(pool)))
        }
    }
}

/// Sets up the guest's memory for one run; returns a command that ends
/// what it holds (after the deflate), if anything.
fn prepare(vm: &mut Vm, opts: &BenchOpts, cache_file: &str) -> Result<Option<&'static str>> {
    match opts.guest_state {
        GuestState::Fresh => Ok(None),
        GuestState::Dirty => {
            let free = vm.meminfo_field("MemFree")?;
            let dirty = free.saturating_sub(GUEST_MARGIN_MIB * MIB);
            vm.run_ok(&format!(
                "dd if=/dev/zero of=/dev/null bs={dirty} count=1 2>&1"
            ))?;
            Ok(None)
        }
        GuestState::Cache => {
            vm.run_timeout(
                &format!("cat {cache_file} > /dev/null"),
                Duration::from_secs(600),
            )?;
            Ok(None)
        }
        GuestState::Fragmented => {
            // One `fragment` per NUMA node, bound to it, so that every node
            // looks the same whichever CPU the balloon allocates on (its
            // allocations take their own node's memory first).
            let text = vm.run_ok("cat /sys/devices/system/node/node*/meminfo")?;
            let free: Vec<(u64, u64)> = text
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    match f.as_slice() {
                        ["Node", n, "MemFree:", kb, "kB"] => {
                            Some((n.parse().ok()?, kb.parse::<u64>().ok()? * 1024 / MIB))
                        }
                        _ => None,
                    }
                })
                .collect();
            ensure!(
                !free.is_empty(),
                "no MemFree in the guest's node meminfo: {text}"
            );
            let nodes = free.len() as u64;
            let whole = (opts.balloon_mib + FRAG_SPARE_MIB).div_ceil(nodes);
            let margin = GUEST_MARGIN_MIB / nodes;
            let mut cmd = String::from("rm -f /tmp/frag*.ready /tmp/frag.go; ");
            let mut ready = Vec::new();
            for &(node, free) in &free {
                let region = free.saturating_sub(margin);
                ensure!(
                    region >= whole + 32,
                    "--guest-state fragmented: guest node {node} has {free} MiB free, too \
                     little to free {whole} MiB in one piece and hold at least 32 MiB with \
                     holes beside a {margin} MiB margin: use a larger --guest-mib or a smaller \
                     --balloon-mib"
                );
                write!(
                    cmd,
                    "(fragment -N -n {node} -F {whole} {region} /tmp/frag{node}.ready \
                     /tmp/frag.go {} > /tmp/frag{node}.out 2>&1 &); ",
                    opts.frag_stride
                )?;
                ready.push(format!("-e /tmp/frag{node}.ready"));
            }
            write!(
                cmd,
                "while ! [ {} ]; do \
                   [ $(pidof fragment | wc -w) -eq {nodes} ] || {{ cat /tmp/frag*.out; exit 1; }}; \
                   sleep 0.2; \
                 done",
                ready.join(" -a ")
            )?;
            let out = vm.run_timeout(&cmd, Duration::from_secs(600))?;
            ensure!(
                out.code == 0,
                "the guest tool `fragment -N -n -F` failed: {}\n(an initramfs built before \
                 fragment had -N, -n and -F? run `make initramfs`)",
                out.output.trim()
            );
            Ok(Some(
                "touch /tmp/frag.go; while pidof fragment > /dev/null; do sleep 0.2; done",
            ))
        }
    }
}

/// THP backing: collapses the host's huge pages an earlier run split, so
/// every run starts with the guest RAM backed as after the first touch.
fn collapse(vm: &Vm, sizes: &[u64]) -> Result<Collapse> {
    let pid = vm.pid();
    let vmas = hostmem::guest_ram_vmas(pid, sizes)?;
    let before = vmas.iter().map(|v| v.anon_huge).sum();
    let t0 = Instant::now();
    let ranges = hostmem::collapse(pid, &vmas)?;
    let secs = t0.elapsed().as_secs_f64();
    let after = hostmem::guest_ram_vmas(pid, sizes)?
        .iter()
        .map(|v| v.anon_huge)
        .sum();
    Ok(Collapse {
        secs,
        anon_huge_before: before,
        anon_huge_after: after,
        ranges,
    })
}

/// Hugetlb backing with free page reporting: waits (up to a minute) until
/// QEMU's guest RAM has held the same memory for 5 s. Loading a driver
/// makes the guest report all its free memory, in passes every 2 s over
/// half a minute, and the last deflate freed much: passes that overlapped
/// the inflate would give the host memory back whichever driver inflates.
/// The dirtying that follows frees memory again, whose first pass comes 2 s
/// later: an inflate that takes longer still shares its window with one.
fn settle_reporting(vm: &Vm, sizes: &[u64]) -> Result<()> {
    let held = || -> Result<u64> { Ok(hostmem::qemu_mem(vm.pid(), sizes)?.ram_rss) };
    let t0 = Instant::now();
    let (mut last, mut since) = (held()?, Instant::now());
    while t0.elapsed() < Duration::from_secs(60) && since.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(500));
        let now = held()?;
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    Ok(())
}

/// Runs the benchmark; `progress` is told about each finished run.
pub fn run(opts: &BenchOpts, mut progress: impl FnMut(&Run)) -> Result<Outcome> {
    let mut cfg = VmConfig::new("bench")
        .memory_mib(opts.guest_mib)
        .driver_opt(None)
        .loglevel(4)
        .backing(opts.backing)
        .free_page_reporting(opts.reporting())
        // Room for a page cache file twice the RAM.
        .data_disk_mib(Some(opts.guest_mib * 2 + 1024));
    if opts.guest_state == GuestState::Fragmented {
        cfg = cfg.cmdline_arg(&format!(
            "sysctl.vm.percpu_pagelist_high_fraction={PCP_HIGH_FRACTION}"
        ));
    }
    for a in &opts.cmdline {
        cfg = cfg.cmdline_arg(a);
    }
    ensure!(opts.frag_stride >= 2, "--frag-stride must be at least 2");
    let sizes: Vec<u64> = crate::qemu::ram_block_mib(&cfg)
        .iter()
        .map(|m| m * MIB)
        .collect();
    // Declared before the VM, so dropped after it: QEMU gives its huge pages
    // back before the pool shrinks.
    let (host_thp, pool) = host_setup(opts, &cfg)?;
    let mut vm = Vm::boot(cfg).context("booting the benchmark VM")?;
    let pid = vm.pid();
    match opts.backing {
        Backing::Anonymous4k => ensure!(
            !hostmem::thp_enabled_for(pid)?,
            "--backing 4k: THP is still enabled for QEMU (pid {pid}) after PR_SET_THP_DISABLE"
        ),
        Backing::Anonymous => ensure!(
            hostmem::thp_enabled_for(pid)?,
            "--backing thp: THP is disabled for QEMU (pid {pid}): is the bench itself running \
             with PR_SET_THP_DISABLE (inherited)?"
        ),
        Backing::Hugetlb2M => {}
    }
    let ram = vm.ram_bytes();
    ensure!(
        opts.balloon_mib * MIB < ram,
        "balloon of {} MiB does not fit a {} MiB guest",
        opts.balloon_mib,
        opts.guest_mib
    );
    let balloon = opts.balloon_mib * MIB;
    let target = ram - balloon;
    let cache_file = format!("{}/bench-cache", crate::DATA_MOUNT);
    if opts.guest_state == GuestState::Cache {
        vm.run_ok(&format!("truncate -s {} {cache_file}", 2 * ram))?;
    }
    let mut runs = Vec::new();
    for rep in 0..opts.reps {
        for &driver in &opts.drivers {
            load(&mut vm, driver)?;
            if opts.backing == Backing::Hugetlb2M && opts.reporting() {
                settle_reporting(&vm, &sizes)?;
            }
            let guest_rest = guest_mem(&mut vm)?;
            let t0 = Instant::now();
            let release = prepare(&mut vm, opts, &cache_file)
                .with_context(|| format!("{driver:?} rep {rep}: preparing the guest"))?;
            let prepare_secs = t0.elapsed().as_secs_f64();
            let collapse = match opts.backing {
                Backing::Anonymous => Some(collapse(&vm, &sizes)?),
                _ => None,
            };
            let guest_before = guest_mem(&mut vm)?;
            let pagetypeinfo = vm.run_ok("cat /proc/pagetypeinfo")?;
            let host0 = hostmem::qemu_mem(pid, &sizes)?;
            if opts.backing == Backing::Anonymous4k {
                ensure!(
                    host0.ram_anon_huge == 0,
                    "--backing 4k: {} MiB of guest RAM in host huge pages",
                    host0.ram_anon_huge / MIB
                );
            }
            let inflate = phase(&mut vm, driver, target, opts)
                .with_context(|| format!("{driver:?} inflate, rep {rep}"))?;
            let host1 = hostmem::qemu_mem(pid, &sizes)?;
            let compaction = if opts.compact {
                Some(
                    compact(&mut vm, &sizes)
                        .with_context(|| format!("{driver:?} compaction, rep {rep}"))?,
                )
            } else {
                None
            };
            let deflate = phase(&mut vm, driver, ram, opts)
                .with_context(|| format!("{driver:?} deflate, rep {rep}"))?;
            let host2 = hostmem::qemu_mem(pid, &sizes)?;
            let guest_after = guest_mem(&mut vm)?;
            if let Some(cmd) = release {
                vm.run_ok(cmd)?;
            }
            let r = Run {
                driver,
                rep,
                inflate,
                deflate,
                rss: [host0.rss, host1.rss, host2.rss],
                host: [host0, host1, host2],
                guest_rest,
                guest_before,
                guest_after,
                pagetypeinfo,
                prepare_secs,
                collapse,
                ram,
                balloon,
                compaction,
            };
            progress(&r);
            runs.push(r);
        }
    }
    let accel = vm.accel();
    let huge_pages_added = pool.as_ref().map_or(0, |p| p.added);
    drop(vm);
    drop(pool);
    Ok(Outcome {
        accel,
        runs,
        host_thp,
        huge_pages_added,
    })
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

    #[test]
    fn buddyinfo_sums_zones_and_counts_2m_blocks() {
        let text = "\
Node 0, zone      DMA      1      1      0      1      2      1      1      0      1      1      3
Node 0, zone    DMA32    100      3      2      4      5      6      7      8      9     10     20
Node 1, zone   Normal     50      1      0      0      0      0      0      0      0      2      5
";
        let free = parse_buddyinfo(text);
        assert_eq!(free.len(), 11);
        assert_eq!(free[0], 151);
        assert_eq!(free[10], 28);
        let g = GuestMem {
            free_blocks: free,
            ..GuestMem::default()
        };
        // Order 9: 1 + 10 + 2 blocks; order 10: 28 blocks of two.
        assert_eq!(g.free_2m_blocks(), 13 + 56);
        assert_eq!(g.free_single_pages(), 151);
    }
}
