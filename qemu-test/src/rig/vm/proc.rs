//! The QEMU process of a VM: started with its console and stderr captured
//! into the VM's log, watched, and killed with the VM.

use super::*;

/// The QEMU process and its captured output; killed and reaped on drop.
pub(super) struct Proc {
    pub(super) child: Child,
    pub(super) status: Option<ExitStatus>,
    pub(super) stdin: Option<ChildStdin>,
    pub(super) console: Capture,
    pub(super) stderr: Capture,
    pub(super) log: SharedLog,
    pub(super) log_path: PathBuf,
}

impl Proc {
    /// Starts QEMU as `spec` says, its console and stderr captured into the
    /// VM's log file (`$BALLOON_LOG_DIR/<name>.log`), which starts with the
    /// command line.
    pub(super) fn spawn(spec: &QemuSpec<'_>) -> Result<Proc> {
        let (cfg, image, accel) = (spec.cfg, spec.image, spec.accel);
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
            "# qemu-test: VM {} (accel {accel}, {} kernel {}, started at unix time {})\n\
             # qemu-test: {}",
            cfg.name,
            image.arch,
            image.format.name(),
            started.as_secs(),
            qemu::display_command(spec)
        )?;
        let log: SharedLog = Arc::new(Mutex::new(logf));

        use std::os::unix::process::CommandExt;
        let mut cmd = qemu::command(spec);
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
                    "starting {} (`make setup` unpacks QEMU; for ARCH=arm64 \
                     `make ARCH=arm64 setup`)",
                    qemu::qemu_binary(image.arch).to_string_lossy()
                )
            })?;
        let stdout = child.stdout.take().context("no QEMU stdout")?;
        let stderr = child.stderr.take().context("no QEMU stderr")?;
        let stdin = child.stdin.take();
        let (console, _) = Capture::spawn(stdout, log.clone(), "");
        let (stderr, _) = Capture::spawn(stderr, log.clone(), "[qemu stderr] ");
        Ok(Proc {
            child,
            status: None,
            stdin,
            console,
            stderr,
            log,
            log_path,
        })
    }

    /// Error if QEMU has exited (with its status and output).
    pub(super) fn check_alive(&mut self) -> Result<()> {
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
    pub(super) fn diag(&self) -> String {
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

    pub(super) fn log_line(&self, line: &str) {
        if let Ok(mut f) = self.log.lock() {
            let _ = writeln!(f, "# qemu-test: {line}");
        }
    }

    /// Waits up to `timeout` for QEMU to exit by itself.
    pub(super) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
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

    pub(super) fn kill(&mut self) {
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
