// SPDX-License-Identifier: GPL-2.0

//! The stats queue (virtio spec 5.5.6.3; C's `stats_request()`,
//! `stats_handle_request()` and `update_balloon_stats()`).
//!
//! The queue runs backwards: the driver keeps one buffer queued, and the
//! host "requests" statistics by returning it. The interrupt queues a work
//! item that refills the buffer with fresh values and queues it again.

use super::{
    buffers::StatsBuffer,
    vq, //
};
use crate::{
    logic::{
        pfn::Endian,
        stats::{
            tag,
            MemStats,
            VmEvents,
            STAT_BYTES, //
        },
    },
    mm::stat,
    virtio,
};
use kernel::{
    device::Bound,
    prelude::*, //
};

/// The statistics C's `update_balloon_stats()` reports, from the same
/// kernel sources.
fn mem_stats() -> MemStats {
    let m = stat::meminfo();
    MemStats {
        events: stat::vm_events().map(|e| VmEvents {
            swap_in: e.swap_in,
            swap_out: e.swap_out,
            major_faults: e.major_faults,
            faults: e.faults,
            oom_kills: e.oom_kills,
            alloc_stalls: e.alloc_stalls,
            async_scan: e.async_scan,
            direct_scan: e.direct_scan,
            async_reclaim: e.async_reclaim,
            direct_reclaim: e.direct_reclaim,
            hugetlb: e.hugetlb,
        }),
        free: m.free,
        total: m.total,
        available: m.available,
        caches: m.file,
    }
}

/// Fills `buf` with current statistics; returns their size in bytes.
fn fill(buf: &mut StatsBuffer, endian: Endian) -> usize {
    let n = mem_stats().encode(kernel::page::PAGE_SHIFT as u32, endian, buf);
    n.min(tag::NR) * STAT_BYTES
}

/// Queues the first statistics buffer (during probe and restore, C's
/// `init_vqs()`), which the host returns to ask for statistics.
pub(super) fn prime(dev: &virtio::Device<Bound>, endian: Endian) -> Result {
    let mut buf = KBox::new([0; tag::NR * STAT_BYTES], GFP_KERNEL)?;
    let len = fill(&mut buf, endian);
    let q = dev.vq::<StatsBuffer>(vq::STATS)?;
    q.add_outbuf(buf, len)?;
    q.kick();
    Ok(())
}

/// Refills the buffer the host returned and gives it back (C's
/// `stats_handle_request()`).
pub(super) fn handle_request(dev: &virtio::Device<Bound>, endian: Endian) {
    let Ok(q) = dev.vq::<StatsBuffer>(vq::STATS) else {
        return;
    };
    // The host may "request" at any time, even with nothing returned.
    let Some(mut used) = q.get_buf() else {
        return;
    };
    let len = fill(&mut used.buf, endian);
    if let Err(rejected) = q.add_outbuf(used.buf, len) {
        dev_warn!(
            dev.as_ref(),
            "cannot queue statistics: {:?}\n",
            rejected.err
        );
        return;
    }
    q.kick();
}

#[kunit_tests(virtio_balloon_rs_stats)]
mod tests {
    use super::*;

    #[test]
    fn all_sixteen_statistics_are_encoded() {
        let mut out = [0u8; tag::NR * STAT_BYTES];
        let n = mem_stats().encode(kernel::page::PAGE_SHIFT as u32, Endian::Little, &mut out);
        assert_eq!(n, tag::NR);
        // The last one is CACHES, as in C.
        let at = (n - 1) * STAT_BYTES;
        assert_eq!(u16::from_le_bytes([out[at], out[at + 1]]), tag::CACHES);
    }
}
