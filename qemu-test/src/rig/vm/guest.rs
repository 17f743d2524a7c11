//! What a test reads of the guest's own state: `/proc/meminfo`,
//! `/proc/vmstat`, the page size, per-CPU free pages, the kernel log and
//! the driver bound to the balloon.

use super::*;

impl Vm {
    /// The guest's `/proc/meminfo` in bytes.
    pub fn meminfo(&mut self) -> Result<BTreeMap<String, u64>> {
        let text = self.run_ok("cat /proc/meminfo")?;
        stats::parse_meminfo(&text)
    }

    /// One `/proc/meminfo` field in bytes (e.g. `MemTotal`).
    pub fn meminfo_field(&mut self, field: &str) -> Result<u64> {
        let m = self.meminfo()?;
        m.get(field)
            .copied()
            .with_context(|| format!("no {field} in /proc/meminfo"))
    }

    /// The guest's page size in bytes (4 KiB on x86_64; 4, 16 or 64 KiB on
    /// arm64), from the kernel page size of a mapping of the shell that
    /// reads it (`/proc/self/smaps`).
    /// Asked of the guest once per boot.
    pub fn guest_page_size(&mut self) -> Result<u64> {
        if let Some(size) = self.page_size {
            return Ok(size);
        }
        let out = self.run_ok("awk '/^KernelPageSize:/ { print $2; exit }' /proc/self/smaps")?;
        let kib: u64 = out
            .trim()
            .parse()
            .with_context(|| format!("KernelPageSize from /proc/self/smaps: {out:?}"))?;
        ensure!(
            kib.is_power_of_two() && (4..=64).contains(&kib),
            "implausible guest page size {kib} KiB"
        );
        self.page_size = Some(kib * 1024);
        Ok(kib * 1024)
    }

    /// Free pages on the per-CPU free lists, in bytes (`count:` of every
    /// CPU's pageset in `/proc/zoneinfo`): free, but not in `MemFree` or the
    /// free memory statistic until they drain to the buddy allocator.
    pub fn pcp_free_bytes(&mut self) -> Result<u64> {
        let page = self.guest_page_size()?;
        let out =
            self.run_ok("awk '$1 == \"count:\" { s += $2 } END { print s + 0 }' /proc/zoneinfo")?;
        let pages: u64 = out
            .trim()
            .parse()
            .with_context(|| format!("per-CPU page counts from /proc/zoneinfo: {out:?}"))?;
        Ok(pages * page)
    }

    /// A `/proc/vmstat` counter, or `None` if this kernel has no such
    /// counter.
    pub fn vmstat_field(&mut self, name: &str) -> Result<Option<u64>> {
        Ok(self.vmstat_fields(&[name])?.pop().flatten())
    }

    /// Several `/proc/vmstat` counters from one read, in the order of
    /// `names`; `None` for one this kernel does not have.
    pub fn vmstat_fields(&mut self, names: &[&str]) -> Result<Vec<Option<u64>>> {
        let out = self.run_ok("cat /proc/vmstat")?;
        names
            .iter()
            .map(|name| {
                out.lines()
                    .filter_map(|l| l.split_once(' '))
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| {
                        v.trim()
                            .parse()
                            .with_context(|| format!("/proc/vmstat {name} {v:?}"))
                    })
                    .transpose()
            })
            .collect()
    }

    /// The guest kernel log (`dmesg`).
    pub fn dmesg(&mut self) -> Result<String> {
        self.run_ok("dmesg")
    }

    /// The driver module bound to the balloon device (virtio device id 5),
    /// or `None` if the device has no driver.
    pub fn balloon_driver(&mut self) -> Result<Option<String>> {
        let out = self.run_ok(
            "for d in /sys/bus/virtio/devices/*; do \
               [ \"$(cat $d/device)\" = 0x0005 ] || continue; \
               if [ -e $d/driver/module ]; then basename \"$(readlink $d/driver/module)\"; \
               elif [ -e $d/driver ]; then basename \"$(readlink $d/driver)\"; \
               else echo '<unbound>'; fi; \
             done",
        )?;
        match out.trim() {
            "" => bail!("the guest has no virtio balloon device"),
            "<unbound>" => Ok(None),
            name => Ok(Some(name.to_string())),
        }
    }

    // ---- console ----------------------------------------------------------
}
