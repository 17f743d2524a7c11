//! The QEMU command line, shared by the test harness ([`crate::Vm`]) and the
//! interactive `make run` (`balloon run`), so both boot the same machine.

use crate::rig::accel::Accel;
use crate::rig::arch::Arch;
use crate::rig::config::{Backing, GuestImage, Tier, VmConfig};
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The QEMU a VM of one architecture boots: its binary and firmware
/// directories, chosen together once per architecture.
struct QemuInstall {
    binary: OsString,
    data_dirs: Vec<PathBuf>,
}

/// QEMU binary for `arch`: `$BALLOON_QEMU` (exported by the Makefile: the
/// QEMU `make setup` unpacks for `ARCH`), else `$QEMU`, else that same QEMU
/// found through `scripts/paths.sh` (a test run with `cargo test` directly
/// boots what `make` boots), else `qemu-system-<arch>` on `PATH`, with a
/// warning: another QEMU is another device model (Debian 12's QEMU 7.2
/// corrupts guests migrated with free page hinting, with either driver,
/// where the setup's QEMU 10 does not). The environment's binary is taken
/// whatever `arch` is (the Makefile sets it for its `ARCH`).
pub fn qemu_binary(arch: Arch) -> OsString {
    qemu_install(arch).binary.clone()
}

/// QEMU firmware/data directories (`-L`) for the QEMU [`qemu_binary`]
/// boots for `arch`: `$BALLOON_QEMU_DATA` (colon-separated, needed by a
/// QEMU unpacked outside `/usr`), else those of the QEMU `make setup`
/// unpacked when that is the one booted, else none.
pub fn qemu_data_dirs(arch: Arch) -> Vec<PathBuf> {
    qemu_install(arch).data_dirs.clone()
}

/// The QEMU for `arch`, chosen on first use and kept: the command logged
/// and the command run name the same one.
fn qemu_install(arch: Arch) -> &'static QemuInstall {
    static X86_64: std::sync::OnceLock<QemuInstall> = std::sync::OnceLock::new();
    static ARM64: std::sync::OnceLock<QemuInstall> = std::sync::OnceLock::new();
    let cell = match arch {
        Arch::X86_64 => &X86_64,
        Arch::Arm64 => &ARM64,
    };
    cell.get_or_init(|| choose_qemu(arch))
}

fn choose_qemu(arch: Arch) -> QemuInstall {
    let split = |d: OsString| -> Vec<PathBuf> {
        std::env::split_paths(&d)
            .filter(|p| !p.as_os_str().is_empty())
            .collect()
    };
    let env_data = std::env::var_os("BALLOON_QEMU_DATA");
    let env_binary = ["BALLOON_QEMU", "QEMU"]
        .iter()
        .find_map(|v| std::env::var_os(v).filter(|q| !q.is_empty()));
    if let Some(binary) = env_binary {
        return QemuInstall {
            binary,
            data_dirs: env_data.map(split).unwrap_or_default(),
        };
    }
    let setup = setup_path(arch, "qemu").and_then(|q| {
        if Path::new(&q).is_file() {
            Ok(q)
        } else {
            Err(format!("{} does not exist", q.to_string_lossy()))
        }
    });
    match setup {
        Ok(binary) => {
            let data = match env_data {
                Some(d) => Ok(d),
                None => setup_path(arch, "qemu-data"),
            };
            match data {
                Ok(d) => QemuInstall {
                    binary,
                    data_dirs: split(d),
                },
                Err(why) => {
                    eprintln!(
                        "qemu-test: warning: booting {} without its firmware path: {why}",
                        binary.to_string_lossy()
                    );
                    QemuInstall {
                        binary,
                        data_dirs: Vec::new(),
                    }
                }
            }
        }
        Err(why) => {
            eprintln!(
                "qemu-test: warning: BALLOON_QEMU and QEMU are not set and the QEMU of `make{} \
                 setup` was not found ({why}): using {} from PATH, which is not the QEMU the \
                 suites are checked with",
                match arch {
                    Arch::X86_64 => "",
                    Arch::Arm64 => " ARCH=arm64",
                },
                arch.qemu_binary_name()
            );
            QemuInstall {
                binary: arch.qemu_binary_name().into(),
                data_dirs: env_data.map(split).unwrap_or_default(),
            }
        }
    }
}

/// What `scripts/paths.sh <what>` prints for `arch` (with 4 KiB pages,
/// whatever `PAGES` says: the QEMU does not depend on it), or why not.
fn setup_path(arch: Arch, what: &str) -> std::result::Result<OsString, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/paths.sh");
    let arch = match arch {
        Arch::X86_64 => "x86_64",
        Arch::Arm64 => "arm64",
    };
    let out = std::process::Command::new(&script)
        .arg(what)
        .env("ARCH", arch)
        .env_remove("PAGES")
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && !path.is_empty() {
        Ok(path.into())
    } else {
        Err(format!(
            "{} {what}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Where the serial console (ttyS0, ttyAMA0 on arm64) goes.
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
    /// Directory for the VM's disk images ([`create_disks`] makes them).
    pub disk_dir: PathBuf,
}

/// Serial number (and guest-visible name) of the data disk.
pub const DATA_DISK_SERIAL: &str = "data";
/// Serial number of the swap disk.
pub const SWAP_DISK_SERIAL: &str = "swap";

/// The disks [`create_disks`] makes for `spec`'s VM: serial number and
/// image path.
pub fn disks(spec: &QemuSpec) -> Vec<(&'static str, PathBuf)> {
    let mut d = Vec::new();
    if spec.cfg.data_disk_mib.is_some() {
        d.push((DATA_DISK_SERIAL, spec.disk_dir.join("data.img")));
    }
    if spec.cfg.swap_mib.is_some() {
        d.push((SWAP_DISK_SERIAL, spec.disk_dir.join("swap.img")));
    }
    d
}

/// Every disk of `spec`'s VM, in the order the guest sees them: those the
/// caller attached ([`VmConfig::attached_disks`]), then [`disks`].
fn all_disks(spec: &QemuSpec) -> Vec<(String, PathBuf)> {
    spec.cfg
        .attached_disks
        .iter()
        .cloned()
        .chain(disks(spec).into_iter().map(|(s, p)| (s.to_string(), p)))
        .collect()
}

/// Creates the VM's disk images, sparse, in `spec.disk_dir`: the data disk
/// formatted as ext4 on the host (`mkfs.ext4`, lazy initialisation, so it
/// costs a few MiB), the swap disk left for the guest's `mkswap`. Images
/// from an earlier run are replaced.
pub fn create_disks(spec: &QemuSpec) -> Result<()> {
    let cfg = spec.cfg;
    for (serial, path) in disks(spec) {
        let mib = match serial {
            DATA_DISK_SERIAL => cfg.data_disk_mib,
            _ => cfg.swap_mib,
        }
        .unwrap_or(0);
        let _ = std::fs::remove_file(&path);
        let f = std::fs::File::create(&path)
            .with_context(|| format!("creating disk image {}", path.display()))?;
        f.set_len(mib << 20)
            .with_context(|| format!("sizing disk image {}", path.display()))?;
        drop(f);
        if serial == DATA_DISK_SERIAL {
            let out = Command::new("mkfs.ext4")
                .args([
                    "-q",
                    "-F",
                    "-L",
                    "data",
                    "-E",
                    "lazy_itable_init=1,lazy_journal_init=1",
                ])
                .arg(&path)
                .output()
                .context("running mkfs.ext4 (install e2fsprogs; `make setup` does)")?;
            if !out.status.success() {
                bail!(
                    "mkfs.ext4 {} failed: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    Ok(())
}

/// The guest kernel command line for `spec`.
pub fn kernel_cmdline(spec: &QemuSpec) -> String {
    let cfg = spec.cfg;
    let arch = spec.image.arch;
    let mut args: Vec<String> = vec![
        format!("console={}", arch.console()),
        "panic=-1".into(),
        format!("loglevel={}", cfg.loglevel),
    ];
    args.extend(arch.cmdline().iter().map(|a| a.to_string()));
    if arch == Arch::X86_64 && matches!(Tier::current(), Ok(Tier::Debug)) {
        // Interrupt routing from the BIOS's tables, not from ACPI's `_PRT`:
        // on the debug kernel (KASAN, DEBUG_PAGEALLOC, lockdep) under TCG
        // its AML loop runs past ACPICA's 30 s loop limit for every PCI
        // device, and the boot misses its deadline. ACPI PCI hotplug still
        // works (`pci=noacpi` would break it).
        args.push("acpi=noirq".into());
    }
    args.push(format!(
        "balloon.load={}",
        cfg.driver.map(|d| d.load_param()).unwrap_or("none")
    ));
    if let Some(thp) = cfg.thp {
        args.push(format!("transparent_hugepage={}", thp.cmdline()));
    }
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

/// The QEMU arguments (without the program) for `spec`: the machine, its
/// RAM and CPUs, the console and QMP, the devices, the kernel.
pub fn qemu_args(spec: &QemuSpec) -> Vec<OsString> {
    let mut a = Args::default();
    for dir in qemu_data_dirs(spec.image.arch) {
        a.push("-L");
        a.push(&dir.to_string_lossy());
    }
    a.push("-nodefaults");
    a.push("-no-user-config");
    // Named threads ("CPU 0/TCG", "IO ...") for the benchmark's breakdown.
    a.push("-name");
    a.push("balloon-test,debug-threads=on");
    a.push("-display");
    a.push("none");
    a.push("-no-reboot");
    machine_args(&mut a, spec);
    console_args(&mut a, spec);
    device_args(&mut a, spec);
    let cfg = spec.cfg;
    let mut a = a.0;
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

/// QEMU arguments being put together.
#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, s: &str) {
        self.0.push(s.into());
    }
}

/// The machine, accelerator, RAM (one backend per NUMA node) and CPUs.
fn machine_args(a: &mut Args, spec: &QemuSpec) {
    let cfg = spec.cfg;
    let arch = spec.image.arch;
    a.push("-machine");
    // Without NUMA, RAM that is not plain anonymous memory needs a backend
    // of its own too (see `ram_backends`).
    let backends = ram_backends(cfg);
    if cfg.numa_nodes.max(1) == 1 && !backends.is_empty() {
        a.push(&format!("{},memory-backend=ram-node0", arch.machine()));
    } else {
        a.push(arch.machine());
    }
    if let Some(cpu) = arch.cpu() {
        a.push("-cpu");
        a.push(cpu);
    }
    a.push("-accel");
    a.push(spec.accel.qemu_name());
    a.push("-m");
    a.push(&format!("{}M", cfg.memory_mib));
    // Guest RAM: one memory backend per NUMA node, RAM and vCPUs shared
    // equally (the last node takes what does not divide); each node is a
    // socket of its own, as on real machines (a shared last-level cache
    // across nodes makes the guest kernel warn).
    let nodes = u64::from(cfg.numa_nodes.max(1));
    let cores = (u64::from(cfg.smp) / nodes).max(1);
    a.push("-smp");
    if nodes > 1 {
        a.push(&format!(
            "{},sockets={nodes},cores={cores},threads=1",
            nodes * cores
        ));
    } else {
        a.push(&cfg.smp.to_string());
    }
    for b in &backends {
        a.push("-object");
        a.push(b);
    }
    if nodes > 1 {
        for n in 0..nodes {
            let mut node = format!("node,nodeid={n},memdev=ram-node{n}");
            for c in n * cores..(n + 1) * cores {
                node.push_str(&format!(",cpus={c}"));
            }
            a.push("-numa");
            a.push(&node);
        }
    }
}

/// The serial console and the QMP socket.
fn console_args(a: &mut Args, spec: &QemuSpec) {
    match spec.serial {
        Serial::Pipe => {
            a.push("-chardev");
            a.push("stdio,id=serial0,signal=off");
            a.push("-serial");
            a.push("chardev:serial0");
        }
        Serial::Interactive => {
            a.push("-chardev");
            a.push("stdio,id=serial0,mux=on,signal=off");
            a.push("-serial");
            a.push("chardev:serial0");
            a.push("-mon");
            a.push("chardev=serial0,mode=readline");
        }
    }
    a.push("-chardev");
    a.push(&socket_chardev("qmp", &spec.qmp_socket));
    a.push("-mon");
    a.push("chardev=qmp,mode=control");
}

/// The balloon, the command agent's virtio-serial port and the disks.
fn device_args(a: &mut Args, spec: &QemuSpec) {
    let b = &spec.cfg.balloon;
    // The balloon; free page hinting runs in an I/O thread.
    let mut balloon = format!(
        "virtio-balloon-pci,id=balloon0,deflate-on-oom={},free-page-reporting={},free-page-hint={}",
        on_off(b.deflate_on_oom),
        on_off(b.free_page_reporting),
        on_off(b.free_page_hint)
    );
    if b.free_page_hint {
        a.push("-object");
        a.push("iothread,id=balloon-io");
        balloon.push_str(",iothread=balloon-io");
    }
    if spec.image.arch.needs_root_port_for_hotplug() {
        a.push("-device");
        a.push("pcie-root-port,id=balloon-port,chassis=1");
        balloon.push_str(",bus=balloon-port");
    }
    a.push("-device");
    a.push(&balloon);
    // The command agent's virtio-serial port.
    a.push("-device");
    a.push("virtio-serial-pci,id=vser0");
    a.push("-chardev");
    a.push(&socket_chardev("agent", &spec.agent_socket));
    a.push("-device");
    a.push("virtserialport,bus=vser0.0,chardev=agent,name=agent");
    // Disks, on virtio-blk; the guest finds them by serial number.
    for (serial, path) in all_disks(spec) {
        a.push("-drive");
        a.push(&format!(
            "file={},if=none,id=disk-{serial},format=raw,cache=unsafe,discard=unmap",
            path.display().to_string().replace(',', ",,")
        ));
        a.push("-device");
        a.push(&format!(
            "virtio-blk-pci,drive=disk-{serial},serial={serial}"
        ));
    }
}

/// The sizes of the guest's RAM blocks in MiB: one per NUMA node, RAM
/// shared equally (the last node takes what does not divide), or all of
/// RAM without NUMA.
pub fn ram_block_mib(cfg: &VmConfig) -> Vec<u64> {
    let nodes = u64::from(cfg.numa_nodes.max(1));
    let per = cfg.memory_mib / nodes;
    (0..nodes)
        .map(|n| {
            if n + 1 == nodes {
                cfg.memory_mib - per * (nodes - 1)
            } else {
                per
            }
        })
        .collect()
}

/// The `-object` memory backends of the guest RAM, `ram-node<N>` (one per
/// NUMA node, see [`ram_block_mib`]), of the configured [`Backing`]. None
/// without NUMA for anonymous memory: QEMU's own `-m` RAM is the same.
pub fn ram_backends(cfg: &VmConfig) -> Vec<String> {
    if cfg.numa_nodes.max(1) == 1 && cfg.backing != Backing::Hugetlb2M {
        return Vec::new();
    }
    ram_block_mib(cfg)
        .iter()
        .enumerate()
        .map(|(n, size)| match cfg.backing {
            // THP or not is the QEMU process's setting (see `command`).
            Backing::Anonymous | Backing::Anonymous4k => {
                format!("memory-backend-ram,id=ram-node{n},size={size}M")
            }
            Backing::Hugetlb2M => format!(
                "memory-backend-memfd,id=ram-node{n},size={size}M,hugetlb=on,hugetlbsize=2M,share=on"
            ),
        })
        .collect()
}

/// A ready-to-spawn (or exec) QEMU command for `spec`. For
/// [`Backing::Anonymous4k`] the child disables transparent huge pages for
/// itself before it executes QEMU (the flag survives `exec`).
pub fn command(spec: &QemuSpec) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(qemu_binary(spec.image.arch));
    c.args(qemu_args(spec));
    if spec.cfg.backing == Backing::Anonymous4k {
        // SAFETY: the hook makes one system call (prctl), which is safe
        // between fork and exec.
        unsafe {
            c.pre_exec(crate::rig::hostmem::disable_thp_for_this_process);
        }
    }
    c
}

/// The command line as a shell-like string, for logs.
pub fn display_command(spec: &QemuSpec) -> String {
    std::iter::once(qemu_binary(spec.image.arch))
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
