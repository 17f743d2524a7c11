//! A free page report the host keeps: `rmmod` and a system sleep test
//! while it does (issue 19, items 5 and 6).

use super::*;

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
    let pm = crate::scenarios::features::pm_test_suspend(
        &mut vm,
        "freezer",
        "freeze",
        Duration::from_secs(60),
    );
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
