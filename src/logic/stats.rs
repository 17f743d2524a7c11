// SPDX-License-Identifier: GPL-2.0

//! Memory statistics for the stats virtqueue (virtio spec 5.5.6.3).
//!
//! The driver answers each host request with an array of
//! `struct virtio_balloon_stat { __virtio16 tag; __virtio64 val; }` (packed,
//! 10 bytes each). [`MemStats`] holds the values the kernel provides and
//! [`MemStats::encode`] lays them out in the same order and units as C's
//! `update_balloon_stats()`.

use super::pfn::Endian;

/// `VIRTIO_BALLOON_S_*` tags.
#[allow(missing_docs)]
pub mod tag {
    pub const SWAP_IN: u16 = 0;
    pub const SWAP_OUT: u16 = 1;
    pub const MAJFLT: u16 = 2;
    pub const MINFLT: u16 = 3;
    pub const MEMFREE: u16 = 4;
    pub const MEMTOT: u16 = 5;
    pub const AVAIL: u16 = 6;
    pub const CACHES: u16 = 7;
    pub const HTLB_PGALLOC: u16 = 8;
    pub const HTLB_PGFAIL: u16 = 9;
    pub const OOM_KILL: u16 = 10;
    pub const ALLOC_STALL: u16 = 11;
    pub const ASYNC_SCAN: u16 = 12;
    pub const DIRECT_SCAN: u16 = 13;
    pub const ASYNC_RECLAIM: u16 = 14;
    pub const DIRECT_RECLAIM: u16 = 15;
    /// Number of tags (`VIRTIO_BALLOON_S_NR`).
    pub const NR: usize = 16;
}

/// Size of one encoded statistic.
pub const STAT_BYTES: usize = 10;

/// Buffer holding every statistic, as the device reads it.
pub type StatsArray = [u8; tag::NR * STAT_BYTES];

/// Event counters (`CONFIG_VM_EVENT_COUNTERS`), in their kernel units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmEvents {
    /// Pages swapped in (`PSWPIN`).
    pub swap_in: u64,
    /// Pages swapped out (`PSWPOUT`).
    pub swap_out: u64,
    /// Major faults (`PGMAJFAULT`).
    pub major_faults: u64,
    /// Minor and major faults (`PGFAULT`).
    pub faults: u64,
    /// OOM kills (`OOM_KILL`).
    pub oom_kills: u64,
    /// Allocation stalls, all zones (`ALLOCSTALL_*`).
    pub alloc_stalls: u64,
    /// Pages scanned by kswapd (`PGSCAN_KSWAPD`).
    pub async_scan: u64,
    /// Pages scanned by direct reclaim (`PGSCAN_DIRECT`).
    pub direct_scan: u64,
    /// Pages reclaimed by kswapd (`PGSTEAL_KSWAPD`).
    pub async_reclaim: u64,
    /// Pages reclaimed by direct reclaim (`PGSTEAL_DIRECT`).
    pub direct_reclaim: u64,
    /// Hugetlb pool allocations and failures (`CONFIG_HUGETLB_PAGE`).
    pub hugetlb: Option<(u64, u64)>,
}

/// A snapshot of the guest's memory statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStats {
    /// Event counters, if the kernel keeps them.
    pub events: Option<VmEvents>,
    /// Free pages (`si_meminfo().freeram`).
    pub free: u64,
    /// Total usable pages (`si_meminfo().totalram`).
    pub total: u64,
    /// Available pages (`si_mem_available()`, never negative).
    pub available: u64,
    /// Page cache pages (`NR_FILE_PAGES`).
    pub caches: u64,
}

fn put(out: &mut StatsArray, idx: &mut usize, endian: Endian, tag: u16, val: u64) {
    let at = *idx * STAT_BYTES;
    out[at..at + 2].copy_from_slice(&endian.u16(tag).to_ne_bytes());
    out[at + 2..at + STAT_BYTES].copy_from_slice(&endian.u64(val).to_ne_bytes());
    *idx += 1;
}

impl MemStats {
    /// Writes the statistics to `out` in C's order and returns how many
    /// there are. Page counts become bytes for pages of `1 << page_shift`
    /// bytes (saturating).
    pub fn encode(&self, page_shift: u32, endian: Endian, out: &mut StatsArray) -> usize {
        let bytes = |pages: u64| {
            pages
                .checked_shl(page_shift)
                .filter(|b| b >> page_shift == pages)
                .unwrap_or(u64::MAX)
        };
        let mut n = 0;
        if let Some(e) = &self.events {
            put(out, &mut n, endian, tag::SWAP_IN, bytes(e.swap_in));
            put(out, &mut n, endian, tag::SWAP_OUT, bytes(e.swap_out));
            put(out, &mut n, endian, tag::MAJFLT, e.major_faults);
            put(out, &mut n, endian, tag::MINFLT, e.faults);
            put(out, &mut n, endian, tag::OOM_KILL, e.oom_kills);
            put(out, &mut n, endian, tag::ALLOC_STALL, e.alloc_stalls);
            put(out, &mut n, endian, tag::ASYNC_SCAN, bytes(e.async_scan));
            put(out, &mut n, endian, tag::DIRECT_SCAN, bytes(e.direct_scan));
            put(
                out,
                &mut n,
                endian,
                tag::ASYNC_RECLAIM,
                bytes(e.async_reclaim),
            );
            put(
                out,
                &mut n,
                endian,
                tag::DIRECT_RECLAIM,
                bytes(e.direct_reclaim),
            );
            if let Some((alloc, fail)) = e.hugetlb {
                put(out, &mut n, endian, tag::HTLB_PGALLOC, alloc);
                put(out, &mut n, endian, tag::HTLB_PGFAIL, fail);
            }
        }
        put(out, &mut n, endian, tag::MEMFREE, bytes(self.free));
        put(out, &mut n, endian, tag::MEMTOT, bytes(self.total));
        put(out, &mut n, endian, tag::AVAIL, bytes(self.available));
        put(out, &mut n, endian, tag::CACHES, bytes(self.caches));
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(out: &StatsArray, n: usize) -> std::vec::Vec<(u16, u64)> {
        (0..n)
            .map(|i| {
                let at = i * STAT_BYTES;
                let tag = u16::from_le_bytes(out[at..at + 2].try_into().unwrap());
                let val = u64::from_le_bytes(out[at + 2..at + 10].try_into().unwrap());
                (tag, val)
            })
            .collect()
    }

    fn sample() -> MemStats {
        MemStats {
            events: Some(VmEvents {
                swap_in: 1,
                swap_out: 2,
                major_faults: 3,
                faults: 4,
                oom_kills: 5,
                alloc_stalls: 6,
                async_scan: 7,
                direct_scan: 8,
                async_reclaim: 9,
                direct_reclaim: 10,
                hugetlb: Some((11, 12)),
            }),
            free: 100,
            total: 200,
            available: 150,
            caches: 20,
        }
    }

    #[test]
    fn all_sixteen_tags_in_c_order_and_units() {
        let mut out = [0; tag::NR * STAT_BYTES];
        let n = sample().encode(12, Endian::Little, &mut out);
        assert_eq!(n, tag::NR);
        assert_eq!(
            decode(&out, n),
            [
                (tag::SWAP_IN, 4096),
                (tag::SWAP_OUT, 8192),
                (tag::MAJFLT, 3),
                (tag::MINFLT, 4),
                (tag::OOM_KILL, 5),
                (tag::ALLOC_STALL, 6),
                (tag::ASYNC_SCAN, 7 * 4096),
                (tag::DIRECT_SCAN, 8 * 4096),
                (tag::ASYNC_RECLAIM, 9 * 4096),
                (tag::DIRECT_RECLAIM, 10 * 4096),
                (tag::HTLB_PGALLOC, 11),
                (tag::HTLB_PGFAIL, 12),
                (tag::MEMFREE, 100 * 4096),
                (tag::MEMTOT, 200 * 4096),
                (tag::AVAIL, 150 * 4096),
                (tag::CACHES, 20 * 4096),
            ]
        );
    }

    #[test]
    fn without_hugetlb_two_tags_are_left_out() {
        let mut s = sample();
        s.events.as_mut().unwrap().hugetlb = None;
        let mut out = [0; tag::NR * STAT_BYTES];
        let n = s.encode(12, Endian::Little, &mut out);
        assert_eq!(n, 14);
        let tags: std::vec::Vec<u16> = decode(&out, n).iter().map(|s| s.0).collect();
        assert!(!tags.contains(&tag::HTLB_PGALLOC));
        assert_eq!(tags[10], tag::MEMFREE);
    }

    #[test]
    fn without_event_counters_only_memory_sizes_remain() {
        let mut s = sample();
        s.events = None;
        let mut out = [0; tag::NR * STAT_BYTES];
        let n = s.encode(12, Endian::Little, &mut out);
        assert_eq!(
            decode(&out, n),
            [
                (tag::MEMFREE, 100 * 4096),
                (tag::MEMTOT, 200 * 4096),
                (tag::AVAIL, 150 * 4096),
                (tag::CACHES, 20 * 4096)
            ]
        );
    }

    #[test]
    fn byte_conversion_saturates_instead_of_wrapping() {
        let mut s = sample();
        s.free = u64::MAX / 2;
        let mut out = [0; tag::NR * STAT_BYTES];
        let n = s.encode(16, Endian::Little, &mut out);
        let free = decode(&out, n)
            .into_iter()
            .find(|s| s.0 == tag::MEMFREE)
            .unwrap();
        assert_eq!(free.1, u64::MAX);
    }

    #[test]
    fn larger_pages_scale_byte_values() {
        let mut out = [0; tag::NR * STAT_BYTES];
        let n = sample().encode(16, Endian::Little, &mut out);
        let total = decode(&out, n)
            .into_iter()
            .find(|s| s.0 == tag::MEMTOT)
            .unwrap();
        assert_eq!(total.1, 200 * 65536);
    }
}
