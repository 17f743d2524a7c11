//! What to boot: the guest image (kernel + initramfs from the environment),
//! the driver under test and the VM configuration builder.

use crate::accel::Accel;
use crate::units::MIB;
use anyhow::{bail, Result};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A balloon driver the guest can load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Driver {
    /// The in-tree C driver, `virtio_balloon`.
    C,
    /// Our Rust driver, `virtio_balloon_rs`.
    Rust,
}

impl Driver {
    /// Both drivers, C first.
    pub const ALL: [Driver; 2] = [Driver::C, Driver::Rust];

    /// The kernel module name (as `modprobe` and `/sys/module` know it).
    pub fn module_name(self) -> &'static str {
        match self {
            Driver::C => "virtio_balloon",
            Driver::Rust => "virtio_balloon_rs",
        }
    }

    /// The value of the guest's `balloon.load=` kernel parameter.
    pub fn load_param(self) -> &'static str {
        match self {
            Driver::C => "c",
            Driver::Rust => "rs",
        }
    }

    /// Parses `c` / `rs` (also `rust`, or a module name).
    pub fn parse(s: &str) -> Result<Driver> {
        match s.trim().to_ascii_lowercase().as_str() {
            "c" | "virtio_balloon" => Ok(Driver::C),
            "rs" | "rust" | "virtio_balloon_rs" => Ok(Driver::Rust),
            other => bail!("unknown driver {other:?} (use c or rs)"),
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.module_name())
    }
}

/// Options of the `virtio-balloon-pci` device (all off by default, as in
/// QEMU).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonOptions {
    /// `deflate-on-oom`: the guest may deflate when it runs out of memory.
    pub deflate_on_oom: bool,
    /// `free-page-reporting`: the guest reports free pages to the host.
    pub free_page_reporting: bool,
    /// `free-page-hint`: free page hinting during migration.
    pub free_page_hint: bool,
}

/// Transparent huge page mode of the guest (`transparent_hugepage=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThpMode {
    /// Huge pages for every large enough anonymous mapping (the kernel's
    /// configured default, as Debian's).
    Always,
    /// Only where a program asks (`madvise(MADV_HUGEPAGE)`).
    Madvise,
    /// Never.
    Never,
}

impl ThpMode {
    /// The kernel command line value.
    pub fn cmdline(self) -> &'static str {
        match self {
            ThpMode::Always => "always",
            ThpMode::Madvise => "madvise",
            ThpMode::Never => "never",
        }
    }
}

/// How the guest's RAM is backed on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backing {
    /// Anonymous memory in 4 KiB host pages (QEMU's default;
    /// `memory-backend-ram`).
    #[default]
    Anonymous,
}

/// Kernel and initramfs the guest boots.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// `-kernel` image (`vmlinux`, booted through PVH).
    pub kernel: PathBuf,
    /// `-initrd` image (uncompressed cpio).
    pub initramfs: PathBuf,
}

impl GuestImage {
    /// Reads `BALLOON_KDIR` and `BALLOON_INITRAMFS`; missing or unset is an
    /// error telling to run `make test` (tests fail, they never skip).
    pub fn from_env() -> Result<GuestImage> {
        let hint = "run the QEMU tests with `make test` (or `make qemu-test`), which builds \
                    the initramfs and sets BALLOON_KDIR and BALLOON_INITRAMFS";
        let kdir = match std::env::var_os("BALLOON_KDIR") {
            Some(k) if !k.is_empty() => PathBuf::from(k),
            _ => bail!("BALLOON_KDIR is not set: {hint}"),
        };
        let initramfs = match std::env::var_os("BALLOON_INITRAMFS") {
            Some(i) if !i.is_empty() => PathBuf::from(i),
            _ => bail!("BALLOON_INITRAMFS is not set: {hint}"),
        };
        Self::new(&kdir, &initramfs).map_err(|e| e.context(hint))
    }

    /// The image of kernel build directory `kdir` and initramfs `initramfs`;
    /// both files must exist.
    pub fn new(kdir: &Path, initramfs: &Path) -> Result<GuestImage> {
        let kernel = kdir.join("vmlinux");
        if !kernel.is_file() {
            bail!(
                "no guest kernel at {} (BALLOON_KDIR={}; `make setup` builds it)",
                kernel.display(),
                kdir.display()
            );
        }
        if !initramfs.is_file() {
            bail!(
                "no initramfs at {} (`make initramfs` builds it)",
                initramfs.display()
            );
        }
        Ok(GuestImage {
            kernel,
            initramfs: initramfs.to_path_buf(),
        })
    }
}

/// Configuration of one VM; build it with the chained setters.
///
/// ```no_run
/// # use qemu_test::{Driver, VmConfig};
/// let cfg = VmConfig::new("my-test").driver(Driver::C).memory_mib(1024);
/// ```
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Test name: names the console log file.
    pub name: String,
    /// Guest RAM in MiB (default 1024).
    pub memory_mib: u64,
    /// Number of vCPUs (default 2).
    pub smp: u32,
    /// Driver the guest loads at boot (`balloon.load=`), if any.
    pub driver: Option<Driver>,
    /// Balloon device options.
    pub balloon: BalloonOptions,
    /// Extra kernel command line arguments.
    pub extra_cmdline: Vec<String>,
    /// Extra QEMU arguments.
    pub extra_qemu_args: Vec<String>,
    /// Accelerator; `None` = from the environment (`ACCEL`).
    pub accel: Option<Accel>,
    /// Kernel console log level (`loglevel=`, default 7: everything but
    /// debug messages reaches the log file).
    pub loglevel: u8,
    /// How long [`crate::Vm::boot`] waits for the guest (default 60 s).
    pub boot_timeout: Duration,
    /// Resume from this migration stream file (`-incoming`) instead of
    /// booting; the rest of the configuration must match the saved VM's.
    pub incoming: Option<std::path::PathBuf>,
    /// NUMA nodes, sharing RAM and vCPUs equally (default 2; 1 = no NUMA).
    pub numa_nodes: u32,
    /// Host backing of the guest RAM.
    pub backing: Backing,
    /// Size of the data disk (a sparse ext4 image made when the VM starts,
    /// mounted at [`DATA_MOUNT`] in the guest), or none. Default 4 GiB.
    pub data_disk_mib: Option<u64>,
    /// Size of the swap disk (sparse, `mkswap` + `swapon` in the guest), or
    /// none. Default 1 GiB.
    pub swap_mib: Option<u64>,
    /// Transparent huge page mode; `None` = the kernel's default (always).
    pub thp: Option<ThpMode>,
}

/// Where the guest mounts its data disk.
pub const DATA_MOUNT: &str = "/mnt/data";

impl VmConfig {
    /// Default configuration for a test called `name`, a guest as users
    /// run them: 1 GiB in two NUMA nodes, 2 vCPUs, an ext4 data disk, a swap
    /// disk, THP as the kernel defaults, memory cgroups (always mounted by
    /// the guest's init); no driver loaded, balloon options off.
    pub fn new(name: &str) -> VmConfig {
        VmConfig {
            name: sanitize(name),
            memory_mib: 1024,
            smp: 2,
            driver: None,
            balloon: BalloonOptions::default(),
            extra_cmdline: Vec::new(),
            extra_qemu_args: Vec::new(),
            accel: None,
            loglevel: 7,
            boot_timeout: Duration::from_secs(60),
            incoming: None,
            numa_nodes: 2,
            backing: Backing::default(),
            data_disk_mib: Some(4096),
            swap_mib: Some(1024),
            thp: None,
        }
    }

    /// NUMA nodes (1: none).
    pub fn numa_nodes(mut self, n: u32) -> Self {
        self.numa_nodes = n.max(1);
        self
    }

    /// Host backing of guest RAM.
    pub fn backing(mut self, backing: Backing) -> Self {
        self.backing = backing;
        self
    }

    /// Data disk size in MiB, or none.
    pub fn data_disk_mib(mut self, mib: Option<u64>) -> Self {
        self.data_disk_mib = mib;
        self
    }

    /// Swap disk size in MiB, or none (for tests that must run the guest
    /// out of memory).
    pub fn swap_mib(mut self, mib: Option<u64>) -> Self {
        self.swap_mib = mib;
        self
    }

    /// Transparent huge page mode.
    pub fn thp(mut self, mode: ThpMode) -> Self {
        self.thp = Some(mode);
        self
    }

    /// Resume from the migration stream in `file` instead of booting.
    pub fn incoming(mut self, file: &std::path::Path) -> Self {
        self.incoming = Some(file.to_path_buf());
        self
    }

    /// Guest RAM in MiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Number of vCPUs.
    pub fn smp(mut self, n: u32) -> Self {
        self.smp = n;
        self
    }

    /// Load `driver` at boot.
    pub fn driver(mut self, driver: Driver) -> Self {
        self.driver = Some(driver);
        self
    }

    /// Load `driver` at boot, or none.
    pub fn driver_opt(mut self, driver: Option<Driver>) -> Self {
        self.driver = driver;
        self
    }

    /// All balloon device options at once.
    pub fn balloon(mut self, opts: BalloonOptions) -> Self {
        self.balloon = opts;
        self
    }

    /// `deflate-on-oom=on|off`.
    pub fn deflate_on_oom(mut self, on: bool) -> Self {
        self.balloon.deflate_on_oom = on;
        self
    }

    /// `free-page-reporting=on|off`.
    pub fn free_page_reporting(mut self, on: bool) -> Self {
        self.balloon.free_page_reporting = on;
        self
    }

    /// `free-page-hint=on|off`.
    pub fn free_page_hint(mut self, on: bool) -> Self {
        self.balloon.free_page_hint = on;
        self
    }

    /// Appends a kernel command line argument.
    pub fn cmdline_arg(mut self, arg: &str) -> Self {
        self.extra_cmdline.push(arg.to_string());
        self
    }

    /// Appends QEMU arguments.
    pub fn qemu_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.extra_qemu_args
            .extend(args.into_iter().map(Into::into));
        self
    }

    /// Forces an accelerator instead of `ACCEL` from the environment.
    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = Some(accel);
        self
    }

    /// Kernel console log level.
    pub fn loglevel(mut self, level: u8) -> Self {
        self.loglevel = level;
        self
    }

    /// Boot timeout.
    pub fn boot_timeout(mut self, t: Duration) -> Self {
        self.boot_timeout = t;
        self
    }

    /// Test name (log file name).
    pub fn name(mut self, name: &str) -> Self {
        self.name = sanitize(name);
        self
    }

    /// Guest RAM in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib * MIB
    }
}

/// Makes `name` usable as a file name.
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "vm".into()
    } else {
        s
    }
}
