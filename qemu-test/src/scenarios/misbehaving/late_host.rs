//! A host that refuses buffers (a device broken before the driver sends
//! anything) or returns them late (the OOM notifier against a slow host).

use super::*;

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

// The OOM notifier against a slow host.

/// How late the fake host returns each inflate and deflate buffer: below
/// the notifier's patience for the host (1 s, past which ours marks the
/// device unresponsive), and long enough that a deflate round of ours (64
/// buffers, 16 in flight: four waits) holds the balloon lock about 2 s, so
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
/// the workload ends (OOM-killed once the balloon is empty), the longest
/// notifier call (`oom_notify_max_ns` in debugfs) stays within
/// [`OOM_NOTIFY_LIMIT`], and its task never took the balloon lock blocking
/// (`oom_notify_blocking_locks` is 0). C: the workload's duration and OOM
/// kills are recorded.
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
        let pages = field("oom_notify_pages")?;
        let waits = field("oom_notify_blocking_locks")?;
        vm.note(&format!(
            "ours: {calls} OOM notifier calls, the longest {max:.2?} (limit {OOM_NOTIFY_LIMIT:?}), \
             {pages} balloon pages deflated by them, {waits} blocking balloon-lock takes on \
             the notifier's task"
        ));
        ensure!(
            calls >= 1,
            "the OOM notifier never ran: the scenario did not happen ({killed} OOM kills)"
        );
        // Deterministic where the timing is not: a blocking lock on the
        // notifier's task is a wait behind any size round that holds the
        // lock across a host wait, whether or not one did this time (the
        // notifier mostly gives up on the lock here: `deflate_on_oom_on`
        // checks the same with calls that deflate).
        ensure!(
            waits == 0,
            "the OOM notifier took the balloon lock blocking {waits} time(s): it can wait \
             behind a size round for as long as the host takes, holding oom_lock"
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
