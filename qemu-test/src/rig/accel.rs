//! Choosing the accelerator: `ACCEL=tcg|kvm|auto` (default `auto`).
//!
//! `auto` uses KVM only if `/dev/kvm` opens read-write *and* a short probe
//! boot with `-accel kvm` reaches `BALLOON-GUEST-READY` (a `/dev/kvm` may
//! exist on which no guest gets through early boot, e.g. a nested PVM
//! device). The verdict is cached in
//! `$BALLOON_CACHE/accel-probe-<hash of qemu --version and uname -r>` so the
//! probe runs once per host; otherwise TCG is used, with a one-time warning.

use anyhow::{bail, Context, Result};
use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// How long the KVM probe boot may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Accel {
    /// Software emulation (always works, slow).
    Tcg,
    /// Hardware virtualization through `/dev/kvm`.
    Kvm,
}

impl Accel {
    /// The `-accel` value.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.qemu_name())
    }
}

/// What the user asked for in `ACCEL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelRequest {
    /// `ACCEL=tcg`.
    Tcg,
    /// `ACCEL=kvm`: KVM or fail.
    Kvm,
    /// `ACCEL=auto` or unset.
    Auto,
}

impl AccelRequest {
    /// Reads `ACCEL` from the environment.
    pub fn from_env() -> Result<AccelRequest> {
        match std::env::var("ACCEL").unwrap_or_default().trim() {
            "" | "auto" => Ok(AccelRequest::Auto),
            "tcg" => Ok(AccelRequest::Tcg),
            "kvm" => Ok(AccelRequest::Kvm),
            other => bail!("ACCEL={other:?} is not one of tcg, kvm, auto"),
        }
    }
}

/// The project's cache directory: `$BALLOON_CACHE`, else
/// `${XDG_CACHE_HOME:-~/.cache}/virtio-balloon-rs` (as `scripts/lib.sh`).
pub fn cache_dir() -> PathBuf {
    if let Some(c) = std::env::var_os("BALLOON_CACHE").filter(|c| !c.is_empty()) {
        return c.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
    base.join("virtio-balloon-rs")
}

/// Whether `/dev/kvm` opens read-write (the error says why not).
pub fn kvm_openable() -> Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .context("cannot open /dev/kvm read-write")
}

/// FNV-1a, 64 bit: a stable hash for the cache key.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The cache file holding this host's probe verdict.
pub fn probe_cache_file() -> Result<PathBuf> {
    let host = crate::rig::arch::Arch::host();
    let version = std::process::Command::new(crate::rig::qemu::qemu_binary(host))
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", host.qemu_binary_name()))?;
    let uname = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .context("running uname -r")?;
    let mut key = version.stdout;
    key.extend_from_slice(&uname.stdout);
    Ok(cache_dir().join(format!("accel-probe-{:016x}", fnv1a(&key))))
}

/// A cached verdict: `kvm`, or `tcg` and the reason.
fn read_verdict(path: &std::path::Path) -> Option<(Accel, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let accel = match first.trim() {
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        _ => return None,
    };
    Some((accel, rest.trim().to_string()))
}

/// A probe boot with `-accel kvm` (the caller's: this module boots
/// nothing itself): `Ok` if the guest got through early boot within
/// [`PROBE_TIMEOUT`].
pub type Probe<'a> = &'a dyn Fn() -> Result<()>;

/// Resolves an `auto` request: cached verdict, else (given a `probe`) a
/// probe boot whose verdict is cached, else TCG. Returns the accelerator
/// and, for TCG, why.
fn resolve_auto(probe: Option<Probe<'_>>) -> Result<(Accel, String)> {
    if let Err(e) = kvm_openable() {
        return Ok((Accel::Tcg, format!("{e:#}")));
    }
    let cache = probe_cache_file()?;
    if let Some(v) = read_verdict(&cache) {
        return Ok(v);
    }
    let Some(probe) = probe else {
        return Ok((
            Accel::Tcg,
            format!(
                "/dev/kvm has not been probed yet on this host (no {})",
                cache.display()
            ),
        ));
    };
    eprintln!(
        "qemu-test: probing KVM (a {}-second test boot with -accel kvm)...",
        PROBE_TIMEOUT.as_secs()
    );
    let verdict = match probe() {
        Ok(()) => (Accel::Kvm, String::new()),
        Err(e) => {
            let first = format!("{e:#}");
            let first = first.lines().next().unwrap_or("").to_string();
            (
                Accel::Tcg,
                format!(
                    "the KVM probe boot failed ({first}); verdict cached in {}",
                    cache.display()
                ),
            )
        }
    };
    let body = format!("{}\n{}\n", verdict.0, verdict.1);
    if let Some(dir) = cache.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    if let Err(e) = std::fs::write(&cache, body) {
        eprintln!(
            "qemu-test: warning: cannot cache the KVM probe verdict in {}: {e}",
            cache.display()
        );
    }
    Ok(verdict)
}

/// Resolves `request` to an accelerator. With a `probe`, an unprobed
/// `auto` runs it; without one, `auto` uses the cached verdict or TCG.
/// `kvm` fails unless `/dev/kvm` is usable.
pub fn resolve(request: AccelRequest, probe: Option<Probe<'_>>) -> Result<(Accel, String)> {
    match request {
        AccelRequest::Tcg => Ok((Accel::Tcg, "ACCEL=tcg".into())),
        AccelRequest::Kvm => {
            kvm_openable().context("ACCEL=kvm but KVM is not usable (use ACCEL=tcg or auto)")?;
            Ok((Accel::Kvm, "ACCEL=kvm".into()))
        }
        AccelRequest::Auto => resolve_auto(probe),
    }
}

/// The accelerator for a guest of another architecture than the host's
/// (an arm64 guest on an x86_64 host): TCG, as KVM cannot run it;
/// `ACCEL=kvm` is an error. Announced once on stderr.
pub fn foreign_guest_accel(guest: crate::rig::arch::Arch) -> Result<Accel> {
    let host = crate::rig::arch::Arch::host();
    if AccelRequest::from_env()? == AccelRequest::Kvm {
        bail!(
            "ACCEL=kvm, but KVM cannot run an {guest} guest on this {host} host \
             (use ACCEL=tcg or auto)"
        );
    }
    static ANNOUNCED: std::sync::Once = std::sync::Once::new();
    ANNOUNCED.call_once(|| {
        eprintln!("qemu-test: accelerator: tcg (an {guest} guest on an {host} host)")
    });
    Ok(Accel::Tcg)
}

static PROCESS_ACCEL: OnceLock<Result<Accel, String>> = OnceLock::new();

/// The accelerator for this process's VMs (resolved once, with `probe` if
/// needed, and announced once on stderr).
pub fn process_accel(probe: Probe<'_>) -> Result<Accel> {
    let r = PROCESS_ACCEL.get_or_init(|| {
        let res = AccelRequest::from_env().and_then(|req| resolve(req, Some(probe)));
        match res {
            Ok((accel, why)) => {
                match accel {
                    Accel::Kvm => eprintln!("qemu-test: accelerator: kvm"),
                    Accel::Tcg if why == "ACCEL=tcg" => {
                        eprintln!("qemu-test: accelerator: tcg (ACCEL=tcg)")
                    }
                    Accel::Tcg => eprintln!("qemu-test: warning: accelerator: tcg (slow): {why}"),
                }
                Ok(accel)
            }
            Err(e) => Err(format!("{e:#}")),
        }
    });
    r.clone().map_err(|e| anyhow::anyhow!(e))
}
