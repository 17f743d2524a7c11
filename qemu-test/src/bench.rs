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
//! ([`crate::rig::hostmem::HugePagePool`]). Every run starts from the same
//! state: the guest memory is dirtied (or fragmented, or cached) again and,
//! with THP backing, the host's huge pages that an earlier run split are
//! collapsed again (`process_madvise(MADV_COLLAPSE)`).
//!
//! With [`BenchOpts::compact`] each run also compacts the guest's memory
//! once after the inflate (`/proc/sys/vm/compact_memory`) and records the
//! host's memory again ([`Run::compaction`]): migrating ballooned pages
//! makes the host back memory the balloon had given back.

//!
//! The parts: [`guest`] (the guest side: its memory, compaction, the
//! driver's counters, preparing each run), [`host`] (QEMU's threads, the
//! host's huge pages), [`measure`] (one phase, timed and sampled) and
//! [`report`] (the table, the breakdown, `results.json` and the plot).

mod guest;
mod host;
mod measure;
mod plot;
pub mod report;
pub mod workload;

use guest::{compact, counters, guest_busy, guest_mem, load, prepare, settle_reporting};
pub use guest::{parse_buddyinfo, Compaction, GuestMem, COMPACT_COUNTERS};
pub use host::Collapse;
use host::{collapse, host_setup, qemu_threads, stat_comm_ticks};
use measure::phase;
pub use measure::{stats, Phase, Sample};

use crate::rig::hostmem::{self, HugePagePool, QemuMem, HUGE_PAGE};
use crate::rig::units::MIB;
use crate::rig::vm::Vm;
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
    /// The workload mode ([`workload`]) instead of inflate and deflate.
    pub workload: bool,
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
            workload: false,
        }
    }
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

    /// Host transparent huge pages after the inflate per byte of guest RAM
    /// the host backs (`Rss` of the guest RAM mappings): how much of the
    /// memory the guest keeps and uses stays huge. Unlike
    /// [`Self::host_thp_kept`], guest RAM never touched (no host memory at
    /// all, huge or not) does not count against it. THP backing only (the
    /// runs whose huge pages were collapsed): not a number otherwise, where
    /// `Rss` holds hugetlb pages or no huge page at all.
    pub fn host_thp_backed(&self) -> f64 {
        if self.collapse.is_none() {
            return f64::NAN;
        }
        self.host[1].ram_anon_huge as f64 / self.host[1].ram_rss as f64
    }

    /// Guest RAM the host backs with small pages after the inflate, MiB:
    /// what is left of huge pages the balloon split, and of ranges never
    /// huge. THP backing only, as [`Self::host_thp_backed`].
    pub fn host_small_backed_mib(&self) -> f64 {
        if self.collapse.is_none() {
            return f64::NAN;
        }
        self.host[1]
            .ram_rss
            .saturating_sub(self.host[1].ram_anon_huge) as f64
            / MIB as f64
    }
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

/// Runs the benchmark; `progress` is told about each finished run.
pub fn run(opts: &BenchOpts, mut progress: impl FnMut(&Run)) -> Result<Outcome> {
    ensure!(opts.frag_stride >= 2, "--frag-stride must be at least 2");
    let cfg = vm_config(opts);
    let sizes: Vec<u64> = crate::rig::qemu::ram_block_mib(&cfg)
        .iter()
        .map(|m| m * MIB)
        .collect();
    // Declared before the VM, so dropped after it: QEMU gives its huge pages
    // back before the pool shrinks.
    let (host_thp, pool) = host_setup(opts, &cfg)?;
    let mut vm = Vm::boot(cfg).context("booting the benchmark VM")?;
    let pid = vm.pid();
    check_backing(opts.backing, pid)?;
    let ram = vm.ram_bytes();
    ensure!(
        opts.balloon_mib * MIB < ram,
        "balloon of {} MiB does not fit a {} MiB guest",
        opts.balloon_mib,
        opts.guest_mib
    );
    let bench = Bench {
        opts,
        pid,
        sizes,
        ram,
        balloon: opts.balloon_mib * MIB,
        cache_file: format!("{}/bench-cache", crate::DATA_MOUNT),
    };
    if opts.guest_state == GuestState::Cache {
        vm.run_ok(&format!("truncate -s {} {}", 2 * ram, bench.cache_file))?;
    }
    let mut runs = Vec::new();
    for rep in 0..opts.reps {
        for &driver in &opts.drivers {
            let r = bench.one_run(&mut vm, driver, rep)?;
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

/// The benchmark VM: `opts`' guest size, backing and reporting, a data
/// disk with room for a page cache file twice the RAM, no driver loaded.
fn vm_config(opts: &BenchOpts) -> VmConfig {
    let mut cfg = VmConfig::new("bench")
        .memory_mib(opts.guest_mib)
        .driver_opt(None)
        .loglevel(4)
        .backing(opts.backing)
        .free_page_reporting(opts.reporting())
        .data_disk_mib(Some(opts.guest_mib * 2 + 1024));
    if opts.guest_state == GuestState::Fragmented {
        cfg = cfg.cmdline_arg(&format!(
            "sysctl.vm.percpu_pagelist_high_fraction={PCP_HIGH_FRACTION}"
        ));
    }
    for a in &opts.cmdline {
        cfg = cfg.cmdline_arg(a);
    }
    cfg
}

/// Checks that QEMU (`pid`) got the host pages `backing` asks for.
fn check_backing(backing: Backing, pid: u32) -> Result<()> {
    match backing {
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
    Ok(())
}

/// What every run of one benchmark shares.
struct Bench<'a> {
    opts: &'a BenchOpts,
    /// QEMU's process.
    pid: u32,
    /// The sizes of the guest's RAM blocks, bytes.
    sizes: Vec<u64>,
    /// Guest RAM, bytes.
    ram: u64,
    /// Balloon size, bytes.
    balloon: u64,
    /// The page cache file of `--guest-state cache`.
    cache_file: String,
}

impl Bench<'_> {
    /// One inflate and deflate by `driver` (repetition `rep`), with the
    /// guest prepared as `--guest-state` says and the host measured before,
    /// between and after.
    fn one_run(&self, vm: &mut Vm, driver: Driver, rep: usize) -> Result<Run> {
        let (opts, pid, sizes) = (self.opts, self.pid, &self.sizes);
        load(vm, driver)?;
        if opts.backing == Backing::Hugetlb2M && opts.reporting() {
            settle_reporting(vm, sizes)?;
        }
        let guest_rest = guest_mem(vm)?;
        let t0 = Instant::now();
        let release = prepare(vm, opts, &self.cache_file)
            .with_context(|| format!("{driver:?} rep {rep}: preparing the guest"))?;
        let prepare_secs = t0.elapsed().as_secs_f64();
        let collapse = match opts.backing {
            Backing::Anonymous => Some(collapse(vm, sizes)?),
            _ => None,
        };
        let guest_before = guest_mem(vm)?;
        let pagetypeinfo = vm.run_ok("cat /proc/pagetypeinfo")?;
        let host0 = hostmem::qemu_mem(pid, sizes)?;
        if opts.backing == Backing::Anonymous4k {
            ensure!(
                host0.ram_anon_huge == 0,
                "--backing 4k: {} MiB of guest RAM in host huge pages",
                host0.ram_anon_huge / MIB
            );
        }
        let inflate = phase(vm, driver, self.ram - self.balloon, opts)
            .with_context(|| format!("{driver:?} inflate, rep {rep}"))?;
        let host1 = hostmem::qemu_mem(pid, sizes)?;
        let compaction = if opts.compact {
            Some(compact(vm, sizes).with_context(|| format!("{driver:?} compaction, rep {rep}"))?)
        } else {
            None
        };
        let deflate = phase(vm, driver, self.ram, opts)
            .with_context(|| format!("{driver:?} deflate, rep {rep}"))?;
        let host2 = hostmem::qemu_mem(pid, sizes)?;
        let guest_after = guest_mem(vm)?;
        if let Some(cmd) = release {
            vm.run_ok(cmd)?;
        }
        Ok(Run {
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
            ram: self.ram,
            balloon: self.balloon,
            compaction,
        })
    }
}
