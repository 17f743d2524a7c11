//! Installing the driver as users do (issue 21): the Debian package of
//! `make deb` in a full Debian guest (`scripts/debian-guest.sh`: systemd,
//! udev, apt, Debian's unmodified kernels and the initrds Debian made),
//! booted with root on its disk, Debian's kernel and Debian's initrd.
//!
//! Nothing here loads a module: udev does, at boot, for the balloon device.
//! Boot by boot:
//! 1. the package's kernel, before the package: Debian's C driver binds;
//! 2. `apt install ./<package>.deb`, options in `/etc/modprobe.d`, reboot:
//!    ours binds (its version the package's), C is not loaded, the balloon
//!    inflates, holds at the reserve the option set, and deflates; then
//!    with ours refused (`install virtio_balloon_rs /bin/false`, as when
//!    it is unsigned under Secure Boot), reboot: C binds; the initrd was
//!    never changed;
//! 3. another kernel (trixie's 6.12), no package of ours for it, ours
//!    still installed for the first: C binds; then `apt remove` (every
//!    file it installed is gone, no module index names it) and `apt
//!    purge` (dpkg's record too);
//! 4. the package's kernel again: C binds, nothing of ours left on disk.

use crate::rig::config::GuestImage;
use crate::rig::units::MIB;
use crate::rig::vm::Vm;
use crate::scenarios::suite::balloon_to_within;
use crate::VmConfig;
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The C driver's module.
const C_MODULE: &str = "virtio_balloon";
/// Ours.
const RS_MODULE: &str = "virtio_balloon_rs";
/// The module option the test sets in `/etc/modprobe.d`, as a user would.
const OPTION: (&str, &str) = ("min_available_mib", "96");
/// Where the test puts the option (a file of the user's, not the package's).
const OPTIONS_FILE: &str = "/etc/modprobe.d/virtio-balloon-rs.conf";
/// Guest RAM.
const GUEST_MIB: u64 = 1024;
/// How long the balloon may take to reach a target in the full guest.
const MOVE_TIMEOUT: Duration = Duration::from_secs(120);
/// README's way to keep the C driver with the package installed.
const KEEP_C_FILE: &str = "/etc/modprobe.d/keep-c-balloon.conf";

/// What `make test-install` hands the test (environment).
#[derive(Debug, Clone)]
pub struct Install {
    /// The pristine guest image (`root.img` of `scripts/debian-guest.sh`),
    /// copied for each run.
    pub image: PathBuf,
    /// The package (`make deb`).
    pub deb: PathBuf,
    /// The kernel release the package is for.
    pub krel: String,
}

impl Install {
    /// Reads `BALLOON_DEBIAN_IMAGE`, `BALLOON_DEB` and `BALLOON_DEB_KREL`;
    /// unset or missing is an error saying to run `make test-install`.
    pub fn from_env() -> Result<Install> {
        let var = |name: &str| -> Result<String> {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .with_context(|| {
                    format!("{name} is not set: run this test with `make test-install`")
                })
        };
        let i = Install {
            image: var("BALLOON_DEBIAN_IMAGE")?.into(),
            deb: var("BALLOON_DEB")?.into(),
            krel: var("BALLOON_DEB_KREL")?,
        };
        for f in [&i.image, &i.deb] {
            ensure!(
                f.is_file(),
                "{} does not exist: run `make test-install`",
                f.display()
            );
        }
        Ok(i)
    }
}

/// Runs `debugfs -R request image` (e2fsprogs: reads the ext4 image
/// without mounting it) and returns its output.
fn debugfs(image: &Path, request: &str) -> Result<String> {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .context("running debugfs (install e2fsprogs; `make setup` does)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "debugfs -R '{request}' {} failed: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// The kernel releases with a `/boot/vmlinuz-<release>` in the image.
fn kernels_in(image: &Path) -> Result<Vec<String>> {
    // `ls -p`: /inode/mode/uid/gid/name/size/ per entry.
    let listing = debugfs(image, "ls -p /boot")?;
    Ok(listing
        .lines()
        .filter_map(|l| l.split('/').nth(5))
        .filter_map(|name| name.strip_prefix("vmlinuz-"))
        .map(str::to_string)
        .collect())
}

/// Copies `/boot/<name>` out of the image into `dir`, as it is now (the
/// initrd changes when packages regenerate it).
fn boot_file(image: &Path, name: &str, dir: &Path) -> Result<PathBuf> {
    let to = dir.join(name);
    let _ = std::fs::remove_file(&to);
    debugfs(image, &format!("dump /boot/{name} {}", to.display()))?;
    ensure!(
        to.metadata().map(|m| m.len() > 0).unwrap_or(false),
        "/boot/{name} is not in {} (or is empty)",
        image.display()
    );
    Ok(to)
}

/// A disk image (ext4, label `pkgs`) holding `file`, for the guest to mount.
fn package_disk(file: &Path, dir: &Path) -> Result<PathBuf> {
    let content = dir.join("pkgs");
    std::fs::create_dir_all(&content)?;
    let name = file.file_name().context("package path has no file name")?;
    std::fs::copy(file, content.join(name))
        .with_context(|| format!("copying {}", file.display()))?;
    let img = dir.join("pkgs.img");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "pkgs", "-d"])
        .arg(&content)
        .arg(&img)
        .arg("64M")
        .output()
        .context("running mkfs.ext4 (install e2fsprogs)")?;
    ensure!(
        out.status.success(),
        "mkfs.ext4 -d {} failed: {}",
        content.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(img)
}

/// A digest of the file at `path` (to tell whether an initrd changed).
fn file_digest(path: &Path) -> Result<u64> {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Ok(h.finish())
}

/// The guest's disks and where the kernel files go.
struct Guest {
    root: PathBuf,
    pkgs: PathBuf,
    dir: PathBuf,
    /// The kernel and the digest of its initrd, boot by boot.
    initrds: std::cell::RefCell<Vec<(String, u64)>>,
}

impl Guest {
    /// Boots kernel `krel` from the image with Debian's initrd for it, root
    /// on the image, systemd as init; waits for the agent.
    fn boot(&self, krel: &str, name: &str) -> Result<Vm> {
        let kernel = boot_file(&self.root, &format!("vmlinuz-{krel}"), &self.dir)?;
        let initrd = boot_file(&self.root, &format!("initrd.img-{krel}"), &self.dir)?;
        self.initrds
            .borrow_mut()
            .push((krel.to_string(), file_digest(&initrd)?));
        let image = GuestImage::with_kernel(&kernel, &initrd)?;
        let cfg = VmConfig::new(name)
            .memory_mib(GUEST_MIB)
            .numa_nodes(1)
            .data_disk_mib(None)
            .swap_mib(None)
            .attach_disk("root", &self.root)
            .attach_disk("pkgs", &self.pkgs)
            .cmdline_arg("root=LABEL=debian-root")
            .cmdline_arg("rw")
            // udev says which modules it loads, in the journal.
            .cmdline_arg("udev.log_level=debug")
            .boot_timeout(Duration::from_secs(240));
        let mut vm = Vm::boot_with_image(cfg, image)?;
        let running = vm.run_ok("uname -r; systemctl is-system-running --wait || true")?;
        vm.note(&format!(
            "booted Debian, kernel and state: {}",
            running.trim().replace('\n', ", ")
        ));
        let r = running
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        ensure!(r == krel, "booted kernel {r}, expected {krel}");
        Ok(vm)
    }
}

/// Which balloon driver this boot has: the one bound to the device, the
/// balloon modules loaded, and what udev said about loading them.
#[derive(Debug)]
struct Drivers {
    bound: Option<String>,
    loaded: Vec<String>,
    udev: Vec<String>,
}

fn drivers(vm: &mut Vm) -> Result<Drivers> {
    let bound = vm.balloon_driver()?;
    let modules = vm.run_ok("cut -d' ' -f1 /proc/modules")?;
    let loaded = modules
        .lines()
        .filter(|m| *m == C_MODULE || *m == RS_MODULE)
        .map(str::to_string)
        .collect();
    // systemd-udevd, at debug level, logs each module it loads for a
    // device's modalias (its workers' lines are not all under its unit).
    let udev = vm.run_ok(
        "journalctl -b -o cat 2>/dev/null | \
         grep -E \"virtio:d00000005|'virtio_balloon(_rs)?'\"",
    )?;
    let d = Drivers {
        bound,
        loaded,
        udev: udev.lines().map(str::to_string).collect(),
    };
    vm.note(&format!("balloon drivers: {d:#?}"));
    Ok(d)
}

/// This boot's balloon device is driven by `module` alone, loaded by udev.
fn expect_driver(vm: &mut Vm, module: &str) -> Result<()> {
    let d = drivers(vm)?;
    ensure!(
        d.bound.as_deref() == Some(module),
        "the balloon device is bound to {:?}, expected {module}: {d:#?}",
        d.bound
    );
    ensure!(
        d.loaded == [module],
        "balloon modules loaded: {:?}, expected {module} alone (never both, never neither): {d:#?}",
        d.loaded
    );
    ensure!(
        d.udev
            .iter()
            .any(|l| l.contains("Loading module: virtio:d00000005"))
            && d.udev.iter().any(|l| l.contains(&format!("'{module}'"))),
        "systemd-udevd's journal does not show it loading {module} for the balloon's \
         modalias: {d:#?}"
    );
    Ok(())
}

/// The balloon moves with ours, and the user's option took effect: it
/// inflates to half the guest; asked for all but 16 MiB it holds at the
/// reserve the option set (ours logs it; a module's parameters are not in
/// sysfs); it deflates back.
fn balloon_moves(vm: &mut Vm) -> Result<()> {
    balloon_to_within(vm, GUEST_MIB / 2 * MIB, MOVE_TIMEOUT)?;
    let mark = vm.console_mark();
    vm.set_balloon_target_bytes(16 * MIB)?;
    let held = vm.wait_console(mark, "holding the balloon", MOVE_TIMEOUT)?;
    vm.note(&format!("balloon target 16 MiB: {}", held.trim()));
    let want = format!("less than {} MiB available", OPTION.1);
    ensure!(
        held.contains(&want),
        "the balloon held at another reserve than `options {RS_MODULE} {}={}` sets: {held}",
        OPTION.0,
        OPTION.1
    );
    balloon_to_within(vm, GUEST_MIB * MIB, MOVE_TIMEOUT)
}

/// Files of ours anywhere on the guest's root file system, but the
/// options file the test wrote (the user's, which stays as any file a user
/// writes in /etc) and those under `except`.
fn leftovers(vm: &mut Vm, except: &str) -> Result<String> {
    vm.run_ok(&format!(
        "find / -xdev \\( -name '*virtio_balloon_rs*' -o -name '*virtio-balloon-rs*' \\) \
         ! -path {OPTIONS_FILE} ! -path '/mnt/pkgs/*' ! -path '{except}/*' -print"
    ))
}

/// Runs an apt command (noninteractive) in the guest, notes its output
/// under `what`, and fails if it fails.
fn apt(vm: &mut Vm, what: &str, cmd: &str) -> Result<String> {
    let out = vm.run_timeout(
        &format!("export DEBIAN_FRONTEND=noninteractive; {cmd} 2>&1"),
        Duration::from_secs(600),
    )?;
    vm.note(&format!("{what}: {}", out.output));
    ensure!(
        out.code == 0,
        "{what} failed (exit {}): {}",
        out.code,
        out.output
    );
    Ok(out.output)
}

/// One run of the test: the guest, the package, the other kernel.
struct Run {
    inst: Install,
    guest: Guest,
    /// The package's file name and its package name.
    pkg_file: String,
    pkg: String,
    /// A kernel of the image with no package of ours.
    other: String,
    /// The test's directory (the image copy, the kernel files).
    _tmp: tempfile::TempDir,
}

impl Run {
    /// A fresh copy of the image, the package disk, the other kernel.
    fn new(inst: Install) -> Result<Run> {
        let tmp = tempfile::Builder::new()
            .prefix("balloon-install-")
            .tempdir()
            .context("creating the test's directory")?;
        let dir = tmp.path().to_path_buf();
        let root = dir.join("root.img");
        let out = Command::new("cp")
            .args(["--sparse=always"])
            .arg(&inst.image)
            .arg(&root)
            .output()
            .context("copying the guest image")?;
        ensure!(
            out.status.success(),
            "cp {} failed: {}",
            inst.image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let other = kernels_in(&root)?
            .into_iter()
            .find(|k| *k != inst.krel)
            .context(
                "the guest image has no second kernel (scripts/debian-guest.sh installs one)",
            )?;
        let pkg_file = inst
            .deb
            .file_name()
            .and_then(|n| n.to_str())
            .context("package file name")?
            .to_string();
        let pkg = pkg_file.split('_').next().unwrap_or_default().to_string();
        let guest = Guest {
            pkgs: package_disk(&inst.deb, &dir)?,
            root,
            dir,
            initrds: Default::default(),
        };
        Ok(Run {
            inst,
            guest,
            pkg_file,
            pkg,
            other,
            _tmp: tmp,
        })
    }

    /// Boot 1, before the package: Debian's C driver. Then the package, from
    /// the second disk, as a user installs a local .deb, and the option as
    /// a user sets it.
    fn before_then_install(&self) -> Result<()> {
        let (pkg, pkg_file) = (&self.pkg, &self.pkg_file);
        let mut vm = self.guest.boot(&self.inst.krel, "install-1-before")?;
        expect_driver(&mut vm, C_MODULE).context("boot 1, before the package")?;
        let installed = apt(
            &mut vm,
            "apt install",
            &format!(
                "mkdir -p /mnt/pkgs && mount -o ro /dev/disk/by-label/pkgs /mnt/pkgs && \
                 cd /mnt/pkgs && apt install -y ./{pkg_file} && \
                 echo 'options {RS_MODULE} {}={}' > {OPTIONS_FILE} && \
                 dpkg-query -W -f='${{Status}} ${{Version}}\\n' {pkg} && dpkg -L {pkg}",
                OPTION.0, OPTION.1
            ),
        )?;
        ensure!(
            installed.contains("install ok installed"),
            "after apt install ./{pkg_file}, dpkg does not list {pkg} as installed"
        );
        vm.shutdown()
    }

    /// Boot 2, after the package: ours, loaded by udev, its version the
    /// package's, with the user's option; the balloon moves. Then ours is
    /// refused for the next boot.
    fn installed(&self) -> Result<()> {
        let mut vm = self.guest.boot(&self.inst.krel, "install-2-installed")?;
        expect_driver(&mut vm, RS_MODULE).context("boot 2, with the package")?;
        // README "Installing"'s check, as a user types it.
        let check = vm.run_ok(&format!(
            "ls /sys/bus/virtio/drivers/; cat /sys/module/{RS_MODULE}/version"
        ))?;
        vm.note(&format!(
            "ls /sys/bus/virtio/drivers/; cat /sys/module/{RS_MODULE}/version:\n{check}"
        ));
        let version = check.lines().last().unwrap_or_default().trim();
        let pkg_version = self.pkg_file.split('_').nth(1).unwrap_or_default();
        ensure!(
            pkg_version.starts_with(&format!("{version}+")),
            "the loaded module's version ({version}) is not the package's ({pkg_version})"
        );
        balloon_moves(&mut vm)?;
        // For the next boot (`refused`).
        vm.run_ok(&format!(
            "echo 'install {RS_MODULE} /bin/false' > {KEEP_C_FILE}"
        ))?;
        vm.shutdown()
    }

    /// Boot 2b, ours refused (README's way to keep C on this kernel with the
    /// package installed, and what an unsigned module under Secure Boot
    /// amounts to): C binds, the device is never left without a driver.
    /// And the package never changed the initrd (it has no balloon
    /// driver): the same bytes at every boot of the package's kernel.
    fn refused(&self) -> Result<()> {
        let mut vm = self
            .guest
            .boot(&self.inst.krel, "install-2b-ours-refused")?;
        expect_driver(&mut vm, C_MODULE).context("boot 2b, ours refused to load")?;
        vm.run_ok(&format!("rm {KEEP_C_FILE}"))?;
        vm.shutdown()?;
        let initrds = self.guest.initrds.borrow().clone();
        let ours: Vec<u64> = initrds
            .iter()
            .filter(|(k, _)| *k == self.inst.krel)
            .map(|(_, d)| *d)
            .collect();
        ensure!(
            ours.windows(2).all(|w| w[0] == w[1]),
            "the initrd of {} changed across boots: {initrds:?}",
            self.inst.krel
        );
        Ok(())
    }

    /// Boot 3, another kernel, no package of ours for it: C. Then `apt remove`:
    /// every file the package installed is gone (dpkg keeps its record,
    /// and the postrm a purge runs, until a purge, as for any package with
    /// maintainer scripts), and postrm ran depmod; `apt purge`: nothing.
    fn other_kernel_then_remove(&self) -> Result<()> {
        let pkg = &self.pkg;
        let mut vm = self.guest.boot(&self.other, "install-3-other-kernel")?;
        expect_driver(&mut vm, C_MODULE).context("boot 3, a kernel without a package of ours")?;
        let removed = apt(
            &mut vm,
            "apt remove",
            &format!("apt-get remove -y {pkg} && dpkg-query -W -f='${{Status}}\\n' {pkg}"),
        )?;
        ensure!(
            removed.contains("deinstall ok config-files"),
            "after apt remove, dpkg does not list {pkg} as removed"
        );
        let left = leftovers(&mut vm, "/var/lib/dpkg/info")?;
        ensure!(
            left.trim().is_empty(),
            "after apt remove, files of ours are left: {left}"
        );
        let index = vm.run_ok(&format!(
            "grep -l {RS_MODULE} /usr/lib/modules/*/modules.alias \
             /usr/lib/modules/*/modules.dep || true"
        ))?;
        ensure!(
            index.trim().is_empty(),
            "after apt remove, module indexes still name {RS_MODULE}: {index}"
        );
        apt(&mut vm, "apt purge", &format!("apt-get purge -y {pkg}"))?;
        let left = leftovers(&mut vm, "/nonexistent")?;
        ensure!(
            left.trim().is_empty(),
            "after apt purge, files of ours are left: {left}"
        );
        vm.shutdown()
    }

    /// Boot 4, the package's kernel, the package removed: C again.
    fn removed(&self) -> Result<()> {
        let mut vm = self.guest.boot(&self.inst.krel, "install-4-removed")?;
        expect_driver(&mut vm, C_MODULE).context("boot 4, after apt remove")?;
        vm.shutdown()
    }
}

/// The whole install, boot by boot (module docs).
pub fn debian_package_install() -> Result<()> {
    let run = Run::new(Install::from_env()?)?;
    run.before_then_install()?;
    run.installed()?;
    run.refused()?;
    run.other_kernel_then_remove()?;
    run.removed()
}
