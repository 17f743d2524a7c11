//! The host side of the benchmark: CPU time of QEMU's threads, the host's
//! huge page pool for hugetlb backing, and collapsing the host's
//! transparent huge pages again before each run.

use super::*;

/// Re-collapsing the host's transparent huge pages before a run.
#[derive(Debug, Clone, Default)]
pub struct Collapse {
    /// Seconds `process_madvise(MADV_COLLAPSE)` took.
    pub secs: f64,
    /// Guest RAM in host huge pages before, bytes.
    pub anon_huge_before: u64,
    /// And after.
    pub anon_huge_after: u64,
    /// What `process_madvise(MADV_COLLAPSE)` did per 2 MiB range.
    pub ranges: hostmem::Collapsed,
}

/// A `/proc/<pid>/task/<tid>/stat` line's thread name and CPU ticks
/// (utime + stime, in USER_HZ), `None` if the line is malformed.
pub(super) fn stat_comm_ticks(stat: &str) -> Option<(&str, u64)> {
    // comm is in parentheses and may contain spaces and parentheses.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let rest: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the state.
    let ticks = rest
        .get(11..13)?
        .iter()
        .map(|x| x.parse::<u64>().ok())
        .sum::<Option<u64>>()?;
    Some((stat.get(open + 1..close)?, ticks))
}

/// Host CPU seconds of each QEMU thread, by thread name.
pub(super) fn qemu_threads(pid: u32) -> Result<BTreeMap<String, f64>> {
    // USER_HZ, the unit of /proc/*/stat times, is 100 on Linux.
    let hz = 100.0;
    let mut out = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let Some((comm, ticks)) = stat_comm_ticks(&stat) else {
            continue;
        };
        // Group "CPU 0/TCG", "CPU 1/TCG" as vCPUs; keep other names.
        let name = if comm.starts_with("CPU ") {
            "vcpu".to_string()
        } else {
            comm.to_string()
        };
        *out.entry(name).or_insert(0.0) += ticks as f64 / hz;
    }
    Ok(out)
}

/// Checks the host can give the configured backing and, for hugetlb, grows
/// the pool by what the guest needs (restored when the guard drops).
pub(super) fn host_setup(
    opts: &BenchOpts,
    cfg: &VmConfig,
) -> Result<(String, Option<HugePagePool>)> {
    let thp = hostmem::thp_mode().unwrap_or_else(|_| "unsupported".into());
    match opts.backing {
        Backing::Anonymous => {
            ensure!(
                thp == "always" || thp == "madvise",
                "--backing thp: the host's transparent huge pages are [{thp}] in {}, so QEMU's \
                 guest RAM would be 4 KiB pages: `echo madvise > {}` (QEMU madvises guest RAM \
                 MADV_HUGEPAGE), or use --backing 4k",
                hostmem::THP_ENABLED,
                hostmem::THP_ENABLED
            );
            Ok((thp, None))
        }
        Backing::Anonymous4k => Ok((thp, None)),
        Backing::Hugetlb2M => {
            let blocks = crate::rig::qemu::ram_block_mib(cfg);
            ensure!(
                blocks.iter().all(|m| (m * MIB).is_multiple_of(HUGE_PAGE)),
                "--backing hugetlb: RAM blocks of {blocks:?} MiB are not multiples of 2 MiB \
                 (use an even --guest-mib per NUMA node)"
            );
            let need = cfg.memory_bytes() / HUGE_PAGE + HUGE_PAGE_MARGIN;
            let pool = HugePagePool::grow(need)?;
            let free = hostmem::free_huge_pages()?;
            ensure!(
                free >= need,
                "--backing hugetlb: only {free} free 2 MiB pages in the host's pool after \
                 adding {need}; someone else is using them"
            );
            Ok((thp, Some(pool)))
        }
    }
}

/// THP backing: collapses the host's huge pages an earlier run split, so
/// every run starts with the guest RAM backed as after the first touch.
pub(super) fn collapse(vm: &Vm, sizes: &[u64]) -> Result<Collapse> {
    let pid = vm.pid();
    let vmas = hostmem::guest_ram_vmas(pid, sizes)?;
    let before = vmas.iter().map(|v| v.anon_huge).sum();
    let t0 = Instant::now();
    let ranges = hostmem::collapse(pid, &vmas)?;
    let secs = t0.elapsed().as_secs_f64();
    let after = hostmem::guest_ram_vmas(pid, sizes)?
        .iter()
        .map(|v| v.anon_huge)
        .sum();
    Ok(Collapse {
        secs,
        anon_huge_before: before,
        anon_huge_after: after,
        ranges,
    })
}

#[cfg(test)]
mod tests {
    use super::stat_comm_ticks;

    #[test]
    fn a_stat_line_gives_its_name_and_utime_plus_stime() {
        // A name with a space and a parenthesis; utime 7, stime 5.
        let line = "42 (CPU 0/TC) G) R 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 9";
        assert_eq!(stat_comm_ticks(line), Some(("CPU 0/TC) G", 12)));
        assert_eq!(stat_comm_ticks("42 (short) R 1 2"), None);
    }
}
