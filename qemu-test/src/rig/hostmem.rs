//! Host memory as the benchmark sees it: transparent huge pages, the pool
//! of 2 MiB hugetlb pages, and how QEMU's guest RAM is backed by them.
//!
//! The few system calls (`prctl`, `getppid`, `pidfd_open`, `process_madvise`) go
//! through the C library the standard library links anyway.

use anyhow::{bail, ensure, Context, Result};
use std::ffi::{c_int, c_long, c_ulong, c_void};
use std::path::{Path, PathBuf};

/// The host's THP mode file.
pub const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
/// The host's pool of 2 MiB hugetlb pages.
pub const HUGEPAGES_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";
/// A huge page (PMD) on x86-64: 2 MiB.
pub const HUGE_PAGE: u64 = 2 << 20;

extern "C" {
    fn prctl(option: c_int, ...) -> c_int;
    fn syscall(number: c_long, ...) -> c_long;
    fn close(fd: c_int) -> c_int;
    fn getppid() -> c_int;
}

const PR_SET_THP_DISABLE: c_int = 41;
const PR_SET_PDEATHSIG: c_int = 1;
const SIGKILL: c_ulong = 9;
const SYS_PIDFD_OPEN: c_long = 434;
const SYS_PROCESS_MADVISE: c_long = 440;
const MADV_COLLAPSE: c_long = 25;

/// Disables transparent huge pages for the calling process and everything
/// it executes (`prctl(PR_SET_THP_DISABLE)`: the flag is inherited by
/// `fork()` and kept across `execve()`). Only one system call, so it may
/// run between `fork()` and `exec()` ([`std::os::unix::process::CommandExt::pre_exec`]).
pub fn disable_thp_for_this_process() -> std::io::Result<()> {
    let zero: c_ulong = 0;
    // SAFETY: prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) only sets a flag of the
    // calling process's mm; all arguments are unsigned longs as it expects.
    let r = unsafe { prctl(PR_SET_THP_DISABLE, 1 as c_ulong, zero, zero, zero) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the kernel kill the calling process (SIGKILL) when the thread
/// that forked it exits (`prctl(PR_SET_PDEATHSIG)`, kept across
/// `execve()`), so that a QEMU started by a test does not outlive a test
/// binary that is killed: only unwinding runs `Drop`. The VMs are started
/// and dropped by the test's own thread. `parent` is the forking process's
/// pid: if it is gone already (the child was reparented), fails with
/// ESRCH. System calls only, no allocation, so it may run between `fork()`
/// and `exec()`.
pub fn die_with_parent(parent: c_int) -> std::io::Result<()> {
    const ESRCH: i32 = 3;
    let zero: c_ulong = 0;
    // SAFETY: prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) only sets the
    // calling process's parent-death signal; the arguments are unsigned
    // longs as it expects.
    let r = unsafe { prctl(PR_SET_PDEATHSIG, SIGKILL, zero, zero, zero) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: getppid() has no arguments and cannot fail.
    if unsafe { getppid() } != parent {
        return Err(std::io::Error::from_raw_os_error(ESRCH));
    }
    Ok(())
}

/// The host's transparent huge page mode (`always`, `madvise` or `never`),
/// the bracketed word of [`THP_ENABLED`].
pub fn thp_mode() -> Result<String> {
    let text = std::fs::read_to_string(THP_ENABLED)
        .with_context(|| format!("reading {THP_ENABLED} (no THP support on this host?)"))?;
    parse_bracketed(&text).with_context(|| format!("no [mode] in {THP_ENABLED}: {text:?}"))
}

fn parse_bracketed(text: &str) -> Option<String> {
    let open = text.find('[')?;
    let close = open + text[open..].find(']')?;
    Some(text[open + 1..close].to_string())
}

fn read_u64(path: &Path) -> Result<u64> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("bad number {text:?} in {}", path.display()))
}

/// Free 2 MiB huge pages in the host's pool (`free_hugepages`; it counts
/// pages reserved by a mapping but not yet faulted in as free).
pub fn free_huge_pages() -> Result<u64> {
    read_u64(&Path::new(HUGEPAGES_2M).join("free_hugepages"))
}

/// Huge pages added to the host's 2 MiB pool for the lifetime of the
/// value: dropping it (also when unwinding from an error or a panic, but
/// not on SIGKILL) takes the pages it added off `nr_hugepages` again.
#[derive(Debug)]
pub struct HugePagePool {
    nr_path: PathBuf,
    previous: u64,
    /// Pages this guard added.
    pub added: u64,
}

impl HugePagePool {
    /// Grows the pool by `pages` 2 MiB pages: writes `nr_hugepages` to its
    /// current value plus `pages` and checks the kernel found them (it
    /// allocates what it can and says nothing), compacting memory once if
    /// it did not. Fails, with the pool as it was, when not root or when
    /// the host memory is too fragmented.
    pub fn grow(pages: u64) -> Result<HugePagePool> {
        let dir = Path::new(HUGEPAGES_2M);
        ensure!(
            dir.is_dir(),
            "{HUGEPAGES_2M} does not exist: this host kernel has no 2 MiB hugetlb pages \
             (CONFIG_HUGETLBFS); use --backing thp or 4k"
        );
        let nr_path = dir.join("nr_hugepages");
        let previous = read_u64(&nr_path)?;
        let want = previous + pages;
        let mut pool = HugePagePool {
            nr_path,
            previous,
            added: 0,
        };
        for attempt in 0..2 {
            if attempt == 1 {
                // Huge pages need physically contiguous 2 MiB: compact once.
                let _ = std::fs::write("/proc/sys/vm/compact_memory", "1");
            }
            if let Err(e) = std::fs::write(&pool.nr_path, want.to_string()) {
                bail!(
                    "cannot write {} ({e}): reserving hugetlb pages for --backing hugetlb \
                     needs root; run the benchmark as root, or reserve {want} pages \
                     yourself (`echo {want} > {}`) and use --backing thp or 4k",
                    pool.nr_path.display(),
                    pool.nr_path.display()
                );
            }
            let got = read_u64(&pool.nr_path)?;
            pool.added = got.saturating_sub(previous);
            if got >= want {
                return Ok(pool);
            }
        }
        let got = previous + pool.added;
        drop(pool);
        bail!(
            "the host gave only {got} of the {want} 2 MiB huge pages asked for (nr_hugepages \
             was {previous}; {pages} more needed for the guest): not enough free contiguous \
             memory. Free some memory (stop other VMs, `echo 3 > /proc/sys/vm/drop_caches`, \
             `echo 1 > /proc/sys/vm/compact_memory`) and retry, or reserve them at boot \
             (kernel parameter hugepages={want}), or use a smaller --guest-mib"
        )
    }
}

impl Drop for HugePagePool {
    /// Takes the pages it added off `nr_hugepages` as it is now, not back
    /// to the value it found: another user (a second test run, a second
    /// guard) may have grown the pool meanwhile, and writing the old value
    /// would take its pages from under its QEMU (which dies of SIGBUS when
    /// it faults in a page its discard gave back). Alone, that is the
    /// value it found.
    fn drop(&mut self) {
        if self.added == 0 {
            return;
        }
        let now = read_u64(&self.nr_path).unwrap_or(self.previous + self.added);
        let back = now.saturating_sub(self.added);
        if let Err(e) = std::fs::write(&self.nr_path, back.to_string()) {
            eprintln!(
                "warning: could not shrink {} back to {back} (found {}, added {}): {e}",
                self.nr_path.display(),
                self.previous,
                self.added
            );
        }
    }
}

/// One mapping of a process (`/proc/<pid>/smaps`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vma {
    /// Start address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Permissions, as `rw-p`.
    pub perms: String,
    /// Mapped file, `[heap]`, ..., or empty for anonymous memory.
    pub path: String,
    /// Resident bytes (`Rss`).
    pub rss: u64,
    /// Bytes mapped by transparent huge pages (`AnonHugePages`).
    pub anon_huge: u64,
    /// Bytes of hugetlb pages mapped (`Shared_Hugetlb` + `Private_Hugetlb`).
    pub hugetlb: u64,
}

/// Parses `/proc/<pid>/smaps` text.
pub fn parse_smaps(text: &str) -> Vec<Vma> {
    let mut vmas: Vec<Vma> = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                let perms = f.next().unwrap_or("").to_string();
                // offset, device, inode, then the path (may contain spaces).
                let path = f.skip(3).collect::<Vec<_>>().join(" ");
                vmas.push(Vma {
                    start,
                    len: end - start,
                    perms,
                    path,
                    ..Vma::default()
                });
                continue;
            }
        }
        let (Some(vma), Some(kb)) = (
            vmas.last_mut(),
            f.next().and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue;
        };
        match first {
            "Rss:" => vma.rss = kb * 1024,
            "AnonHugePages:" => vma.anon_huge = kb * 1024,
            "Shared_Hugetlb:" | "Private_Hugetlb:" => vma.hugetlb += kb * 1024,
            _ => {}
        }
    }
    vmas
}

/// The mappings of QEMU process `pid` that hold guest RAM: read-write,
/// private anonymous or a memfd, exactly as large as one of the RAM blocks
/// (`sizes`, bytes; one per memory backend). QEMU's other big mappings (the
/// TCG translation buffers) are executable or of other sizes.
pub fn guest_ram_vmas(pid: u32, sizes: &[u64]) -> Result<Vec<Vma>> {
    let path = format!("/proc/{pid}/smaps");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut left = sizes.to_vec();
    let mut out = Vec::new();
    for v in parse_smaps(&text) {
        let ram_like =
            v.perms.starts_with("rw") && (v.path.is_empty() || v.path.starts_with("/memfd:"));
        if let Some(i) = left.iter().position(|&s| ram_like && s == v.len) {
            left.remove(i);
            out.push(v);
        }
    }
    ensure!(
        left.is_empty(),
        "could not find QEMU's guest RAM mappings of {left:?} bytes in {path}"
    );
    Ok(out)
}

/// QEMU's host memory at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QemuMem {
    /// `VmRSS` + `HugetlbPages` of `/proc/<pid>/status` (hugetlb pages are
    /// not part of VmRSS), bytes.
    pub rss: u64,
    /// Resident bytes of the guest RAM mappings (4 KiB, THP and hugetlb).
    pub ram_rss: u64,
    /// Guest RAM backed by transparent huge pages (`AnonHugePages` of the
    /// guest RAM mappings), bytes.
    pub ram_anon_huge: u64,
    /// `AnonHugePages` of the whole process (with TCG's translation
    /// buffers), bytes.
    pub anon_huge: u64,
    /// Free 2 MiB pages in the host's hugetlb pool.
    pub free_huge_pages: u64,
}

fn status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether THP is enabled for process `pid` (`THP_enabled` of its status).
pub fn thp_enabled_for(pid: u32) -> Result<bool> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let v =
        status_kb(&text, "THP_enabled:").with_context(|| format!("no THP_enabled in {path}"))?;
    Ok(v != 0)
}

/// QEMU process `pid`'s memory; `sizes` are its RAM blocks (see
/// [`guest_ram_vmas`]).
pub fn qemu_mem(pid: u32, sizes: &[u64]) -> Result<QemuMem> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let rss = status_kb(&status, "VmRSS:").with_context(|| format!("no VmRSS in {path}"))?
        + status_kb(&status, "HugetlbPages:").unwrap_or(0);
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let all = parse_smaps(&smaps);
    let ram = guest_ram_vmas(pid, sizes)?;
    Ok(QemuMem {
        rss: rss * 1024,
        ram_rss: ram.iter().map(|v| v.rss + v.hugetlb).sum(),
        ram_anon_huge: ram.iter().map(|v| v.anon_huge).sum(),
        anon_huge: all.iter().map(|v| v.anon_huge).sum(),
        free_huge_pages: if Path::new(HUGEPAGES_2M).is_dir() {
            free_huge_pages()?
        } else {
            0
        },
    })
}

#[repr(C)]
struct IoVec {
    base: *mut c_void,
    len: usize,
}

/// What [`collapse`] did, in 2 MiB ranges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collapsed {
    /// Ranges now mapped by a huge page (already, or collapsed now).
    pub huge: u64,
    /// Ranges the kernel refused with `EINVAL`: no page table at all (never
    /// touched since QEMU started), nothing to collapse.
    pub unpopulated: u64,
    /// Ranges that failed otherwise (`EAGAIN`, `ENOMEM`, `EBUSY`: pages
    /// busy, or no free huge page on the host).
    pub failed: u64,
}

/// Backs QEMU's guest RAM with transparent huge pages again where an
/// earlier balloon inflate split them: `process_madvise(MADV_COLLAPSE)`
/// (Linux 6.1+; synchronous, independent of khugepaged and of its
/// `max_ptes_none`: missing 4 KiB pages are filled with zeroes, as the
/// guest would read them) on the guest RAM mappings. The kernel gives up on
/// a request at the first 2 MiB range without a page table (never touched,
/// or emptied by the balloon and its page table reclaimed), so failed
/// requests are split in halves down to single ranges; every request also
/// drains the LRU caches of all CPUs, so few large requests are cheaper
/// than one per range.
pub fn collapse(pid: u32, vmas: &[Vma]) -> Result<Collapsed> {
    // SAFETY: pidfd_open(pid, 0) returns a new descriptor or -1.
    let fd = unsafe { syscall(SYS_PIDFD_OPEN, pid as c_long, 0 as c_long) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("pidfd_open(QEMU)");
    }
    let mut done = Collapsed::default();
    for v in vmas {
        let start = v.start.next_multiple_of(HUGE_PAGE);
        let end = (v.start + v.len) / HUGE_PAGE * HUGE_PAGE;
        if end > start {
            collapse_range(fd, start, end - start, &mut done);
        }
    }
    // SAFETY: closes the descriptor opened above, once.
    unsafe { close(fd as c_int) };
    if done.huge == 0 && done.failed > 0 {
        bail!("process_madvise(MADV_COLLAPSE) failed on all of QEMU's guest RAM: {done:?}");
    }
    Ok(done)
}

/// `MADV_COLLAPSE` on `len` bytes at `start` (2 MiB aligned) of the
/// process behind pidfd `fd`, bisecting on failure.
fn collapse_range(fd: c_long, start: u64, len: u64, done: &mut Collapsed) {
    let iov = IoVec {
        base: start as *mut c_void,
        len: len as usize,
    };
    // SAFETY: process_madvise(pidfd, iov, 1, MADV_COLLAPSE, 0); the iovec
    // lives across the call and names memory of the other process, which the
    // kernel only reads the bounds of. Every argument is passed as a long,
    // as syscall() reads them.
    let r = unsafe {
        syscall(
            SYS_PROCESS_MADVISE,
            fd,
            &iov as *const IoVec as c_long,
            1 as c_long,
            MADV_COLLAPSE,
            0 as c_long,
        )
    };
    if r >= 0 {
        done.huge += len / HUGE_PAGE;
    } else if len == HUGE_PAGE {
        if std::io::Error::last_os_error().raw_os_error() == Some(EINVAL) {
            done.unpopulated += 1;
        } else {
            done.failed += 1;
        }
    } else {
        let half = len / HUGE_PAGE / 2 * HUGE_PAGE;
        collapse_range(fd, start, half, done);
        collapse_range(fd, start + half, len - half, done);
    }
}

const EINVAL: i32 = 22;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thp_mode_is_the_bracketed_word() {
        assert_eq!(
            parse_bracketed("always [madvise] never\n").as_deref(),
            Some("madvise")
        );
        assert_eq!(parse_bracketed("always madvise never"), None);
    }

    #[test]
    fn smaps_fields_per_mapping() {
        let text = "\
7f0000000000-7f0040000000 rw-p 00000000 00:00 0 
Rss:              262144 kB
AnonHugePages:    204800 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
7f0040000000-7f0080000000 rw-s 00000000 00:01 12 /memfd:ram-node1 (deleted)
Rss:                   0 kB
AnonHugePages:         0 kB
Shared_Hugetlb:    65536 kB
Private_Hugetlb:       0 kB
";
        let v = parse_smaps(text);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].len, 1 << 30);
        assert_eq!(v[0].path, "");
        assert_eq!(v[0].anon_huge, 200 << 20);
        assert_eq!(v[0].rss, 256 << 20);
        assert_eq!(v[1].path, "/memfd:ram-node1 (deleted)");
        assert_eq!(v[1].hugetlb, 64 << 20);
        assert_eq!(v[1].perms, "rw-s");
    }
}
