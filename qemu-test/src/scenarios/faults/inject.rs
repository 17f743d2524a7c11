//! The fault scenarios, one per context the driver allocates in, and the
//! recovery every one of them ends with.

use super::*;

/// Every allocation of probe in turn fails (systematic): bind, unbind.
pub(super) fn inject_probe(vm: &mut Vm, s: &Setup) -> Result<Outcome> {
    let Setup {
        driver,
        ref dev,
        text,
        ..
    } = *s;
    let module = driver.module_name();
    let mut out = Outcome::default();
    vm.run_ok(&format!(
        "echo {dev} > {drv}/unbind",
        drv = driver_dir(driver)
    ))?;
    arm(vm, text, 0)?;
    let lines = systematic(vm, &probe_loop(driver, dev))?;
    disarm(vm)?;
    out.tally(&lines)?;
    ensure!(
        out.injected > 0,
        "no fault was injected into probe: the aim missed the driver"
    );
    ensure!(
        bound(vm, driver, dev)?,
        "{module} not bound after the last bind"
    );
    Ok(out)
}

/// Every allocation of remove in turn fails (systematic), with a small
/// balloon to give back each time.
pub(super) fn inject_remove(vm: &mut Vm, s: &Setup) -> Result<Outcome> {
    let Setup {
        driver,
        ref dev,
        text,
        ram,
        total0,
        ..
    } = *s;
    let mut out = Outcome::default();
    // A small balloon for remove to give back each time.
    let small = target_for(ram, 5);
    vm.set_balloon_target_bytes(small)?;
    vm.wait_balloon_actual(small, Duration::from_secs(60))?;
    arm(vm, text, 0)?;
    let lines = systematic(vm, &remove_loop(driver, dev, total0, (ram - small) >> 10))?;
    out.tally(&lines)?;
    // Remove may allocate nothing (ours does not: its buffers
    // exist from probe on). Prove that the aim reaches the driver:
    // the first aimed allocation of a bind must fail it.
    let drv = driver_dir(driver);
    let aim = vm.run_ok(&format!(
        "{FAULT_FN}; fault 1 'echo {dev} > {drv}/bind'; \
         [ -e {drv}/{dev} ] || echo {dev} > {drv}/bind"
    ))?;
    disarm(vm)?;
    vm.note(&format!(
        "{driver} remove: {} aimed allocations; the aim checked on a bind: {}",
        out.sites,
        aim.trim()
    ));
    ensure!(
        aim.contains("fired=1"),
        "the aim missed the driver: a bind with its first aimed allocation failing \
         printed {aim:?}"
    );
    Ok(out)
}

/// 30 % of the size work's allocations fail while it inflates half of
/// RAM, then every one for 20 s ("Out of puff" and the backoff).
pub(super) fn inject_size_work(vm: &mut Vm, s: &Setup) -> Result<Outcome> {
    let Setup {
        driver, text, ram, ..
    } = *s;
    let mut out = Outcome::default();
    arm(vm, text, 30)?;
    let half = target_for(ram, 50);
    vm.set_balloon_target_bytes(half)?;
    // Progress under faults is not required, only survival.
    std::thread::sleep(Duration::from_secs(20));
    let under = vm.query_balloon_actual()?;
    vm.set_balloon_target_bytes(ram)?;
    std::thread::sleep(Duration::from_secs(10));
    vm.note(&format!(
        "{driver}: with 30% of its allocations failing, actual reached {} of {}",
        format_bytes(under),
        format_bytes(half)
    ));
    out_of_puff(vm, driver, text, half)?;
    vm.set_balloon_target_bytes(ram)?;
    std::thread::sleep(Duration::from_secs(10));
    out.injected = disarm(vm)?;
    ensure!(out.injected > 0, "no fault was injected into the size work");
    Ok(out)
}

/// Every allocation of the statistics request fails for 10 s.
pub(super) fn inject_stats(vm: &mut Vm, s: &Setup) -> Result<Outcome> {
    let Setup { text, ram, .. } = *s;
    let mut out = Outcome::default();
    vm.set_balloon_target_bytes(target_for(ram, 10))?;
    arm(vm, text, 100)?;
    vm.enable_stats_polling(1)?;
    std::thread::sleep(Duration::from_secs(10));
    out.injected = disarm(vm)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    vm.wait_stats_after(now, Duration::from_secs(30))
        .context("statistics did not resume after the faults stopped")?;
    Ok(out)
}

/// Half of the OOM path's allocations fail while a workload needs the
/// balloon deflated.
pub(super) fn inject_oom(vm: &mut Vm, s: &Setup) -> Result<Outcome> {
    let Setup {
        driver, text, ram, ..
    } = *s;
    let mut out = Outcome::default();
    let target = target_for(ram, 50);
    vm.set_balloon_target_bytes(target)?;
    vm.wait_balloon_actual(target, Duration::from_secs(120))?;
    // What the guest has left and half the balloon on top: the OOM
    // notifier must deflate.
    let avail = vm.meminfo_field("MemAvailable")?;
    let hog_mib = (avail + (ram - target) / 2) / crate::rig::units::MIB;
    arm(vm, text, 50)?;
    let hog = vm.run_timeout(
        &format!("memhog -m {hog_mib} 2>&1"),
        Duration::from_secs(300),
    )?;
    out.injected = disarm(vm)?;
    vm.note(&format!(
        "{driver}: memhog under OOM with faults exited {}: {}",
        hog.code,
        hog.output.trim()
    ));
    ensure!(
        hog.code == 0,
        "the workload was killed (exit {}) although the balloon could deflate on OOM",
        hog.code
    );
    let after = vm.query_balloon_actual()?;
    ensure!(
        after > target,
        "the OOM notifier deflated nothing (actual {})",
        format_bytes(after)
    );
    Ok(out)
}

/// 30 % of free page hinting's allocations fail during a migration.
pub(super) fn inject_hinting(vm: &mut Vm, s: &Setup) -> Result<Outcome> {
    let Setup {
        driver, text, ram, ..
    } = *s;
    let mut out = Outcome::default();
    vm.set_balloon_target_bytes(target_for(ram, 10))?;
    // Memory written and freed again: what hinting reports. (Not
    // 256 MiB from /dev/urandom: generating it under TCG on the debug
    // kernel took minutes.)
    vm.run_ok("memhog -m 256 >/dev/null")?;
    arm(vm, text, 30)?;
    vm.start_discarded_migration(64 << 20)?;
    std::thread::sleep(Duration::from_secs(8));
    let ended = vm.cancel_migration(Duration::from_millis(100))?;
    out.injected = disarm(vm)?;
    vm.note(&format!("{driver} hinting: the migration ended {ended:?}"));
    Ok(out)
}

/// After the faults: the driver follows targets again, and after `rmmod`
/// MemTotal and QEMU's `actual` are exact and kmemleak finds nothing.
pub(super) fn recovers(mut vm: Vm, s: &Setup) -> Result<()> {
    let Setup {
        driver,
        ram,
        total0,
        ..
    } = *s;
    let module = driver.module_name();
    // Recovery: the driver follows targets again.
    let target = target_for(ram, 30);
    vm.set_balloon_target_bytes(target)?;
    vm.wait_balloon_actual(target, Duration::from_secs(120))
        .context("the driver did not recover after the faults stopped")?;
    vm.set_balloon_target_bytes(ram)?;
    vm.wait_balloon_actual(ram, Duration::from_secs(120))?;

    vm.run_ok(&format!("rmmod {module}"))?;
    let total = vm.meminfo_field("MemTotal")?;
    ensure!(
        total == total0,
        "after rmmod MemTotal is {} where it was {} before the driver loaded",
        format_bytes(total),
        format_bytes(total0)
    );
    let actual = vm.query_balloon_actual()?;
    ensure!(
        actual == ram,
        "after rmmod QEMU's actual is {} of {}",
        format_bytes(actual),
        format_bytes(ram)
    );
    let leaks = kmemleak_report(&mut vm)?;
    ensure!(
        leaks.trim().is_empty(),
        "kmemleak reports after rmmod:\n{leaks}"
    );
    vm.shutdown()
}
