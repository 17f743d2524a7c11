//! The QEMU command line, shared by the test harness ([`crate::Vm`]) and the
//! interactive `make run` (`balloon run`), so both boot the same machine.

use crate::accel::Accel;
use crate::config::{GuestImage, VmConfig};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// QEMU binary: `$BALLOON_QEMU` (exported by the Makefile: the QEMU
/// `make setup` unpacks), else `$QEMU`, else `qemu-system-x86_64` on `PATH`.
pub fn qemu_binary() -> OsString {
    ["BALLOON_QEMU", "QEMU"]
        .iter()
        .find_map(|v| std::env::var_os(v).filter(|q| !q.is_empty()))
        .unwrap_or_else(|| {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                eprintln!(
                    "qemu-test: warning: BALLOON_QEMU is not set (run through `make`), \
                     using qemu-system-x86_64 from PATH"
                )
            });
            "qemu-system-x86_64".into()
        })
}

/// QEMU firmware/data directories (`-L`): `$BALLOON_QEMU_DATA`,
/// colon-separated (needed by a QEMU unpacked outside `/usr`).
pub fn qemu_data_dirs() -> Vec<PathBuf> {
    std::env::var_os("BALLOON_QEMU_DATA")
        .map(|d| {
            std::env::split_paths(&d)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Where the serial console (ttyS0) goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serial {
    /// QEMU's stdout (a pipe the harness reads); stdin is the guest's input.
    Pipe,
    /// The user's terminal, multiplexed with the HMP monitor (Ctrl-A C) and
    /// with Ctrl-A X to quit; Ctrl-C goes to the guest.
    Interactive,
}

/// Everything needed to build a QEMU command line.
#[derive(Debug, Clone)]
pub struct QemuSpec<'a> {
    /// VM configuration.
    pub cfg: &'a VmConfig,
    /// Kernel and initramfs.
    pub image: &'a GuestImage,
    /// Accelerator to use.
    pub accel: Accel,
    /// QMP unix socket path (QEMU listens).
    pub qmp_socket: PathBuf,
    /// Agent unix socket path (QEMU listens).
    pub agent_socket: PathBuf,
    /// Serial console routing.
    pub serial: Serial,
    /// Extra guest kernel arguments added by the caller (after the config's).
    pub cmdline_extra: Vec<String>,
}

/// The guest kernel command line for `spec`.
pub fn kernel_cmdline(spec: &QemuSpec) -> String {
    let cfg = spec.cfg;
    let mut args: Vec<String> = vec![
        "console=ttyS0".into(),
        "panic=-1".into(),
        format!("loglevel={}", cfg.loglevel),
        // The emulated TSC is not worth the watchdog's complaints under TCG.
        "tsc=reliable".into(),
        format!(
            "balloon.load={}",
            cfg.driver.map(|d| d.load_param()).unwrap_or("none")
        ),
    ];
    args.extend(cfg.extra_cmdline.iter().cloned());
    args.extend(spec.cmdline_extra.iter().cloned());
    args.join(" ")
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn socket_chardev(id: &str, path: &Path) -> String {
    format!(
        "socket,id={id},path={},server=on,wait=off",
        path.display().to_string().replace(',', ",,")
    )
}

/// The QEMU arguments (without the program) for `spec`.
pub fn qemu_args(spec: &QemuSpec) -> Vec<OsString> {
    let cfg = spec.cfg;
    let b = &cfg.balloon;
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(s.into());
    for dir in qemu_data_dirs() {
        push("-L");
        push(&dir.to_string_lossy());
    }
    push("-nodefaults");
    push("-no-user-config");
    // Named threads ("CPU 0/TCG", "IO ...") for the benchmark's breakdown.
    push("-name");
    push("balloon-test,debug-threads=on");
    push("-display");
    push("none");
    push("-no-reboot");
    push("-machine");
    push("pc");
    push("-accel");
    push(spec.accel.qemu_name());
    push("-m");
    push(&format!("{}M", cfg.memory_mib));
    push("-smp");
    push(&cfg.smp.to_string());
    // Serial console.
    match spec.serial {
        Serial::Pipe => {
            push("-chardev");
            push("stdio,id=serial0,signal=off");
            push("-serial");
            push("chardev:serial0");
        }
        Serial::Interactive => {
            push("-chardev");
            push("stdio,id=serial0,mux=on,signal=off");
            push("-serial");
            push("chardev:serial0");
            push("-mon");
            push("chardev=serial0,mode=readline");
        }
    }
    // QMP.
    push("-chardev");
    push(&socket_chardev("qmp", &spec.qmp_socket));
    push("-mon");
    push("chardev=qmp,mode=control");
    // The balloon; free page hinting runs in an I/O thread.
    let mut balloon = format!(
        "virtio-balloon-pci,id=balloon0,deflate-on-oom={},free-page-reporting={},free-page-hint={}",
        on_off(b.deflate_on_oom),
        on_off(b.free_page_reporting),
        on_off(b.free_page_hint)
    );
    if b.free_page_hint {
        push("-object");
        push("iothread,id=balloon-io");
        balloon.push_str(",iothread=balloon-io");
    }
    push("-device");
    push(&balloon);
    // The command agent's virtio-serial port.
    push("-device");
    push("virtio-serial-pci,id=vser0");
    push("-chardev");
    push(&socket_chardev("agent", &spec.agent_socket));
    push("-device");
    push("virtserialport,bus=vser0.0,chardev=agent,name=agent");
    a.push("-kernel".into());
    a.push(spec.image.kernel.clone().into_os_string());
    a.push("-initrd".into());
    a.push(spec.image.initramfs.clone().into_os_string());
    a.push("-append".into());
    a.push(kernel_cmdline(spec).into());
    if let Some(from) = &cfg.incoming {
        // Resume a VM saved with `migrate` to a file instead of booting.
        a.push("-incoming".into());
        a.push(format!("exec:cat '{}'", from.display()).into());
    }
    a.extend(cfg.extra_qemu_args.iter().map(OsString::from));
    a
}

/// A ready-to-spawn (or exec) QEMU command for `spec`.
pub fn command(spec: &QemuSpec) -> Command {
    let mut c = Command::new(qemu_binary());
    c.args(qemu_args(spec));
    c
}

/// The command line as a shell-like string, for logs.
pub fn display_command(spec: &QemuSpec) -> String {
    std::iter::once(qemu_binary())
        .chain(qemu_args(spec))
        .map(|a| {
            let s = a.to_string_lossy().into_owned();
            if s.contains(|c: char| c.is_whitespace() || c == '\'') {
                format!("'{}'", s.replace('\'', r"'\''"))
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
