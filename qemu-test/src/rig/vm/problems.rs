//! What the guest kernel reported: the console lines that fail a test
//! (warnings, BUGs, oopses, hung tasks, ...), and how a VM ends (shut down,
//! or abandoned) with them checked.

use super::*;

/// Console markers of kernel problems a test must not leave behind.
/// Lockdep (`WARNING: possible circular locking dependency`), KASAN
/// (`BUG: KASAN:`), DEBUG_ATOMIC_SLEEP (`BUG: sleeping function`),
/// DEBUG_OBJECTS (`ODEBUG:` with a WARNING) and DEBUG_LIST reports are
/// caught by the first markers; kmemleak is scanned by the tests that check
/// for leaks (its automatic scan is off in the debug tier).
pub const KERNEL_PROBLEMS: [&str; 12] = [
    "WARNING:",
    "BUG:",
    "kernel BUG",
    "Oops",
    "general protection fault",
    "Kernel panic",
    "UBSAN:",
    "not ok ",
    "blocked for more than",
    "soft lockup",
    "detected stall",
    "panicked at",
];

/// Appends the kernel problems of a C-driver VM to
/// `$BALLOON_LOG_DIR/c-driver-reports.txt` and says so on stderr.
fn record_c_driver_reports(test: &str, log: &Path, problems: &[String]) {
    let path = log_dir().join("c-driver-reports.txt");
    eprintln!(
        "[{test}] the C driver's guest reported {} kernel problem line(s), recorded in {} \
         (full log {})",
        problems.len(),
        path.display(),
        log.display()
    );
    let text = format!("== {test} ({})\n{}\n", log.display(), problems.join("\n"));
    if let Err(e) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
    {
        eprintln!("[{test}] cannot write {}: {e}", path.display());
    }
}

impl Vm {
    /// Kernel console lines reporting a problem: warnings, BUGs, oopses,
    /// panics, sanitizer reports (OOM-killer reports are not problems).
    pub fn kernel_problems(&self) -> Vec<String> {
        KERNEL_PROBLEMS
            .iter()
            .flat_map(|p| self.proc.console.find_since(0, p))
            .collect()
    }

    /// Whether kernel problems in this VM are recorded rather than failed
    /// on: the C driver's on the debug tier, where the tests' purpose is
    /// our driver's reports (issue: "reports from the C driver are recorded
    /// beside ours, not hidden"), and where a scenario expects them
    /// ([`VmConfig::c_problems_expected`]).
    fn records_problems(&self) -> bool {
        self.cfg.subject == Some(crate::Driver::C)
            && (self.cfg.c_problems_expected
                || crate::rig::config::Tier::current().ok()
                    == Some(crate::rig::config::Tier::Debug))
    }

    /// Ends a VM the test leaves without a clean shutdown (the C driver left
    /// stuck by a device that never answers): QEMU is killed, and the
    /// kernel's reports are still checked as [`Vm::shutdown`] does —
    /// recorded for the C driver on the debug tier, an error otherwise.
    pub fn abandon(mut self) -> Result<()> {
        self.proc.log_line("abandoned: killed without a shutdown");
        let checked = self.check_kernel_problems();
        self.proc.kill();
        checked
    }

    /// The kernel's reports ([`Vm::kernel_problems`]) once the VM is done:
    /// recorded for the C driver on the debug tier, an error otherwise.
    fn check_kernel_problems(&self) -> Result<()> {
        let problems = self.kernel_problems();
        if problems.is_empty() {
            return Ok(());
        }
        if self.records_problems() {
            record_c_driver_reports(&self.cfg.name, self.log_path(), &problems);
            return Ok(());
        }
        bail!(
            "the guest kernel reported problems (see {}):\n{}",
            self.log_path().display(),
            problems.join("\n")
        )
    }

    /// Powers the guest off (`reboot -f`; QEMU runs with `-no-reboot`) and
    /// waits for QEMU to exit; after 30 s it is killed and this is an error.
    /// Fails if the kernel reported a problem ([`Vm::kernel_problems`]).
    pub fn shutdown(mut self) -> Result<()> {
        self.proc.log_line("shutdown");
        let sent = self.agent.send("sync; reboot -f");
        if self
            .proc
            .wait_exit(scaled(Duration::from_secs(30)))
            .is_some()
        {
            return self.check_kernel_problems();
        }
        let _ = self.qmp.execute(&qapi::qmp::quit {});
        let exited = self.proc.wait_exit(Duration::from_secs(5)).is_some();
        let diag = self.proc.diag();
        self.proc.kill();
        if exited {
            bail!("the guest did not power off with `reboot -f` ({sent:?}); QMP quit stopped QEMU{diag}")
        }
        bail!("QEMU did not exit after `reboot -f` and QMP quit: killed{diag}")
    }
}
