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
mod guest;
mod problems;
mod proc;
pub use balloon::rs_counter;
pub use problems::KERNEL_PROBLEMS;
use proc::Proc;

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
    /// The guest's page size, once asked ([`Vm::guest_page_size`]).
    page_size: Option<u64>,
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
            None if !image.arch.kvm_possible() => accel::foreign_guest_accel(image.arch)?,
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
        let mut proc = Proc::spawn(&spec)?;

        // QMP: QEMU listens as soon as it has parsed its arguments.
        let mut qmp = QmpClient::connect_retry(
            &spec.qmp_socket,
            deadline.min(Instant::now() + Duration::from_secs(20)),
            Duration::from_secs(60),
            || proc.check_alive(),
        )
        .map_err(|e| anyhow!("{e:#}{}", proc.diag()))?;
        if cfg.incoming.is_some() {
            // A resumed VM booted long ago: wait until it runs instead.
            wait_resumed(&mut qmp, &mut proc, &cfg, deadline)?;
        } else {
            wait_ready(&mut proc, accel, deadline, boot_timeout)?;
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
            page_size: None,
            _dir: dir,
        };
        vm.handshake(deadline)?;
        vm.boot_time = t0.elapsed();
        vm.proc.log_line(&format!("booted in {:.2?}", vm.boot_time));
        Ok(vm)
    }

    /// The agent answers, the guest has what its configuration promises,
    /// and the balloon device is bound to the driver the guest loads.
    fn handshake(&mut self, deadline: Instant) -> Result<()> {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(10));
        let hello = self
            .run_timeout("echo agent-ok", left)
            .context("agent handshake")?;
        if hello.output.trim() != "agent-ok" || hello.code != 0 {
            bail!(
                "agent handshake: unexpected reply {hello:?}{}",
                self.proc.diag()
            );
        }
        self.check_profile()?;
        if let Some(d) = self.cfg.driver {
            let bound = self.balloon_driver()?;
            if bound.as_deref() != Some(d.module_name()) {
                bail!(
                    "the balloon device is bound to {bound:?}, expected {}{}",
                    d.module_name(),
                    self.proc.diag()
                );
            }
        }
        Ok(())
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
}

/// Waits until a VM resuming from a migration stream runs.
fn wait_resumed(
    qmp: &mut QmpClient,
    proc: &mut Proc,
    cfg: &VmConfig,
    deadline: Instant,
) -> Result<()> {
    loop {
        let status = qmp.execute(&qapi::qmp::query_status {})?;
        if status.status == qapi::qmp::RunState::running {
            return Ok(());
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
}

/// Waits for init's marker, failing early on a panic or a driver that did
/// not load.
fn wait_ready(
    proc: &mut Proc,
    accel: Accel,
    deadline: Instant,
    boot_timeout: Duration,
) -> Result<()> {
    let needles = [READY_MARKER, "Kernel panic", DRIVER_FAILED_MARKER];
    loop {
        if let Some(line) = proc
            .console
            .wait_for(0, &needles, Duration::from_millis(200))
        {
            if line.contains(READY_MARKER) {
                return Ok(());
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
