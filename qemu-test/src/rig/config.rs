//! What to boot: the guest image (kernel + initramfs from the environment),
//! the driver under test and the VM configuration builder.

use crate::rig::accel::Accel;
use crate::rig::arch::Arch;
pub use crate::rig::arch::KernelFormat;
use crate::rig::units::MIB;
use anyhow::{bail, Context, Result};
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

/// The guest kernel tier the tests run on (`BALLOON_TIER`, set by the
/// Makefile from `TIER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The realistic guest kernel (`scripts/kconfig/common.config`).
    Base,
    /// The realistic guest plus the kernel's checkers: KASAN, lockdep,
    /// kmemleak, fault injection (`scripts/kconfig/tier-debug.config`).
    Debug,
}

impl Tier {
    /// The tier of this run: `BALLOON_TIER` (`base`, the default, or
    /// `debug`).
    pub fn current() -> Result<Tier> {
        match std::env::var("BALLOON_TIER").as_deref() {
            Err(_) | Ok("") | Ok("base") => Ok(Tier::Base),
            Ok("debug") => Ok(Tier::Debug),
            Ok(other) => bail!("BALLOON_TIER={other:?}: use base or debug"),
        }
    }

    /// How much longer than on the base tier the guest takes for the same
    /// work (KASAN, lockdep and page-allocator debugging under TCG): the
    /// factor timeouts are scaled by.
    pub fn slowdown(self) -> u32 {
        match self {
            Tier::Base => 1,
            Tier::Debug => 6,
        }
    }
}

/// Scales a timeout for the current tier ([`Tier::slowdown`]).
pub fn scaled(d: Duration) -> Duration {
    d * Tier::current().map_or(1, Tier::slowdown)
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

/// How the guest's RAM is backed on the host (`make bench --backing`).
///
/// QEMU discards what the balloon inflates per 4 KiB PFN for anonymous
/// memory (`madvise(MADV_DONTNEED)`, splitting a transparent huge page it
/// falls in), but only whole host pages of hugetlb memory (see
/// [`Backing::Hugetlb2M`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backing {
    /// Anonymous memory (`memory-backend-ram` per NUMA node), with the
    /// host's transparent huge pages as the host configures them: QEMU
    /// madvises all guest RAM `MADV_HUGEPAGE` (`ram_block_add()` in
    /// `system/physmem.c`), so with THP `always` or `madvise` (the
    /// development machine's `madvise`) the host backs each 2 MiB of guest
    /// RAM the guest touches with a huge page when it can; with `never`,
    /// 4 KiB pages. QEMU's default and the tests'; `--backing thp`.
    #[default]
    Anonymous,
    /// Anonymous memory in 4 KiB host pages only: THP disabled for the QEMU
    /// process (`prctl(PR_SET_THP_DISABLE)` before `exec`, which keeps it),
    /// whatever the host's THP mode. `--backing 4k`.
    Anonymous4k,
    /// 2 MiB hugetlb pages: `memory-backend-memfd,hugetlb=on,
    /// hugetlbsize=2M,share=on` per NUMA node (also without NUMA), reserved
    /// from the host's pool when QEMU starts (someone must have grown
    /// `nr_hugepages`; the benchmark does). QEMU frees a huge page only
    /// when a single inflate buffer carries all 512 of its 4 KiB PFNs
    /// (`balloon_inflate_page()` in `hw/virtio/virtio-balloon.c`), then
    /// with `fallocate(PUNCH_HOLE)`. `--backing hugetlb`.
    Hugetlb2M,
}

impl Backing {
    /// All backings.
    pub const ALL: [Backing; 3] = [Backing::Anonymous4k, Backing::Anonymous, Backing::Hugetlb2M];

    /// Parses `4k`, `thp` (also `anonymous`) or `hugetlb`.
    pub fn parse(s: &str) -> Result<Backing> {
        match s.trim().to_ascii_lowercase().as_str() {
            "thp" | "anonymous" => Ok(Backing::Anonymous),
            "4k" => Ok(Backing::Anonymous4k),
            "hugetlb" | "hugetlb2m" => Ok(Backing::Hugetlb2M),
            other => bail!("unknown backing {other:?} (4k, thp or hugetlb)"),
        }
    }

    /// The name [`Backing::parse`] takes.
    pub fn name(self) -> &'static str {
        match self {
            Backing::Anonymous => "thp",
            Backing::Anonymous4k => "4k",
            Backing::Hugetlb2M => "hugetlb",
        }
    }

    /// The host page size QEMU sees for guest RAM (the smallest unit it
    /// can give back): 4 KiB for anonymous memory, THP or not.
    pub fn host_page_size(self) -> u64 {
        match self {
            Backing::Anonymous | Backing::Anonymous4k => 4096,
            Backing::Hugetlb2M => 2 * MIB,
        }
    }
}

/// Kernel and initramfs the guest boots.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// `-kernel` image: `$BALLOON_KDIR/vmlinux` (booted through PVH), or
    /// `$BALLOON_KERNEL` (e.g. a distribution's bzImage).
    pub kernel: PathBuf,
    /// How [`GuestImage::kernel`] boots.
    pub format: KernelFormat,
    /// The architecture of [`GuestImage::kernel`].
    pub arch: Arch,
    /// `-initrd` image (uncompressed cpio).
    pub initramfs: PathBuf,
}

impl GuestImage {
    /// Reads `BALLOON_KDIR` and `BALLOON_INITRAMFS`, and `BALLOON_KERNEL`,
    /// which, when set, is the kernel image instead of
    /// `$BALLOON_KDIR/vmlinux` (`make test-distro` boots Debian's
    /// `vmlinuz` so); missing or unset is an error telling to run `make
    /// test` (tests fail, they never skip).
    pub fn from_env() -> Result<GuestImage> {
        let hint = "run the QEMU tests with `make test` (or `make qemu-test`), which builds \
                    the initramfs and sets BALLOON_KDIR and BALLOON_INITRAMFS";
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let initramfs = match var("BALLOON_INITRAMFS") {
            Some(i) => PathBuf::from(i),
            _ => bail!("BALLOON_INITRAMFS is not set: {hint}"),
        };
        if let Some(kernel) = var("BALLOON_KERNEL") {
            return Self::with_kernel(Path::new(&kernel), &initramfs)
                .with_context(|| format!("BALLOON_KERNEL={}", kernel.to_string_lossy()));
        }
        let kdir = match var("BALLOON_KDIR") {
            Some(k) => PathBuf::from(k),
            _ => bail!("BALLOON_KDIR is not set: {hint}"),
        };
        Self::new(&kdir, &initramfs).map_err(|e| e.context(hint))
    }

    /// The image of kernel build directory `kdir` (its `vmlinux` on
    /// x86_64, booted through PVH; its `arch/arm64/boot/Image` on arm64)
    /// and initramfs `initramfs`; both files must exist.
    pub fn new(kdir: &Path, initramfs: &Path) -> Result<GuestImage> {
        let arm64 = kdir.join("arch/arm64/boot/Image");
        let kernel = if arm64.is_file() {
            arm64
        } else {
            kdir.join("vmlinux")
        };
        if !kernel.is_file() {
            bail!(
                "no guest kernel at {} (BALLOON_KDIR={}; `make setup` builds it)",
                kernel.display(),
                kdir.display()
            );
        }
        Self::with_kernel(&kernel, initramfs)
    }

    /// The image of kernel image `kernel` (a `vmlinux` or a `bzImage`) and
    /// initramfs `initramfs`; both files must exist.
    pub fn with_kernel(kernel: &Path, initramfs: &Path) -> Result<GuestImage> {
        if !kernel.is_file() {
            bail!("no kernel image at {}", kernel.display());
        }
        let format = KernelFormat::detect(kernel)?;
        if !initramfs.is_file() {
            bail!(
                "no initramfs at {} (`make initramfs` builds it)",
                initramfs.display()
            );
        }
        Ok(GuestImage {
            kernel: kernel.to_path_buf(),
            format,
            arch: format.arch(),
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
    /// The driver under test (default: [`VmConfig::driver`]; tests that
    /// load a driver themselves say which). On the debug tier, kernel
    /// problems in a VM testing the C driver are recorded, not failed on
    /// ([`crate::Vm::shutdown`]).
    pub subject: Option<Driver>,
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
    /// Disk images the caller made and keeps (serial number, path),
    /// attached as they are before the data and swap disks: the first is
    /// the guest's `/dev/vda`.
    pub attached_disks: Vec<(String, std::path::PathBuf)>,
    /// Transparent huge page mode; `None` = the kernel's default (always).
    pub thp: Option<ThpMode>,
    /// Kernel problems of the C driver are what the scenario shows (a
    /// warning C gives on a device that misbehaves): recorded on every
    /// tier, not failed on.
    pub c_problems_expected: bool,
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
            subject: None,
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
            attached_disks: Vec::new(),
            thp: None,
            c_problems_expected: false,
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

    /// Attaches the disk image at `path` (which the caller made and keeps)
    /// with serial number `serial`, after those attached before.
    pub fn attach_disk(mut self, serial: &str, path: &std::path::Path) -> Self {
        self.attached_disks
            .push((serial.to_string(), path.to_path_buf()));
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
        self.subject = Some(driver);
        self
    }

    /// Load `driver` at boot, or none.
    pub fn driver_opt(mut self, driver: Option<Driver>) -> Self {
        self.driver = driver;
        self.subject = driver.or(self.subject);
        self
    }

    /// The driver under test, when the test loads it itself.
    pub fn subject(mut self, driver: Driver) -> Self {
        self.subject = Some(driver);
        self
    }

    /// The C driver's kernel problems are part of what the scenario shows:
    /// record them (`c-driver-reports.txt`) on every tier.
    pub fn c_problems_expected(mut self) -> Self {
        self.c_problems_expected = true;
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
