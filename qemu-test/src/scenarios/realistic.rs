//! Scenarios that reproduce what users run: a long-lived guest whose memory
//! is full of page cache, anonymous memory under swap, a memory-limited
//! cgroup, transparent huge pages, a NUMA node that is nearly full, and a
//! mixed workload while the host keeps moving the target.
//!
//! Every scenario runs the C driver and ours in the same boot, one after
//! the other (`rmmod`, `modprobe`), under the same conditions and with the
//! same thresholds, and logs their numbers side by side. The C driver is
//! the reference: ours must do at least as well. Timed scenarios
//! ([`page_cache_full`], [`numa_node_nearly_full`]) alternate the drivers
//! and compare medians; they run one VM at a time (`tests/timed.rs`).

use crate::rig::config::DATA_MOUNT;
use crate::rig::units::{format_bytes, MIB, PAGE_SIZE};
use crate::rig::vm::{rs_counter, Vm, Wait, DEFAULT_CMD_TIMEOUT};
use crate::scenarios::suite::{fresh_stats, target_for};
use crate::{Driver, VmConfig};
use anyhow::{bail, ensure, Context, Result};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

mod long_running;

pub use long_running::{long_running, LONG_RUN, LONG_RUN_TARGETS};

/// Ours may take at most this much longer than C in a timed scenario.
pub const TIME_RATIO_MAX: f64 = 1.2;
/// Repetitions of each driver in timed scenarios (alternating C, ours).
pub const TIMED_REPS: usize = 3;
/// How long one inflate may take before a scenario gives up on it.
pub const INFLATE_TIMEOUT: Duration = Duration::from_secs(120);

/// The VM of a scenario: the realistic default profile, no driver loaded
/// at boot (the scenario loads each in turn).
pub fn config(test: &str) -> VmConfig {
    VmConfig::new(test).memory_mib(crate::scenarios::suite::GUEST_MIB)
}

/// Loads `driver` and checks that it bound the balloon.
pub fn load(vm: &mut Vm, driver: Driver) -> Result<()> {
    vm.run_ok(&format!("modprobe {}", driver.module_name()))?;
    let bound = vm.balloon_driver()?;
    ensure!(
        bound.as_deref() == Some(driver.module_name()),
        "after modprobe {} the balloon is bound to {bound:?}",
        driver.module_name()
    );
    Ok(())
}

/// Unloads `driver` (the balloon must be empty by then, or it deflates).
pub fn unload(vm: &mut Vm, driver: Driver) -> Result<()> {
    vm.run_ok(&format!("rmmod {}", driver.module_name()))?;
    Ok(())
}

/// A counter of `/proc/vmstat`.
pub fn vmstat(vm: &mut Vm, key: &str) -> Result<u64> {
    vm.vmstat_field(key)?
        .with_context(|| format!("no {key} in /proc/vmstat"))
}

/// Ballooned memory per NUMA node (`Balloon:` of each node's meminfo), in
/// bytes, node 0 first.
pub fn balloon_per_node(vm: &mut Vm) -> Result<Vec<u64>> {
    let out = vm.run_ok("cat /sys/devices/system/node/node*/meminfo | grep ' Balloon:'")?;
    out.lines()
        .map(|l| {
            let kb: u64 = l
                .split_whitespace()
                .nth(3)
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("bad node meminfo line {l:?}"))?;
            Ok(kb * 1024)
        })
        .collect()
}

/// Sets the target and polls `actual` every 10 ms until it is there;
/// returns the time taken. After `timeout` it fails, saying how far the
/// balloon got.
pub fn time_balloon_to(vm: &mut Vm, target: u64, timeout: Duration) -> Result<Duration> {
    let from = vm.query_balloon_actual()?;
    let t0 = Instant::now();
    vm.set_balloon_target_bytes(target)?;
    loop {
        let a = vm.query_balloon_actual()?;
        if a.abs_diff(target) < PAGE_SIZE {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() >= timeout {
            bail!(
                "the balloon did not reach the target in {timeout:?}: guest memory {} -> {} of \
                 target {} (moved {})\n--- console ---\n{}",
                format_bytes(from),
                format_bytes(a),
                format_bytes(target),
                format_bytes(from.abs_diff(a)),
                vm.console_tail(30)
            );
        }
        vm.check_alive()?;
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `actual` is back at the whole RAM.
fn deflate_all(vm: &mut Vm) -> Result<()> {
    let ram = vm.ram_bytes();
    vm.set_balloon_target_bytes(ram)?;
    vm.wait_balloon_actual(ram, INFLATE_TIMEOUT)?;
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds, for logs.
fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Times of a timed scenario, per driver, and the verdict.
struct Timings {
    c: Vec<f64>,
    rs: Vec<f64>,
}

impl Timings {
    fn new() -> Self {
        Self {
            c: Vec::new(),
            rs: Vec::new(),
        }
    }

    fn push(&mut self, driver: Driver, t: Duration) {
        match driver {
            Driver::C => self.c.push(t.as_secs_f64()),
            Driver::Rust => self.rs.push(t.as_secs_f64()),
        }
    }

    /// Logs both and fails if ours is slower than [`TIME_RATIO_MAX`] × C.
    fn check(mut self, vm: &Vm, what: &str) -> Result<()> {
        let (c, rs) = (median(&mut self.c), median(&mut self.rs));
        let ratio = rs / c;
        vm.note(&format!(
            "{what}: C {:?} s (median {c:.2} s), ours {:?} s (median {rs:.2} s): ours/C {ratio:.2} \
             (limit {TIME_RATIO_MAX})",
            self.c, self.rs
        ));
        ensure!(
            ratio <= TIME_RATIO_MAX,
            "{what}: ours takes {rs:.2} s, C {c:.2} s: {ratio:.2}× (limit {TIME_RATIO_MAX}×)"
        );
        Ok(())
    }
}

/// The drivers of a timed scenario in the order they run: C, ours, C, ours...
fn alternating() -> impl Iterator<Item = Driver> {
    (0..TIMED_REPS).flat_map(|_| Driver::ALL)
}

// ---- page cache ---------------------------------------------------------------

/// A guest whose memory is full of clean page cache, as every long-running
/// VM's is: a sparse file twice the size of RAM on the ext4 data disk is
/// read (the page cache keeps it: no `drop_caches`), leaving free memory
/// near the low watermark. Inflating half of RAM must then reclaim page
/// cache. Ours must take at most [`TIME_RATIO_MAX`] × C's time, with no OOM
/// kill, then deflate. The log shows, for each driver, how close free
/// memory came to each zone's low watermark during the inflate
/// (`/proc/zoneinfo` every 50 ms).
pub fn page_cache_full() -> Result<()> {
    let mut vm = Vm::boot(config("page-cache-full"))?;
    let ram = vm.ram_bytes();
    let file = format!("{DATA_MOUNT}/cache-file");
    vm.run_ok(&format!("truncate -s {} {file}", 2 * ram))?;
    let target = ram - ram / 2;
    let mut times = Timings::new();
    for driver in alternating() {
        load(&mut vm, driver)?;
        vm.run_timeout(&format!("cat {file} > /dev/null"), Duration::from_secs(300))?;
        let m = vm.meminfo()?;
        let (free, cached) = (m["MemFree"], m["Cached"]);
        vm.note(&format!(
            "{driver}: page cache {}, MemFree {} before inflating {}",
            format_bytes(cached),
            format_bytes(free),
            format_bytes(ram / 2)
        ));
        ensure!(
            cached >= ram * 6 / 10 && free <= ram / 10,
            "the scene is not set: Cached {} and MemFree {} (want >= 60 % and <= 10 % of RAM)",
            format_bytes(cached),
            format_bytes(free)
        );
        let kills = vmstat(&mut vm, "oom_kill")?;
        start_zone_sampler(&mut vm)?;
        let t = time_balloon_to(&mut vm, target, INFLATE_TIMEOUT)
            .with_context(|| format!("{driver}: inflating half of RAM full of page cache"))?;
        let zones = stop_zone_sampler(&mut vm)?;
        let killed = vmstat(&mut vm, "oom_kill")? - kills;
        vm.note(&format!(
            "{driver}: inflated {} in {}, OOM kills {killed}; free pages above the low \
             watermark during the inflate, lowest per zone: {zones}",
            format_bytes(ram / 2),
            secs(t)
        ));
        ensure!(killed == 0, "{driver}: {killed} OOM kills while inflating");
        times.push(driver, t);
        deflate_all(&mut vm)?;
        unload(&mut vm, driver)?;
    }
    times.check(&vm, "inflate half of RAM, page cache full")?;
    vm.shutdown()
}

/// Samples `/proc/zoneinfo` in the guest every 50 ms, in the background,
/// until [`stop_zone_sampler`]: each zone's free pages minus its low
/// watermark (zones with managed pages only).
fn start_zone_sampler(vm: &mut Vm) -> Result<()> {
    vm.run_ok(
        "rm -f /tmp/zi.stop /tmp/zi.log; \
         (while [ ! -e /tmp/zi.stop ]; do \
            awk '/^Node/ { z = $2 $4 } /pages free/ { f = $3 } /^ +low / { l = $2 } \
                 /^ +managed / { if ($2 > 0) print z, f - l }' /proc/zoneinfo; \
            sleep 0.05; done > /tmp/zi.log 2>&1 &)",
    )?;
    Ok(())
}

/// Stops the sampler of [`start_zone_sampler`]; returns, per zone, the
/// lowest free-minus-low seen and how many samples were below low.
fn stop_zone_sampler(vm: &mut Vm) -> Result<String> {
    let out = vm.run_ok(
        "touch /tmp/zi.stop; sleep 0.2; \
         awk '{ n[$1]++; if (!($1 in m) || $2 < m[$1]) m[$1] = $2; if ($2 < 0) b[$1]++ } \
              END { for (z in m) printf \"%s %d pages (%d of %d samples below low); \", \
                    z, m[z], b[z], n[z] }' /tmp/zi.log",
    )?;
    Ok(out.trim().to_string())
}

// ---- NUMA -----------------------------------------------------------------------

/// Two NUMA nodes of half the RAM each, node 0 nearly full (a workload
/// bound to it holds 400 MiB): inflating half of RAM succeeds in at most
/// [`TIME_RATIO_MAX`] × C's time. The log shows the balloon per node.
pub fn numa_node_nearly_full() -> Result<()> {
    let mut vm = Vm::boot(config("numa-node-full").numa_nodes(2))?;
    let ram = vm.ram_bytes();
    let target = ram - ram / 2;
    let mut times = Timings::new();
    for driver in alternating() {
        load(&mut vm, driver)?;
        vm.hold_memhog("-m 400 -n 0", DEFAULT_CMD_TIMEOUT)?;
        let free = vm.run_ok("grep MemFree /sys/devices/system/node/node*/meminfo")?;
        let t = time_balloon_to(&mut vm, target, INFLATE_TIMEOUT)
            .with_context(|| format!("{driver}: inflating half of RAM, node 0 nearly full"))?;
        let per_node = balloon_per_node(&mut vm)?;
        vm.note(&format!(
            "{driver}: inflated {} in {}; balloon per node: {}; before: {}",
            format_bytes(ram / 2),
            secs(t),
            per_node
                .iter()
                .map(|b| format_bytes(*b))
                .collect::<Vec<_>>()
                .join(" / "),
            free.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
        times.push(driver, t);
        deflate_all(&mut vm)?;
        let out = vm.release_memhog(DEFAULT_CMD_TIMEOUT)?;
        ensure!(
            out.contains("memhog: ok"),
            "{driver}: the workload on node 0 failed: {out}"
        );
        unload(&mut vm, driver)?;
    }
    times.check(&vm, "inflate half of RAM, node 0 nearly full")?;
    vm.shutdown()
}

// ---- swap ---------------------------------------------------------------------------

/// Anonymous memory under swap: a workload holds 80 % of RAM, dirty, with
/// 1 GiB of swap; the host asks for 40 % of RAM. C pushes the guest into
/// swap; ours counts swappable memory as available (README, "memory
/// reserve") and does the same. Both must reach the target without an OOM
/// kill, the swap-out statistic must move on the stats queue, and the
/// workload's data must survive.
pub fn swap_under_anonymous_memory() -> Result<()> {
    let mut vm = Vm::boot(config("swap-anon"))?;
    let ram = vm.ram_bytes();
    let hog_mib = ram * 8 / 10 / MIB;
    let target = target_for(ram, 40);
    vm.enable_stats_polling(1)?;
    let mut report = String::new();
    for driver in Driver::ALL {
        load(&mut vm, driver)?;
        vm.hold_memhog(&format!("-m {hog_mib} -s 7"), Duration::from_secs(300))?;
        let s0 = fresh_stats(&mut vm, FRESH_STATS_TIMEOUT)?;
        let kills = vmstat(&mut vm, "oom_kill")?;
        let t = time_balloon_to(&mut vm, target, Duration::from_secs(300))
            .with_context(|| format!("{driver}: inflating 40 % with 80 % of RAM dirty"))?;
        let s1 = fresh_stats(&mut vm, FRESH_STATS_TIMEOUT)?;
        let m = vm.meminfo()?;
        let swapped = m["SwapTotal"] - m["SwapFree"];
        let killed = vmstat(&mut vm, "oom_kill")? - kills;
        let swap_out = s1.require("stat-swap-out")? - s0.require("stat-swap-out")?;
        deflate_all(&mut vm)?;
        let out = vm.release_memhog(Duration::from_secs(300))?;
        let line = format!(
            "{driver}: inflated 40 % in {}; swap used {}; stat-swap-out +{}; OOM kills {killed}; \
             workload: {}",
            secs(t),
            format_bytes(swapped),
            format_bytes(swap_out),
            out.trim()
        );
        vm.note(&line);
        writeln!(report, "  {line}")?;
        ensure!(killed == 0, "{driver}: {killed} OOM kills");
        ensure!(
            swap_out > 0,
            "{driver}: the stats queue shows no swap-out although the guest swapped {}",
            format_bytes(swapped)
        );
        ensure!(
            out.contains("memhog: ok"),
            "{driver}: workload data lost: {}",
            out
        );
        unload(&mut vm, driver)?;
    }
    vm.note(&format!(
        "anonymous memory under swap, C and ours:\n{report}"
    ));
    vm.shutdown()
}

/// How long fresh statistics may take here (the guest is busy).
const FRESH_STATS_TIMEOUT: Duration = Duration::from_secs(30);

// ---- memory cgroup ---------------------------------------------------------------

/// A workload in a memory cgroup limited to 256 MiB (160 MiB of anonymous
/// memory it keeps rewriting, and a file reader whose page cache the
/// cgroup is charged for) while the balloon inflates and deflates three
/// times. The cgroup's limit and the balloon must not interfere: ours may
/// cause no OOM kill in the cgroup that C does not cause too, and the
/// workload's data survives.
pub fn cgroup_workload() -> Result<()> {
    let mut vm = Vm::boot(config("cgroup"))?;
    let ram = vm.ram_bytes();
    vm.run_ok(&format!("truncate -s 512M {DATA_MOUNT}/cg-file"))?;
    let mut kills_by_driver = Vec::new();
    let mut report = String::new();
    for driver in Driver::ALL {
        load(&mut vm, driver)?;
        let cg = format!("/sys/fs/cgroup/work-{}", driver.load_param());
        vm.run_ok(&format!(
            "mkdir {cg} && echo 256M > {cg}/memory.max && \
             sh -c 'echo $$ > {cg}/cgroup.procs; exec memhog -m 160 -s 3 -t 60' \
                > /tmp/cg-hog.out 2>&1 & \
             sh -c 'echo $$ > {cg}/cgroup.procs; \
                    while :; do cat {DATA_MOUNT}/cg-file > /dev/null; done' > /dev/null 2>&1 & \
             echo started"
        ))?;
        let mut times = Vec::new();
        for p in [50, 0, 30, 0, 60, 0] {
            let t = time_balloon_to(&mut vm, target_for(ram, p), INFLATE_TIMEOUT)
                .with_context(|| format!("{driver}: balloon of {p} % with the cgroup busy"))?;
            times.push(format!("{p} %: {}", secs(t)));
        }
        let out = vm.run_timeout(
            "while pidof memhog > /dev/null; do sleep 0.5; done; cat /tmp/cg-hog.out",
            Duration::from_secs(180),
        )?;
        let events = vm.run_ok(&format!("cat {cg}/memory.events"))?;
        let oom_kill = events
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok())
            .context("no oom_kill in memory.events")?;
        let line = format!(
            "{driver}: targets {}; cgroup OOM kills {oom_kill}; events {}; workload: {}",
            times.join(", "),
            events.split_whitespace().collect::<Vec<_>>().join(" "),
            out.output.trim()
        );
        vm.note(&line);
        writeln!(report, "  {line}")?;
        kills_by_driver.push(oom_kill);
        // Nothing may be left in the cgroup before the next driver runs.
        vm.run_ok(&format!(
            "for p in $(cat {cg}/cgroup.procs); do kill -9 $p; done; sleep 0.5; rmdir {cg}"
        ))?;
        if !out.output.contains("memhog: ok") && oom_kill == 0 {
            bail!("{driver}: the cgroup's workload failed: {}", out.output);
        }
        unload(&mut vm, driver)?;
    }
    vm.note(&format!("memory cgroup workload, C and ours:\n{report}"));
    ensure!(
        kills_by_driver[1] <= kills_by_driver[0],
        "ours caused {} OOM kills in the cgroup, C {}",
        kills_by_driver[1],
        kills_by_driver[0]
    );
    vm.shutdown()
}

// ---- transparent huge pages --------------------------------------------------------

/// `AnonHugePages` of `/proc/meminfo`.
fn anon_huge(vm: &mut Vm) -> Result<u64> {
    vm.meminfo_field("AnonHugePages")
}

/// Transparent huge pages in the guest: a THP-backed workload (256 MiB,
/// `MADV_HUGEPAGE`) survives an inflate of 40 % and the deflate with its
/// data intact, and afterwards a new THP workload gets huge pages again
/// (`AnonHugePages` comes back to at least half of what the first one got,
/// and to at least 90 % of what it gets with C).
pub fn thp_workload() -> Result<()> {
    let mut vm = Vm::boot(config("thp").thp(crate::ThpMode::Always))?;
    let ram = vm.ram_bytes();
    let mut after_by_driver = Vec::new();
    let mut report = String::new();
    for driver in Driver::ALL {
        load(&mut vm, driver)?;
        vm.hold_memhog("-m 256 -H -s 11", DEFAULT_CMD_TIMEOUT)?;
        let before = anon_huge(&mut vm)?;
        let t_in = time_balloon_to(&mut vm, target_for(ram, 40), INFLATE_TIMEOUT)?;
        let during = anon_huge(&mut vm)?;
        let t_out = time_balloon_to(&mut vm, ram, INFLATE_TIMEOUT)?;
        let out = vm.release_memhog(DEFAULT_CMD_TIMEOUT)?;
        ensure!(
            out.contains("memhog: ok"),
            "{driver}: THP workload data lost: {out}"
        );
        // A new THP workload after the deflate.
        vm.hold_memhog("-m 256 -H -s 12", DEFAULT_CMD_TIMEOUT)?;
        let after = anon_huge(&mut vm)?;
        vm.release_memhog(DEFAULT_CMD_TIMEOUT)?;
        let line = format!(
            "{driver}: AnonHugePages {} before, {} inflated (40 % in {}), deflated in {}; a new \
             256 MiB workload then gets {}",
            format_bytes(before),
            format_bytes(during),
            secs(t_in),
            secs(t_out),
            format_bytes(after)
        );
        vm.note(&line);
        writeln!(report, "  {line}")?;
        ensure!(
            before >= 64 * MIB,
            "{driver}: the THP workload got only {} of huge pages to begin with",
            format_bytes(before)
        );
        ensure!(
            after >= before / 2,
            "{driver}: after deflating, a new THP workload got {} of huge pages, the first {}",
            format_bytes(after),
            format_bytes(before)
        );
        after_by_driver.push(after);
        unload(&mut vm, driver)?;
    }
    vm.note(&format!("transparent huge pages, C and ours:\n{report}"));
    ensure!(
        after_by_driver[1] as f64 >= after_by_driver[0] as f64 * 0.9,
        "after deflating, the guest gets {} of huge pages with ours, {} with C",
        format_bytes(after_by_driver[1]),
        format_bytes(after_by_driver[0])
    );
    vm.shutdown()
}
