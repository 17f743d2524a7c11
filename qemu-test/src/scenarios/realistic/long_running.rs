//! A long-running guest: a mixed workload (page cache reads, anonymous
//! allocations, forks) while the host keeps moving the target, C and ours
//! in the same boot.

use super::*;

/// Targets the host sets in [`long_running`].
pub const LONG_RUN_TARGETS: usize = 30;
/// How long the mixed workload of [`long_running`] runs.
pub const LONG_RUN: Duration = Duration::from_secs(60);

/// Starts, in the background, [`LONG_RUN`] of page cache reads, 64 MiB
/// anonymous allocations (failures counted in `/tmp/long.fail`) and forks
/// (counted in `/tmp/long.forks`); `/tmp/long.done` marks the end.
fn start_mixed_workload(vm: &mut Vm) -> Result<()> {
    let secs_run = LONG_RUN.as_secs();
    vm.run_ok(&format!(
        "rm -f /tmp/long.*; \
         (end=$(( $(date +%s) + {secs_run} )); \
          (while [ $(date +%s) -lt $end ]; do cat {DATA_MOUNT}/sparse {DATA_MOUNT}/f1 > /dev/null; done) & \
          (while [ $(date +%s) -lt $end ]; do memhog -m 64 -t 2 > /dev/null || echo HOGFAIL >> /tmp/long.fail; done) & \
          (n=0; while [ $(date +%s) -lt $end ]; do for i in 1 2 3 4 5 6 7 8 9 10; do (true); done; n=$((n+10)); done; echo $n > /tmp/long.forks) & \
          wait; touch /tmp/long.done) > /dev/null 2>&1 &"
    ))?;
    Ok(())
}

/// Sets [`LONG_RUN_TARGETS`] targets spread over [`LONG_RUN`], balloons of
/// 0 to 60 % of `ram` in a scrambled order; returns the last.
fn walk_targets(vm: &mut Vm, ram: u64) -> Result<u64> {
    let step = LONG_RUN / LONG_RUN_TARGETS as u32;
    let mut last = ram;
    for i in 0..LONG_RUN_TARGETS as u64 {
        last = target_for(ram, (i * 37 + 11) % 61);
        vm.set_balloon_target_bytes(last)?;
        std::thread::sleep(step);
    }
    Ok(last)
}

/// A long-running guest: a mixed workload (file reads from ext4, anonymous
/// memory that is written and checked, forks) runs for a minute while the
/// host moves the target [`LONG_RUN_TARGETS`] times. Afterwards the
/// balloon matches the last target, and once deflated MemTotal is exact,
/// the balloon holds no page (`Balloon: 0 kB`), no OOM kill happened, and
/// after `rmmod` MemTotal is still exact. For ours, the debugfs counters
/// must show as many pages deflated as inflated.
pub fn long_running() -> Result<()> {
    let mut vm = Vm::boot(config("long-running"))?;
    let ram = vm.ram_bytes();
    vm.run_timeout(
        &format!(
            "dd if=/dev/urandom of={DATA_MOUNT}/f1 bs=1M count=64 2>/dev/null && \
             truncate -s 1G {DATA_MOUNT}/sparse && sync"
        ),
        Duration::from_secs(120),
    )?;
    let total0 = vm.meminfo_field("MemTotal")?;
    let mut report = String::new();
    for driver in Driver::ALL {
        load(&mut vm, driver)?;
        let kills = vmstat(&mut vm, "oom_kill")?;
        start_mixed_workload(&mut vm)?;
        let last = walk_targets(&mut vm, ram)?;
        vm.wait_balloon_actual(last, INFLATE_TIMEOUT)
            .with_context(|| format!("{driver}: the balloon did not settle at the last target"))?;
        vm.wait_until(
            "the workload to finish",
            Duration::from_secs(120),
            Duration::from_millis(500),
            |vm| {
                let done = vm.run("test -e /tmp/long.done")?.code == 0;
                Ok(Wait::when(done, ()))
            },
        )?;
        let fails = vm.run("cat /tmp/long.fail 2>/dev/null | wc -l")?;
        let forks = vm.run_ok("cat /tmp/long.forks")?;
        deflate_all(&mut vm)?;
        let total = vm.meminfo_field("MemTotal")?;
        // Fold the per-CPU differences of the vmstat counters (Balloon is
        // one) into the global ones first.
        vm.run_ok("echo 1 > /proc/sys/vm/stat_refresh")?;
        let ballooned = vm.meminfo_field("Balloon")?;
        let killed = vmstat(&mut vm, "oom_kill")? - kills;
        let counters = if driver == Driver::Rust {
            let c = vm.rs_counters()?;
            let (inflated, deflated) = (
                rs_counter(&c, "inflate_pages")?,
                rs_counter(&c, "deflate_pages")?,
            );
            ensure!(
                inflated == deflated,
                "ours inflated {inflated} pages and deflated {deflated}: pages leaked"
            );
            format!("; pages inflated {inflated} = deflated")
        } else {
            String::new()
        };
        unload(&mut vm, driver)?;
        let total_after_rmmod = vm.meminfo_field("MemTotal")?;
        let line = format!(
            "{driver}: {LONG_RUN_TARGETS} targets in {}; settled at {}; forks {}; workload \
             failures {}; OOM kills {killed}; after deflating MemTotal {} (boot {}), Balloon {}; \
             after rmmod MemTotal {}{counters}",
            secs(LONG_RUN),
            format_bytes(last),
            forks.trim(),
            fails.output.trim(),
            total,
            total0,
            format_bytes(ballooned),
            total_after_rmmod
        );
        vm.note(&line);
        writeln!(report, "  {line}")?;
        ensure!(
            total == total0 && total_after_rmmod == total0,
            "{driver}: MemTotal {total} after deflating, {total_after_rmmod} after rmmod, \
             {total0} at boot"
        );
        ensure!(
            ballooned == 0,
            "{driver}: {} still ballooned",
            format_bytes(ballooned)
        );
        ensure!(killed == 0, "{driver}: {killed} OOM kills");
        ensure!(
            fails.output.trim() == "0",
            "{driver}: the anonymous-memory workload failed {} times",
            fails.output.trim()
        );
    }
    vm.note(&format!("long-running guest, C and ours:\n{report}"));
    vm.shutdown()
}
