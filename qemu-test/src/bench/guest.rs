//! The guest side of the benchmark: the guest's free memory and huge
//! pages, compaction, our driver's counters, loading a driver, and putting
//! the guest in the state a run starts from.

use super::*;

/// The guest's free memory and huge pages at one moment.
#[derive(Debug, Clone, Default)]
pub struct GuestMem {
    /// `/proc/buddyinfo` as read.
    pub buddyinfo: String,
    /// Free blocks per order, summed over nodes and zones.
    pub free_blocks: Vec<u64>,
    /// `AnonHugePages` of `/proc/meminfo`, bytes.
    pub anon_huge: u64,
    /// `MemFree`, bytes.
    pub mem_free: u64,
    /// Free pages on the per-CPU lists (`count` of the pagesets in
    /// `/proc/zoneinfo`): free, but not in `/proc/buddyinfo`, and the
    /// first an order-0 allocation gets.
    pub pcp_pages: u64,
}

impl GuestMem {
    /// Free memory in blocks of order 9 (2 MiB) or more, counted in 2 MiB
    /// blocks.
    pub fn free_2m_blocks(&self) -> u64 {
        self.free_blocks
            .iter()
            .enumerate()
            .skip(9)
            .map(|(order, n)| n << (order - 9))
            .sum()
    }

    /// Free single 4 KiB pages (order 0).
    pub fn free_single_pages(&self) -> u64 {
        self.free_blocks.first().copied().unwrap_or(0)
    }
}

/// Free blocks per order in `/proc/buddyinfo`, summed over its lines
/// (`Node 0, zone   Normal  n0 n1 ... n10`).
pub fn parse_buddyinfo(text: &str) -> Vec<u64> {
    let mut sum: Vec<u64> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(z) = f.iter().position(|w| *w == "zone") else {
            continue;
        };
        for (order, n) in f.iter().skip(z + 2).enumerate() {
            let n: u64 = n.parse().unwrap_or(0);
            if sum.len() <= order {
                sum.resize(order + 1, 0);
            }
            sum[order] += n;
        }
    }
    sum
}

pub(super) fn guest_mem(vm: &mut Vm) -> Result<GuestMem> {
    let out = vm.run_ok(
        "cat /proc/buddyinfo; echo @@; cat /proc/meminfo; echo @@; \
         grep -E '^ +count:' /proc/zoneinfo",
    )?;
    let mut parts = out.split("@@");
    let (Some(buddy), Some(meminfo), Some(pcp)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("bad buddyinfo/meminfo/zoneinfo output {out:?}");
    };
    let m = crate::rig::stats::parse_meminfo(meminfo)?;
    Ok(GuestMem {
        buddyinfo: buddy.trim_end().to_string(),
        free_blocks: parse_buddyinfo(buddy),
        anon_huge: m.get("AnonHugePages").copied().unwrap_or(0),
        mem_free: m.get("MemFree").copied().unwrap_or(0),
        pcp_pages: pcp
            .split_whitespace()
            .filter_map(|w| w.parse::<u64>().ok())
            .sum(),
    })
}

/// The guest's `/proc/vmstat` counters [`Compaction`] records.
pub const COMPACT_COUNTERS: [&str; 4] = [
    "compact_migrate_scanned",
    "compact_success",
    "pgmigrate_success",
    "balloon_migrate",
];

/// Compacting the guest's memory once after the inflate (`--compact`).
#[derive(Debug, Clone, Default)]
pub struct Compaction {
    /// Seconds from writing `/proc/sys/vm/compact_memory` to the last
    /// change of the counters.
    pub secs: f64,
    /// QEMU's memory after the compaction.
    pub host: QemuMem,
    /// The guest before and after the compaction.
    pub guest: [GuestMem; 2],
    /// [`COMPACT_COUNTERS`] before and after (a counter the guest kernel
    /// lacks is absent).
    pub vmstat: [BTreeMap<String, u64>; 2],
}

impl Compaction {
    /// How much a counter rose, `None` if the guest kernel lacks it.
    pub fn counter(&self, name: &str) -> Option<u64> {
        Some(
            self.vmstat[1]
                .get(name)?
                .saturating_sub(*self.vmstat[0].get(name)?),
        )
    }
}

pub(super) fn compact_counters(vm: &mut Vm) -> Result<BTreeMap<String, u64>> {
    let out = vm.run_ok("cat /proc/vmstat")?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            COMPACT_COUNTERS
                .contains(&k)
                .then(|| Some((k.to_string(), v.trim().parse().ok()?)))?
        })
        .collect())
}

/// Compacts the guest's memory once and waits until the counters have
/// held for 2 s (kcompactd may go on after the write returns; at most a
/// minute), then records QEMU's memory and the guest's.
pub(super) fn compact(vm: &mut Vm, sizes: &[u64]) -> Result<Compaction> {
    let guest0 = guest_mem(vm)?;
    let before = compact_counters(vm)?;
    let t0 = Instant::now();
    vm.run_timeout(
        "echo 1 > /proc/sys/vm/compact_memory",
        Duration::from_secs(300),
    )?;
    let (mut last, mut since) = (compact_counters(vm)?, Instant::now());
    let mut secs = t0.elapsed().as_secs_f64();
    while t0.elapsed() < Duration::from_secs(60) && since.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(500));
        let now = compact_counters(vm)?;
        if now != last {
            (last, since) = (now, Instant::now());
            secs = t0.elapsed().as_secs_f64();
        }
    }
    Ok(Compaction {
        secs,
        host: hostmem::qemu_mem(vm.pid(), sizes)?,
        guest: [guest0, guest_mem(vm)?],
        vmstat: [before, last],
    })
}

/// Non-idle guest CPU time in seconds (`/proc/stat`, USER_HZ = 100).
pub(super) fn guest_busy(vm: &mut Vm) -> Result<f64> {
    let stat = vm.run_ok("head -1 /proc/stat")?;
    let v: Vec<u64> = stat
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    ensure!(v.len() >= 5, "bad /proc/stat line: {stat}");
    let total: u64 = v.iter().sum();
    let idle = v[3] + v[4];
    Ok((total - idle) as f64 / 100.0)
}

/// Our driver's debugfs counters (`name: value` lines), empty for C.
pub(super) fn counters(vm: &mut Vm, driver: Driver) -> Result<BTreeMap<String, u64>> {
    if driver != Driver::Rust {
        return Ok(BTreeMap::new());
    }
    vm.rs_counters()
}

pub(super) fn load(vm: &mut Vm, driver: Driver) -> Result<()> {
    let other = match driver {
        Driver::C => Driver::Rust,
        Driver::Rust => Driver::C,
    };
    // `rmmod` may find the module busy for a while (on a loaded host,
    // seen with free page reporting on): try for a minute, and say what it
    // said.
    let mut said = String::new();
    for _ in 0..30 {
        said = vm.run_ok(&format!(
            "if grep -q '^{o} ' /proc/modules; then rmmod {o} 2>&1; fi; modprobe {d} 2>&1",
            o = other.module_name(),
            d = driver.module_name()
        ))?;
        if vm.balloon_driver()?.as_deref() == Some(driver.module_name()) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let bound = vm.balloon_driver()?;
    let diag = vm
        .run(&format!(
            "echo refcnt $(cat /sys/module/{o}/refcnt) holders: $(ls /sys/module/{o}/holders); \
             dmesg | tail -n 15",
            o = other.module_name()
        ))
        .map(|o| o.output)
        .unwrap_or_default();
    bail!(
        "balloon bound to {bound:?}, wanted {} (rmmod {} / modprobe said: {}; {})",
        driver.module_name(),
        other.module_name(),
        said.trim(),
        diag.trim()
    )
}

/// Sets up the guest's memory for one run; returns a command that ends
/// what it holds (after the deflate), if anything.
pub(super) fn prepare(
    vm: &mut Vm,
    opts: &BenchOpts,
    cache_file: &str,
) -> Result<Option<&'static str>> {
    match opts.guest_state {
        GuestState::Fresh => Ok(None),
        GuestState::Dirty => {
            let free = vm.meminfo_field("MemFree")?;
            let dirty = free.saturating_sub(GUEST_MARGIN_MIB * MIB);
            vm.run_ok(&format!(
                "dd if=/dev/zero of=/dev/null bs={dirty} count=1 2>&1"
            ))?;
            Ok(None)
        }
        GuestState::Cache => {
            vm.run_timeout(
                &format!("cat {cache_file} > /dev/null"),
                Duration::from_secs(600),
            )?;
            Ok(None)
        }
        GuestState::Fragmented => {
            // One `fragment` per NUMA node, bound to it, so that every node
            // looks the same whichever CPU the balloon allocates on (its
            // allocations take their own node's memory first).
            let text = vm.run_ok("cat /sys/devices/system/node/node*/meminfo")?;
            let free: Vec<(u64, u64)> = text
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    match f.as_slice() {
                        ["Node", n, "MemFree:", kb, "kB"] => {
                            Some((n.parse().ok()?, kb.parse::<u64>().ok()? * 1024 / MIB))
                        }
                        _ => None,
                    }
                })
                .collect();
            ensure!(
                !free.is_empty(),
                "no MemFree in the guest's node meminfo: {text}"
            );
            let nodes = free.len() as u64;
            let whole = (opts.balloon_mib + FRAG_SPARE_MIB).div_ceil(nodes);
            let margin = GUEST_MARGIN_MIB / nodes;
            let mut cmd = String::from("rm -f /tmp/frag*.ready /tmp/frag.go; ");
            let mut ready = Vec::new();
            for &(node, free) in &free {
                let region = free.saturating_sub(margin);
                ensure!(
                    region >= whole + 32,
                    "--guest-state fragmented: guest node {node} has {free} MiB free, too \
                     little to free {whole} MiB in one piece and hold at least 32 MiB with \
                     holes beside a {margin} MiB margin: use a larger --guest-mib or a smaller \
                     --balloon-mib"
                );
                write!(
                    cmd,
                    "(fragment -N -n {node} -F {whole} {region} /tmp/frag{node}.ready \
                     /tmp/frag.go {} > /tmp/frag{node}.out 2>&1 &); ",
                    opts.frag_stride
                )?;
                ready.push(format!("-e /tmp/frag{node}.ready"));
            }
            write!(
                cmd,
                "while ! [ {} ]; do \
                   [ $(pidof fragment | wc -w) -eq {nodes} ] || {{ cat /tmp/frag*.out; exit 1; }}; \
                   sleep 0.2; \
                 done",
                ready.join(" -a ")
            )?;
            let out = vm.run_timeout(&cmd, Duration::from_secs(600))?;
            ensure!(
                out.code == 0,
                "the guest tool `fragment -N -n -F` failed: {}\n(an initramfs built before \
                 fragment had -N, -n and -F? run `make initramfs`)",
                out.output.trim()
            );
            Ok(Some(
                "touch /tmp/frag.go; while pidof fragment > /dev/null; do sleep 0.2; done",
            ))
        }
    }
}

/// Hugetlb backing with free page reporting: waits (up to a minute) until
/// QEMU's guest RAM has held the same memory for 5 s. Loading a driver
/// makes the guest report all its free memory, in passes every 2 s over
/// half a minute, and the last deflate freed much: passes that overlapped
/// the inflate would give the host memory back whichever driver inflates.
/// The dirtying that follows frees memory again, whose first pass comes 2 s
/// later: an inflate that takes longer still shares its window with one.
pub(super) fn settle_reporting(vm: &Vm, sizes: &[u64]) -> Result<()> {
    let held = || -> Result<u64> { Ok(hostmem::qemu_mem(vm.pid(), sizes)?.ram_rss) };
    let t0 = Instant::now();
    let (mut last, mut since) = (held()?, Instant::now());
    while t0.elapsed() < Duration::from_secs(60) && since.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(500));
        let now = held()?;
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buddyinfo_sums_zones_and_counts_2m_blocks() {
        let text = "\
Node 0, zone      DMA      1      1      0      1      2      1      1      0      1      1      3
Node 0, zone    DMA32    100      3      2      4      5      6      7      8      9     10     20
Node 1, zone   Normal     50      1      0      0      0      0      0      0      0      2      5
";
        let free = parse_buddyinfo(text);
        assert_eq!(free.len(), 11);
        assert_eq!(free[0], 151);
        assert_eq!(free[10], 28);
        let g = GuestMem {
            free_blocks: free,
            ..GuestMem::default()
        };
        // Order 9: 1 + 10 + 2 blocks; order 10: 28 blocks of two.
        assert_eq!(g.free_2m_blocks(), 13 + 56);
        assert_eq!(g.free_single_pages(), 151);
    }
}
