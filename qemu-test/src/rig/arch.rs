//! The guest's architecture: what of the QEMU machine and the kernel
//! command line differs between an x86_64 guest (QEMU's `pc`) and an arm64
//! guest (QEMU's `virt`, always under TCG on this project's x86_64 hosts).
//!
//! The architecture is learnt from the kernel image ([`Arch::of_image`]),
//! never assumed: `make ARCH=arm64 ...` gives the harness an arm64 `Image`,
//! and a distribution's `vmlinuz` says what it is by its header.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// A guest architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// x86_64 on QEMU's `pc` machine.
    X86_64,
    /// arm64 on QEMU's `virt` machine (GICv3, `-cpu max`).
    Arm64,
}

/// How the `-kernel` image boots. QEMU tells them apart by itself; the
/// harness knows which it is for the architecture, its logs and the boot
/// timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF `vmlinux` with a PVH entry point: the project's x86_64
    /// kernel, booted directly (no decompression, fastest under TCG).
    PvhElf,
    /// A `bzImage` (a distribution's x86 `vmlinuz`), booted through the
    /// Linux x86 boot protocol: it decompresses itself first.
    BzImage,
    /// An arm64 `Image` (the project's arm64 kernel): the arm64 boot
    /// header's `ARM\x64` magic at offset 0x38.
    Arm64Image,
    /// A compressed arm64 kernel (a distribution's `vmlinuz`): gzip, or an
    /// EFI zboot image (`MZ`, then `zimg` at offset 4), which QEMU unpacks.
    Arm64Compressed,
}

impl KernelFormat {
    /// The format of the image at `path`, from its first bytes.
    pub fn detect(path: &Path) -> Result<KernelFormat> {
        use std::io::Read;
        let mut head = Vec::with_capacity(0x206);
        std::fs::File::open(path)
            .and_then(|f| f.take(0x206).read_to_end(&mut head))
            .with_context(|| format!("reading the kernel image {}", path.display()))?;
        if head.starts_with(b"\x7fELF") {
            // e_machine at 18: 0x3e x86-64, 0xb7 AArch64.
            match head.get(18) {
                Some(0x3e) => Ok(KernelFormat::PvhElf),
                _ => bail!(
                    "{} is an ELF kernel of another architecture than x86_64: an arm64 guest \
                     boots its Image (arch/arm64/boot/Image)",
                    path.display()
                ),
            }
        } else if head.get(0x202..0x206) == Some(b"HdrS".as_slice()) {
            Ok(KernelFormat::BzImage)
        } else if head.get(0x38..0x3c) == Some(b"ARM\x64".as_slice()) {
            Ok(KernelFormat::Arm64Image)
        } else if head.starts_with(&[0x1f, 0x8b])
            || (head.starts_with(b"MZ") && head.get(4..8) == Some(b"zimg".as_slice()))
        {
            Ok(KernelFormat::Arm64Compressed)
        } else {
            bail!(
                "{} is none of: an x86_64 ELF vmlinux, a bzImage, an arm64 Image, a gzip or \
                 EFI zboot arm64 vmlinuz",
                path.display()
            )
        }
    }

    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            KernelFormat::PvhElf => "vmlinux (PVH)",
            KernelFormat::BzImage => "bzImage",
            KernelFormat::Arm64Image => "arm64 Image",
            KernelFormat::Arm64Compressed => "compressed arm64 vmlinuz",
        }
    }

    /// The architecture the image is for.
    pub fn arch(self) -> Arch {
        match self {
            KernelFormat::PvhElf | KernelFormat::BzImage => Arch::X86_64,
            KernelFormat::Arm64Image | KernelFormat::Arm64Compressed => Arch::Arm64,
        }
    }

    /// How much longer than the project's x86_64 kernel the guest takes to
    /// boot, the factor the boot timeout is scaled by: a compressed image
    /// decompresses itself, a distribution's kernel runs far more initcalls
    /// and loads its disk driver from the initramfs (Debian's cloud kernel
    /// reaches the agent in about four times the time under TCG), and an
    /// emulated arm64 CPU is slower than an emulated x86_64 one.
    pub fn boot_slowdown(self) -> u32 {
        match self {
            KernelFormat::PvhElf => 1,
            KernelFormat::BzImage | KernelFormat::Arm64Image => 3,
            KernelFormat::Arm64Compressed => 6,
        }
    }
}

impl Arch {
    /// The architecture this harness runs on.
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Arm64
        } else {
            Arch::X86_64
        }
    }

    /// The architecture of the kernel image at `path`.
    pub fn of_image(path: &Path) -> Result<Arch> {
        Ok(KernelFormat::detect(path)?.arch())
    }

    /// The name of QEMU's system emulator for this architecture.
    pub fn qemu_binary_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Arm64 => "qemu-system-aarch64",
        }
    }

    /// The `-machine` type.
    pub fn machine(self) -> &'static str {
        match self {
            Arch::X86_64 => "pc",
            // GICv3 with an ITS: MSI-X for virtio-pci, as on arm64 servers.
            Arch::Arm64 => "virt,gic-version=3",
        }
    }

    /// The `-cpu` model, if not QEMU's default. `pauth-impdef` replaces
    /// the architected pointer authentication hash, which dominates TCG's
    /// time otherwise.
    pub fn cpu(self) -> Option<&'static str> {
        match self {
            Arch::X86_64 => None,
            Arch::Arm64 => Some("max,pauth-impdef=on"),
        }
    }

    /// The serial console's device name in the guest.
    pub fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Arm64 => "ttyAMA0",
        }
    }

    /// Kernel command line parameters this architecture's guests need
    /// under emulation.
    pub fn cmdline(self) -> &'static [&'static str] {
        match self {
            // The emulated TSC is not worth the watchdog's complaints under
            // TCG; and on a loaded host the IO-APIC timer check can miss its
            // window and panic the boot ("IO-APIC + timer doesn't work!").
            Arch::X86_64 => &["tsc=reliable", "no_timer_check"],
            Arch::Arm64 => &[],
        }
    }

    /// The guest-physical address where RAM starts: 0 on `pc` (below the
    /// PCI hole, which a guest of up to 3 GiB does not reach), 1 GiB on
    /// `virt`, whose low addresses are flash and devices.
    pub fn ram_base(self) -> u64 {
        match self {
            Arch::X86_64 => 0,
            Arch::Arm64 => 0x4000_0000,
        }
    }

    /// Whether a device on the root bus can be unplugged (`device_del`):
    /// on `pc` through ACPI, while `virt`'s PCIe root complex has no
    /// hotplug, so there the balloon sits behind a PCIe root port.
    pub fn needs_root_port_for_hotplug(self) -> bool {
        self == Arch::Arm64
    }

    /// Whether KVM could run this guest here at all: only on a host of the
    /// same architecture.
    pub fn kvm_possible(self) -> bool {
        self == Arch::host()
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect(bytes: &[u8]) -> Result<KernelFormat> {
        let dir = std::env::temp_dir().join(format!("arch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let f = dir.join(format!(
            "{:x}",
            bytes.iter().map(|b| *b as u64).sum::<u64>()
        ));
        std::fs::write(&f, bytes)?;
        let r = KernelFormat::detect(&f);
        std::fs::remove_file(&f).ok();
        r
    }

    #[test]
    fn formats_are_told_apart_by_their_headers() {
        let mut elf = b"\x7fELF".to_vec();
        elf.resize(0x206, 0);
        elf[18] = 0x3e;
        assert_eq!(detect(&elf).unwrap(), KernelFormat::PvhElf);
        elf[18] = 0xb7;
        assert!(detect(&elf).is_err(), "an aarch64 vmlinux is refused");
        let mut image = vec![0u8; 0x206];
        image[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert_eq!(detect(&image).unwrap(), KernelFormat::Arm64Image);
        assert_eq!(detect(&image).unwrap().arch(), Arch::Arm64);
        let mut bz = vec![0u8; 0x206];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect(&bz).unwrap().arch(), Arch::X86_64);
        let mut zboot = b"MZ\0\0zimg".to_vec();
        zboot.resize(0x206, 0);
        assert_eq!(detect(&zboot).unwrap(), KernelFormat::Arm64Compressed);
        assert!(detect(&[0u8; 0x206]).is_err());
    }
}
