//! A running test guest: boot, guest commands, balloon control through QMP,
//! statistics, host-side measurements, waiting helpers and teardown.
//! Dropping a [`Vm`] always kills and reaps its QEMU.

use crate::rig::accel::{self, Accel};
use crate::rig::agent::{Agent, CmdOutput};
use crate::rig::config::{scaled, GuestImage, VmConfig};
use crate::rig::console::{Capture, SharedLog};
use crate::rig::qemu::{self, QemuSpec, Serial};
use crate::rig::qmp::QmpClient;
use crate::rig::stats;
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod balloon;
pub use balloon::rs_counter;

/// Printed by the guest's init once the agent is started.
pub const READY_MARKER: &str = "BALLOON-GUEST-READY";
/// Printed by the guest's init when loading the driver failed.
pub const DRIVER_FAILED_MARKER: &str = "BALLOON-DRIVER-FAILED";
/// Default timeout of [`Vm::run`].
pub const DEFAULT_CMD_TIMEOUT: Duration = Duration::from_secs(120);
/// QOM path of the balloon device.
pub const BALLOON_QOM_PATH: &str = "/machine/peripheral/balloon0";
/// Console lines included in error messages.
const DIAG_LINES: usize = 40;

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

/// The per-test log directory: `$BALLOON_LOG_DIR`, else
/// `<workspace>/target/qemu-logs`.
pub fn log_dir() -> PathBuf {
    match std::env::var_os("BALLOON_LOG_DIR").filter(|d| !d.is_empty()) {
        Some(d) => d.into(),
        None => {
            let pkg = Path::new(env!("CARGO_MANIFEST_DIR"));
            pkg.parent().unwrap_or(pkg).join("target/qemu-logs")
        }
    }
}

/// Result of one poll in [`Vm::wait_until`]: the observed value, and
/// whether it is the one waited for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait<T> {
    /// Condition met: stop waiting and return this value.
    Done(T),
    /// Not yet; this is what was observed.
    Pending(T),
}

impl<T> Wait<T> {
    /// `Done(value)` if `done`, else `Pending(value)`.
    pub fn when(done: bool, value: T) -> Wait<T> {
        if done {
            Wait::Done(value)
        } else {
            Wait::Pending(value)
        }
    }
}

/// The QEMU process and its captured output; killed and reaped on drop.
struct Proc {
    child: Child,
    status: Option<ExitStatus>,
    stdin: Option<ChildStdin>,
    console: Capture,
    stderr: Capture,
    log: SharedLog,
    log_path: PathBuf,
}

impl Proc {
    /// Error if QEMU has exited (with its status and output).
    fn check_alive(&mut self) -> Result<()> {
        if self.status.is_none() {
            if let Some(st) = self.child.try_wait()? {
                self.status = Some(st);
            }
        }
        match self.status {
            None => Ok(()),
            Some(st) => {
                // Let the reader threads catch the last words (panic trace).
                let t = Instant::now();
                while !(self.console.closed() && self.stderr.closed())
                    && t.elapsed() < Duration::from_secs(2)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(anyhow!("QEMU exited unexpectedly ({st}){}", self.diag()))
            }
        }
    }

    /// Diagnostics for error messages: log file, console tail, QEMU stderr.
    fn diag(&self) -> String {
        let mut s = format!(
            "\n--- console, last {DIAG_LINES} lines (full log: {}) ---\n{}",
            self.log_path.display(),
            self.console.tail(DIAG_LINES)
        );
        let err = self.stderr.tail(20);
        if !err.trim().is_empty() {
            s.push_str("\n--- QEMU stderr ---\n");
            s.push_str(&err);
        }
        s.push_str("\n---");
        s
    }

    fn log_line(&self, line: &str) {
        if let Ok(mut f) = self.log.lock() {
            let _ = writeln!(f, "# qemu-test: {line}");
        }
    }

    /// Waits up to `timeout` for QEMU to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.status.is_none() {
                if let Ok(Some(st)) = self.child.try_wait() {
                    self.status = Some(st);
                }
            }
            if self.status.is_some() || Instant::now() >= deadline {
                return self.status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A booted guest. See the crate documentation.
pub struct Vm {
    // Field order = drop order: sockets first, then QEMU, then its files.
    qmp: QmpClient,
    agent: Agent,
    proc: Proc,
    cfg: VmConfig,
    image: GuestImage,
    accel: Accel,
    boot_time: Duration,
    _dir: tempfile::TempDir,
}

impl Vm {
    /// Boots a guest with the kernel and initramfs from the environment
    /// (`BALLOON_KDIR`, `BALLOON_INITRAMFS`) and waits until its agent
    /// answers and the configured driver (if any) is bound to the balloon.
    pub fn boot(cfg: VmConfig) -> Result<Vm> {
        let image = GuestImage::from_env()?;
        Self::boot_with_image(cfg, image)
    }

    /// [`Vm::boot`] with an explicit guest image.
    pub fn boot_with_image(cfg: VmConfig, image: GuestImage) -> Result<Vm> {
        let accel = match cfg.accel {
            Some(a) => a,
            None => accel::process_accel(&|| probe_kvm(&image))?,
        };
        if let Some(d) = cfg.driver {
            let ko = format!("{}.ko", d.module_name());
            if !crate::rig::cpio::contains_file(&image.initramfs, &ko)? {
                bail!(
                    "{ko} is not in the initramfs {}: build the module (`make`) and the \
                     initramfs (`make initramfs`), or run `make test`",
                    image.initramfs.display()
                );
            }
        }
        let name = cfg.name.clone();
        Self::boot_inner(cfg, image, accel).with_context(|| format!("booting VM {name}"))
    }

    fn boot_inner(cfg: VmConfig, image: GuestImage, accel: Accel) -> Result<Vm> {
        let t0 = Instant::now();
        let boot_timeout = scaled(cfg.boot_timeout) * image.format.boot_slowdown();
        let deadline = t0 + boot_timeout;
        let dir = tempfile::Builder::new()
            .prefix("balloon-vm-")
            .tempdir()
            .context("creating the VM's temporary directory")?;
        let spec = QemuSpec {
            cfg: &cfg,
            image: &image,
            accel,
            qmp_socket: dir.path().join("qmp.sock"),
            agent_socket: dir.path().join("agent.sock"),
            serial: Serial::Pipe,
            cmdline_extra: Vec::new(),
            disk_dir: dir.path().to_path_buf(),
        };
        qemu::create_disks(&spec)?;
        let logdir = log_dir();
        std::fs::create_dir_all(&logdir)
            .with_context(|| format!("creating log directory {}", logdir.display()))?;
        let log_path = logdir.join(format!("{}.log", cfg.name));
        let mut logf = File::create(&log_path)
            .with_context(|| format!("creating log file {}", log_path.display()))?;
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        writeln!(
            logf,
            "# qemu-test: VM {} (accel {accel}, kernel {}, started at unix time {})\n\
             # qemu-test: {}",
            cfg.name,
            image.format.name(),
            started.as_secs(),
            qemu::display_command(&spec)
        )?;
        let log: SharedLog = Arc::new(Mutex::new(logf));

        use std::os::unix::process::CommandExt;
        let mut cmd = qemu::command(&spec);
        let parent = std::process::id() as std::ffi::c_int;
        // SAFETY: the hook makes system calls only (prctl, getppid) and does
        // not allocate, which is safe between fork and exec.
        unsafe {
            cmd.pre_exec(move || crate::rig::hostmem::die_with_parent(parent));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (is qemu-system-x86 installed?)",
                    qemu::qemu_binary().to_string_lossy()
                )
            })?;
        let stdout = child.stdout.take().context("no QEMU stdout")?;
        let stderr = child.stderr.take().context("no QEMU stderr")?;
        let stdin = child.stdin.take();
        let (console, _) = Capture::spawn(stdout, log.clone(), "");
        let (stderr, _) = Capture::spawn(stderr, log.clone(), "[qemu stderr] ");
        let mut proc = Proc {
            child,
            status: None,
            stdin,
            console,
            stderr,
            log,
            log_path,
        };

        // QMP: QEMU listens as soon as it has parsed its arguments.
        let qmp = QmpClient::connect_retry(
            &spec.qmp_socket,
            deadline.min(Instant::now() + Duration::from_secs(20)),
            Duration::from_secs(60),
            || proc.check_alive(),
        )
        .map_err(|e| anyhow!("{e:#}{}", proc.diag()))?;

        // Wait for init's marker, failing early on a panic or a driver
        // that did not load. A resumed VM booted long ago: wait until it
        // runs instead.
        let failures = ["Kernel panic", DRIVER_FAILED_MARKER];
        let mut needles = vec![READY_MARKER];
        needles.extend(failures);
        let mut qmp = qmp;
        while cfg.incoming.is_some() {
            let status = qmp.execute(&qapi::qmp::query_status {})?;
            if status.status == qapi::qmp::RunState::running {
                break;
            }
            if matches!(
                status.status,
                qapi::qmp::RunState::inmigrate | qapi::qmp::RunState::prelaunch
            ) && Instant::now() < deadline
            {
                proc.check_alive()?;
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            bail!(
                "the VM did not resume from {:?}: status {:?}{}",
                cfg.incoming,
                status.status,
                proc.diag()
            );
        }
        while cfg.incoming.is_none() {
            if let Some(line) = proc
                .console
                .wait_for(0, &needles, Duration::from_millis(200))
            {
                if line.contains(READY_MARKER) {
                    break;
                }
                // Give the console a moment to show the rest.
                std::thread::sleep(Duration::from_millis(500));
                bail!("guest boot failed: {line}{}", proc.diag());
            }
            proc.check_alive()?;
            // QEMU keeps running (paused) after a KVM internal error.
            if proc.stderr.contains("internal error") {
                bail!(
                    "QEMU reported an internal error (accel {accel}){}",
                    proc.diag()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "guest did not print {READY_MARKER} within {:?} (accel {accel}){}",
                    boot_timeout,
                    proc.diag()
                );
            }
        }

        let agent =
            Agent::connect(&spec.agent_socket).map_err(|e| anyhow!("{e:#}{}", proc.diag()))?;
        let mut vm = Vm {
            qmp,
            agent,
            proc,
            cfg,
            image,
            accel,
            boot_time: Duration::ZERO,
            _dir: dir,
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(10));
        let hello = vm
            .run_timeout("echo agent-ok", left)
            .context("agent handshake")?;
        if hello.output.trim() != "agent-ok" || hello.code != 0 {
            bail!(
                "agent handshake: unexpected reply {hello:?}{}",
                vm.proc.diag()
            );
        }
        vm.check_profile()?;
        if let Some(d) = vm.cfg.driver {
            let bound = vm.balloon_driver()?;
            if bound.as_deref() != Some(d.module_name()) {
                bail!(
                    "the balloon device is bound to {bound:?}, expected {}{}",
                    d.module_name(),
                    vm.proc.diag()
                );
            }
        }
        vm.boot_time = t0.elapsed();
        vm.proc.log_line(&format!("booted in {:.2?}", vm.boot_time));
        Ok(vm)
    }

    /// Checks that the guest has what its configuration promises: NUMA
    /// nodes, the data disk mounted, swap on.
    fn check_profile(&mut self) -> Result<()> {
        let nodes = self.cfg.numa_nodes.max(1);
        let cfg = &self.cfg;
        let mut checks = vec![format!(
            "n=$(ls -d /sys/devices/system/node/node* | wc -l); [ $n = {nodes} ] || \
             {{ echo \"$n NUMA nodes, expected {nodes}\"; exit 1; }}"
        )];
        if cfg.data_disk_mib.is_some() {
            checks.push(format!(
                "grep -q ' {} ext4 ' /proc/mounts || {{ echo 'data disk not mounted'; exit 1; }}",
                crate::rig::config::DATA_MOUNT
            ));
        }
        if cfg.swap_mib.is_some() {
            checks
                .push("grep -q '^/dev/vd' /proc/swaps || { echo 'no swap'; exit 1; }".to_string());
        }
        let out = self.run(&checks.join("\n"))?;
        if out.code != 0 {
            bail!(
                "the guest lacks what its configuration asks for: {}{}",
                out.output.trim(),
                self.proc.diag()
            );
        }
        Ok(())
    }

    /// The configuration this VM was booted with.
    pub fn config(&self) -> &VmConfig {
        &self.cfg
    }

    /// The kernel and initramfs it booted.
    pub fn image(&self) -> &GuestImage {
        &self.image
    }

    /// The accelerator in use.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// Time from spawning QEMU to a working agent.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The console log file.
    pub fn log_path(&self) -> &Path {
        &self.proc.log_path
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// Guest RAM size in bytes (as configured).
    pub fn ram_bytes(&self) -> u64 {
        self.cfg.memory_bytes()
    }

    /// Error if QEMU has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.proc.check_alive()
    }

    /// Appends `err` with the console tail and QEMU's stderr.
    pub fn with_diag(&self, err: anyhow::Error) -> anyhow::Error {
        anyhow!("{err:#}{}", self.proc.diag())
    }

    /// Writes a comment line to the VM's log file (to correlate test steps
    /// with kernel messages).
    pub fn log(&self, line: &str) {
        self.proc.log_line(line);
    }

    /// Logs a measurement: to the log file and to stderr (shown by the test
    /// runner for failing tests, or with `--nocapture`).
    pub fn note(&self, line: &str) {
        self.proc.log_line(line);
        eprintln!("[{}] {line}", self.cfg.name);
    }

    // ---- guest commands -------------------------------------------------

    /// Runs a shell command in the guest ([`DEFAULT_CMD_TIMEOUT`]).
    pub fn run(&mut self, cmd: &str) -> Result<CmdOutput> {
        self.run_timeout(cmd, DEFAULT_CMD_TIMEOUT)
    }

    /// Runs a shell command in the guest with a timeout (scaled for the
    /// tier, [`scaled`]).
    pub fn run_timeout(&mut self, cmd: &str, timeout: Duration) -> Result<CmdOutput> {
        let timeout = scaled(timeout);
        let deadline = Instant::now() + timeout;
        let Vm { agent, proc, .. } = self;
        let r = agent
            .send(cmd)
            .and_then(|id| agent.recv(&id, deadline, || proc.check_alive()));
        match r {
            Ok(Some(out)) => Ok(out),
            Ok(None) => Err(anyhow!(
                "guest command {cmd:?} timed out after {timeout:?}{}",
                proc.diag()
            )),
            Err(e) => {
                // A broken connection usually means QEMU is gone: say so.
                proc.wait_exit(Duration::from_secs(2));
                proc.check_alive()
                    .with_context(|| format!("guest command {cmd:?}: {e:#}"))?;
                Err(anyhow!("guest command {cmd:?}: {e:#}{}", proc.diag()))
            }
        }
    }

    /// Starts `memhog <args>` in the background and returns once it has
    /// touched all its memory; it holds the memory until
    /// [`Vm::release_memhog`]. Its output goes to `/tmp/hog.out`.
    pub fn hold_memhog(&mut self, args: &str, timeout: Duration) -> Result<()> {
        self.run_ok_timeout(
            &format!(
                "rm -f /tmp/hog.ready /tmp/hog.go; \
                 (memhog {args} -R /tmp/hog.ready -G /tmp/hog.go > /tmp/hog.out 2>&1 &); \
                 while [ ! -e /tmp/hog.ready ]; do sleep 0.1; done"
            ),
            timeout,
        )?;
        Ok(())
    }

    /// Lets the memhog of [`Vm::hold_memhog`] free its memory and exit;
    /// returns its output.
    pub fn release_memhog(&mut self, timeout: Duration) -> Result<String> {
        self.run_ok_timeout(
            "touch /tmp/hog.go; while pidof memhog > /dev/null; do sleep 0.1; done; \
             cat /tmp/hog.out",
            timeout,
        )
    }

    /// Runs a command that must succeed; returns its output. A non-zero
    /// exit is an error carrying the output.
    pub fn run_ok(&mut self, cmd: &str) -> Result<String> {
        self.run_ok_timeout(cmd, DEFAULT_CMD_TIMEOUT)
    }

    /// [`Vm::run_ok`] with a timeout (scaled for the tier, [`scaled`]).
    pub fn run_ok_timeout(&mut self, cmd: &str, timeout: Duration) -> Result<String> {
        let out = self.run_timeout(cmd, timeout)?;
        if out.code != 0 {
            bail!(
                "guest command {cmd:?} exited with {}; output:\n{}",
                out.code,
                out.output
            );
        }
        Ok(out.output)
    }

    /// The guest's `/proc/meminfo` in bytes.
    pub fn meminfo(&mut self) -> Result<BTreeMap<String, u64>> {
        let text = self.run_ok("cat /proc/meminfo")?;
        stats::parse_meminfo(&text)
    }

    /// One `/proc/meminfo` field in bytes (e.g. `MemTotal`).
    pub fn meminfo_field(&mut self, field: &str) -> Result<u64> {
        let m = self.meminfo()?;
        m.get(field)
            .copied()
            .with_context(|| format!("no {field} in /proc/meminfo"))
    }

    /// The guest kernel log (`dmesg`).
    pub fn dmesg(&mut self) -> Result<String> {
        self.run_ok("dmesg")
    }

    /// The driver module bound to the balloon device (virtio device id 5),
    /// or `None` if the device has no driver.
    pub fn balloon_driver(&mut self) -> Result<Option<String>> {
        let out = self.run_ok(
            "for d in /sys/bus/virtio/devices/*; do \
               [ \"$(cat $d/device)\" = 0x0005 ] || continue; \
               if [ -e $d/driver/module ]; then basename \"$(readlink $d/driver/module)\"; \
               elif [ -e $d/driver ]; then basename \"$(readlink $d/driver)\"; \
               else echo '<unbound>'; fi; \
             done",
        )?;
        match out.trim() {
            "" => bail!("the guest has no virtio balloon device"),
            "<unbound>" => Ok(None),
            name => Ok(Some(name.to_string())),
        }
    }

    // ---- console ----------------------------------------------------------

    /// The last `n` console lines.
    pub fn console_tail(&self, n: usize) -> String {
        self.proc.console.tail(n)
    }

    /// A mark (line count) for [`Vm::wait_console`].
    pub fn console_mark(&self) -> usize {
        self.proc.console.mark()
    }

    /// Waits for a console line after `mark` containing `needle`.
    pub fn wait_console(&mut self, mark: usize, needle: &str, timeout: Duration) -> Result<String> {
        let timeout = scaled(timeout);
        match self.proc.console.wait_for(mark, &[needle], timeout) {
            Some(l) => Ok(l),
            None => {
                self.check_alive()?;
                Err(anyhow!(
                    "no console line containing {needle:?} within {timeout:?}{}",
                    self.proc.diag()
                ))
            }
        }
    }

    /// Console lines after `mark` containing `needle`.
    pub fn console_find(&self, mark: usize, needle: &str) -> Vec<String> {
        self.proc.console.find_since(mark, needle)
    }

    /// Types `bytes` on the serial console (the guest's ttyS0 input).
    pub fn console_input(&mut self, bytes: &[u8]) -> Result<()> {
        let stdin = self.proc.stdin.as_mut().context("QEMU stdin is closed")?;
        stdin.write_all(bytes)?;
        stdin.flush()?;
        Ok(())
    }

    /// Polls `check` every `poll` until it returns [`Wait::Done`] or
    /// `timeout` (scaled for the tier, [`scaled`]) passes. The timeout
    /// error names `description`, the last observed value and the console
    /// tail. Errors of `check`, and QEMU exiting, end the wait at once.
    pub fn wait_until<T: Debug>(
        &mut self,
        description: &str,
        timeout: Duration,
        poll: Duration,
        mut check: impl FnMut(&mut Vm) -> Result<Wait<T>>,
    ) -> Result<T> {
        let timeout = scaled(timeout);
        let t0 = Instant::now();
        loop {
            self.check_alive()?;
            let last = match check(self).with_context(|| format!("waiting for {description}"))? {
                Wait::Done(v) => return Ok(v),
                Wait::Pending(v) => v,
            };
            if t0.elapsed() >= timeout {
                bail!(
                    "timed out after {timeout:?} waiting for {description}; last observed: {last:?}{}",
                    self.proc.diag()
                );
            }
            std::thread::sleep(poll);
        }
    }

    // ---- teardown ------------------------------------------------------------

    /// Connects to the guest agent again (see [`Agent::reconnect`]) and
    /// checks that it answers.
    pub fn reconnect_agent(&mut self) -> Result<()> {
        let path = self._dir.path().join("agent.sock");
        self.agent.reconnect(&path)?;
        let hello = self.run_timeout("echo agent-ok", Duration::from_secs(30))?;
        ensure!(
            hello.output.trim() == "agent-ok",
            "agent did not answer after reconnecting: {hello:?}"
        );
        Ok(())
    }

    /// Console lines from absolute line number `mark` on.
    pub fn console_since(&self, mark: usize) -> Vec<String> {
        self.proc.console.find_since(mark, "")
    }

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

/// Boots a throw-away guest with KVM; `Ok` if it reaches
/// `BALLOON-GUEST-READY` within [`accel::PROBE_TIMEOUT`] (the `auto`
/// accelerator's probe).
fn probe_kvm(image: &GuestImage) -> Result<()> {
    let cfg = VmConfig::new("accel-probe")
        .accel(Accel::Kvm)
        .memory_mib(256)
        .smp(1)
        .boot_timeout(accel::PROBE_TIMEOUT);
    let vm = Vm::boot_with_image(cfg, image.clone())?;
    vm.shutdown()
}
