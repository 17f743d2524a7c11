// SPDX-License-Identifier: GPL-2.0

//! Memory counters: what `/proc/meminfo` and `/proc/vmstat` show, and the
//! page poisoning settings.

use crate::bindings;
use kernel::{
    bindings as kb,
    prelude::*, //
};

/// Number of pages of RAM the kernel manages (`totalram_pages()`), the
/// `MemTotal` of `/proc/meminfo`.
pub(crate) fn totalram_pages() -> u64 {
    // SAFETY: `totalram_pages()` reads a global counter; always safe to call.
    unsafe { bindings::totalram_pages() as u64 }
}

/// Pages available for new allocations without swapping
/// (`si_mem_available()`, `MemAvailable`).
pub(crate) fn available_pages() -> u64 {
    // SAFETY: Always safe to call.
    let pages = unsafe { kb::si_mem_available() };
    u64::try_from(pages).unwrap_or(0)
}

/// Anonymous memory reclaim could swap out now, in pages: the anonymous
/// LRU pages, at most the free swap space (`SwapFree`).
pub(crate) fn swappable_pages() -> u64 {
    // SAFETY: Reads a global counter; always safe to call.
    let free_swap = u64::try_from(unsafe { bindings::rust_vb_nr_swap_pages() }).unwrap_or(0);
    let anon = node_state(kb::node_stat_item_NR_INACTIVE_ANON)
        .saturating_add(node_state(kb::node_stat_item_NR_ACTIVE_ANON));
    free_swap.min(anon)
}

/// Pages reclaim has freed since boot, by kswapd and directly
/// (`pgsteal_kswapd` + `pgsteal_direct`, kept with or without
/// `CONFIG_VM_EVENT_COUNTERS`).
pub(crate) fn reclaimed_pages() -> u64 {
    node_state(kb::node_stat_item_PGSTEAL_KSWAPD)
        .wrapping_add(node_state(kb::node_stat_item_PGSTEAL_DIRECT))
}

/// Whether freed pages are poisoned (`page_poisoning_enabled_static()`).
pub(crate) fn page_poisoning_enabled() -> bool {
    // SAFETY: Reads a static key; always safe to call.
    unsafe { bindings::page_poisoning_enabled_static() }
}

/// Whether freed pages are zeroed (`want_init_on_free()`).
pub(crate) fn want_init_on_free() -> bool {
    // SAFETY: Reads a static key; always safe to call.
    unsafe { bindings::want_init_on_free() }
}

/// The byte page poisoning writes into freed pages (`PAGE_POISON`).
pub(crate) const PAGE_POISON: u8 = bindings::VB_PAGE_POISON as u8;

fn node_state(item: kb::node_stat_item) -> u64 {
    // SAFETY: `item` is a valid node statistic; reading the global counter is always safe.
    unsafe { bindings::global_node_page_state(item) as u64 }
}

/// Event counters of `/proc/vmstat` (since boot).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct VmEvents {
    /// Pages swapped in (`pswpin`).
    pub(crate) swap_in: u64,
    /// Pages swapped out (`pswpout`).
    pub(crate) swap_out: u64,
    /// Major page faults (`pgmajfault`).
    pub(crate) major_faults: u64,
    /// All page faults (`pgfault`).
    pub(crate) faults: u64,
    /// OOM kills (`oom_kill`).
    pub(crate) oom_kills: u64,
    /// Direct reclaim stalls, all zones (`allocstall_*`).
    pub(crate) alloc_stalls: u64,
    /// Pages scanned by kswapd (`pgscan_kswapd`).
    pub(crate) async_scan: u64,
    /// Pages scanned by direct reclaim (`pgscan_direct`).
    pub(crate) direct_scan: u64,
    /// Pages reclaimed by kswapd (`pgsteal_kswapd`).
    pub(crate) async_reclaim: u64,
    /// Pages reclaimed by direct reclaim (`pgsteal_direct`).
    pub(crate) direct_reclaim: u64,
    /// Huge page pool allocations and failures (`htlb_buddy_alloc_*`), with
    /// `CONFIG_HUGETLB_PAGE`.
    pub(crate) hugetlb: Option<(u64, u64)>,
}

/// The event counters, with `CONFIG_VM_EVENT_COUNTERS`.
#[cfg(CONFIG_VM_EVENT_COUNTERS)]
pub(crate) fn vm_events() -> Option<VmEvents> {
    let mut ev = [0 as kernel::ffi::c_ulong; kb::vm_event_item_NR_VM_EVENT_ITEMS as usize];
    // SAFETY: `ev` has room for `NR_VM_EVENT_ITEMS` counters, which `all_vm_events` fills.
    unsafe { kb::all_vm_events(ev.as_mut_ptr()) };
    let at = |item: kb::vm_event_item| ev[item as usize] as u64;

    // All zones' allocation stalls, as C sums them.
    let first = kb::vm_event_item_ALLOCSTALL_NORMAL - kb::zone_type_ZONE_NORMAL;
    let alloc_stalls = (0..kb::zone_type___MAX_NR_ZONES)
        .map(|zone| at(first + zone))
        .fold(0u64, u64::wrapping_add);

    #[cfg(CONFIG_HUGETLB_PAGE)]
    let hugetlb = Some((
        at(kb::vm_event_item_HTLB_BUDDY_PGALLOC),
        at(kb::vm_event_item_HTLB_BUDDY_PGALLOC_FAIL),
    ));
    #[cfg(not(CONFIG_HUGETLB_PAGE))]
    let hugetlb = None;

    Some(VmEvents {
        swap_in: at(kb::vm_event_item_PSWPIN),
        swap_out: at(kb::vm_event_item_PSWPOUT),
        major_faults: at(kb::vm_event_item_PGMAJFAULT),
        faults: at(kb::vm_event_item_PGFAULT),
        oom_kills: at(kb::vm_event_item_OOM_KILL),
        alloc_stalls,
        async_scan: node_state(kb::node_stat_item_PGSCAN_KSWAPD),
        direct_scan: node_state(kb::node_stat_item_PGSCAN_DIRECT),
        async_reclaim: node_state(kb::node_stat_item_PGSTEAL_KSWAPD),
        direct_reclaim: node_state(kb::node_stat_item_PGSTEAL_DIRECT),
        hugetlb,
    })
}

/// The event counters, with `CONFIG_VM_EVENT_COUNTERS`.
#[cfg(not(CONFIG_VM_EVENT_COUNTERS))]
pub(crate) fn vm_events() -> Option<VmEvents> {
    None
}

/// Memory sizes in pages, as `si_meminfo()` and `/proc/meminfo` give them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MemInfo {
    /// `MemFree`.
    pub(crate) free: u64,
    /// `MemTotal`.
    pub(crate) total: u64,
    /// `MemAvailable`.
    pub(crate) available: u64,
    /// File pages (`NR_FILE_PAGES`: page cache, swap cache, shmem).
    pub(crate) file: u64,
}

/// The memory sizes now.
pub(crate) fn meminfo() -> MemInfo {
    let mut info = kb::sysinfo::default();
    // SAFETY: `info` is a writable `struct sysinfo`.
    unsafe { kb::si_meminfo(&mut info) };
    MemInfo {
        free: info.freeram as u64,
        total: info.totalram as u64,
        available: available_pages(),
        file: node_state(kb::node_stat_item_NR_FILE_PAGES),
    }
}

#[kunit_tests(virtio_balloon_rs_mm)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_are_consistent() {
        // The driver may be moving the balloon meanwhile (the tests run when
        // the module loads), so the values, read one after the other, get
        // some slack.
        let m = meminfo();
        let slack = m.total / 8;
        assert!(m.total > 0);
        assert!(m.free <= m.total + slack);
        assert!(m.available <= m.total + slack);
        assert!(totalram_pages().abs_diff(m.total) <= slack);
    }

    #[test]
    fn event_counters_are_reported() {
        let e = vm_events();
        assert!(e.is_some());
        if let Some(e) = e {
            // Booting to this point took page faults.
            assert!(e.faults > 0);
            assert!(e.major_faults <= e.faults);
        }
    }

    #[test]
    fn swappable_memory_is_bounded_by_anonymous_memory() {
        let anon = node_state(kb::node_stat_item_NR_INACTIVE_ANON)
            + node_state(kb::node_stat_item_NR_ACTIVE_ANON);
        // Counters move while the guest runs: allow some slack.
        assert!(swappable_pages() <= anon + anon / 8 + 1024);
    }
}
