// SPDX-License-Identifier: GPL-2.0

//! Moving the balloon towards the host's target.
//!
//! The host writes the wanted balloon size, `num_pages` (in 4 KiB balloon
//! pages), to the configuration space. It is untrusted: it is rounded up to
//! whole guest pages as in C's `towards_target()` (so the balloon does not
//! oscillate) and then limited to the guest's memory, which the C driver
//! does not do.

/// The balloon size the driver aims for, derived from the host's `num_pages`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// Balloon pages to hold, a multiple of the balloon pages per guest page.
    pub pages: u32,
    /// Whether the host asked for more than the guest has.
    pub clamped: bool,
}

impl Target {
    /// Interprets the host's `num_pages`.
    ///
    /// `per_page` is the number of balloon pages per guest page and
    /// `limit` the guest's memory in balloon pages.
    pub fn from_host(num_pages: u32, per_page: u32, limit: u64) -> Self {
        let per = u64::from(per_page.max(1));
        let aligned = u64::from(num_pages).div_ceil(per) * per;
        // The most the balloon can hold: all guest memory, whole guest pages,
        // representable in the 32-bit `actual` field.
        let max = (limit.min(u64::from(u32::MAX)) / per) * per;
        if aligned > max {
            Self {
                pages: max as u32,
                clamped: true,
            }
        } else {
            Self {
                pages: aligned as u32,
                clamped: false,
            }
        }
    }

    /// What to do to get from `current` balloon pages to this target.
    pub fn step_from(self, current: u32) -> Step {
        match self.pages.cmp(&current) {
            core::cmp::Ordering::Greater => Step::Inflate(self.pages - current),
            core::cmp::Ordering::Less => Step::Deflate(current - self.pages),
            core::cmp::Ordering::Equal => Step::Idle,
        }
    }
}

/// One move of the balloon, in balloon pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The balloon has the target size.
    Idle,
    /// Take this many balloon pages from the guest.
    Inflate(u32),
    /// Give this many balloon pages back to the guest.
    Deflate(u32),
}

impl Step {
    /// Balloon pages still to move.
    pub const fn remaining(self) -> u32 {
        match self {
            Step::Idle => 0,
            Step::Inflate(n) | Step::Deflate(n) => n,
        }
    }
}

/// Smallest reserve the driver keeps available to the guest, in MiB.
pub const RESERVE_MIN_MIB: u64 = 16;
/// Largest automatic reserve, in MiB.
pub const RESERVE_MAX_MIB: u64 = 512;

/// Guest memory, in guest pages, the balloon leaves available however much
/// the host asks for: `min_available_mib` if set, else 2 % of the guest's
/// memory bounded to [`RESERVE_MIN_MIB`]..=[`RESERVE_MAX_MIB`].
///
/// The C driver has no such floor: asked for (nearly) all guest memory it
/// inflates until the guest panics, "deadlocked on memory".
pub fn reserve_pages(guest_pages: u64, page_shift: u32, min_available_mib: u32) -> u64 {
    let mib = if min_available_mib > 0 {
        u64::from(min_available_mib)
    } else {
        let two_percent = ((guest_pages << page_shift) / 50) >> 20;
        two_percent.clamp(RESERVE_MIN_MIB, RESERVE_MAX_MIB)
    };
    (mib << 20) >> page_shift
}

/// Guest pages the balloon may still take when `available` pages are
/// available without swapping (`MemAvailable`), `swappable` more could be
/// swapped out (anonymous memory, at most the free swap space), and
/// `reserve` must stay available.
///
/// Swappable memory counts: with swap, the C driver inflates into it (the
/// guest swaps, as with any balloon) and so does ours; without swap, or
/// once swap is full, the balloon holds at the reserve where C would
/// run the guest out of memory.
pub fn inflate_allowance(available: u64, swappable: u64, reserve: u64) -> u64 {
    available.saturating_add(swappable).saturating_sub(reserve)
}

/// Guest pages the balloon may take while it holds at the reserve, when
/// `allowance` pages are above the reserve and the guest's reclaim has
/// freed `reclaimed` pages lately ([`RecentReclaim`]): what the guest
/// freed of itself (`allowance` less `reclaimed`), once that has grown to a
/// quarter of the `reserve`, or to the `wanted` pages the target still
/// needs if that is less; else nothing.
///
/// Without this margin a balloon at its reserve starts and stops at every
/// recheck, inflating the few pages the guest freed meanwhile, logging
/// each time, and creeping into the guest's working set. Without leaving
/// out what reclaim freed, it takes what kswapd frees because the balloon
/// pushed the guest below its watermarks (`MemAvailable` counts only part
/// of the page cache, so dropping it raises the estimate): memory the guest
/// gave up under pressure, not memory it stopped using.
pub fn held_allowance(allowance: u64, reserve: u64, wanted: u64, reclaimed: u64) -> u64 {
    let own = allowance.saturating_sub(reclaimed);
    if own >= (reserve / 4).clamp(1, wanted.max(1)) {
        own
    } else {
        0
    }
}

/// How long reclaim counts against a held balloon ([`RecentReclaim`]).
pub const HOLD_RECLAIM_WINDOW_MS: u64 = 30_000;

/// What the guest's reclaim freed lately, while the balloon holds: the
/// pages of a reclaim counter since a snapshot one to two
/// [`HOLD_RECLAIM_WINDOW_MS`] old (or since the hold began, if later).
///
/// Reclaim the balloon caused shows in `MemAvailable` within seconds;
/// counting it for ever would keep a balloon held through a long hold with
/// steady reclaim (a guest streaming files at its watermarks) however much
/// memory a process then frees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecentReclaim {
    /// Counter and time (ms) of the older snapshot, which `since` counts from.
    older: (u64, u64),
    /// And of the newer one, which becomes the older a window later.
    newer: (u64, u64),
}

impl RecentReclaim {
    /// Starts counting, the counter at `reclaimed` pages, at `now_ms`.
    pub fn start(reclaimed: u64, now_ms: u64) -> Self {
        Self {
            older: (reclaimed, now_ms),
            newer: (reclaimed, now_ms),
        }
    }

    /// Pages reclaimed lately, the counter now at `reclaimed`, at `now_ms`
    /// (0 if the counter went back).
    pub fn since(&mut self, reclaimed: u64, now_ms: u64) -> u64 {
        if now_ms.saturating_sub(self.newer.1) >= HOLD_RECLAIM_WINDOW_MS {
            self.older = self.newer;
            self.newer = (reclaimed, now_ms);
        }
        reclaimed.saturating_sub(self.older.0)
    }
}

/// Milliseconds the size work waits after the allocations of `fails`
/// rounds in a row failed: [`OUT_OF_PUFF_MS`] as C at first, doubling up
/// to `max_ms` (C retries every 200 ms for as long as it fails).
pub fn out_of_puff_backoff_ms(fails: u32, max_ms: u32) -> u32 {
    let doublings = fails.saturating_sub(1).min(16);
    OUT_OF_PUFF_MS.saturating_mul(1 << doublings).min(max_ms)
}

/// How long C waits after an allocation failed (`msleep(200)` in
/// `fill_balloon()`).
pub const OUT_OF_PUFF_MS: u32 = 200;

/// Number of guest pages to move in one batch of at most `max_pfns` balloon
/// PFNs when `remaining` balloon pages are left (at least one guest page
/// when anything remains, as C rounds targets up to guest pages).
pub fn batch_pages(remaining: u32, per_page: u32, max_pfns: usize) -> usize {
    let per = per_page.max(1) as usize;
    let pfns = (remaining as usize).min(max_pfns);
    pfns.div_ceil(per)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB_IN_4K: u64 = 262_144;

    #[test]
    fn target_is_the_host_value_for_4k_pages() {
        let t = Target::from_host(1000, 1, GIB_IN_4K);
        assert_eq!(
            t,
            Target {
                pages: 1000,
                clamped: false
            }
        );
    }

    #[test]
    fn target_rounds_up_to_whole_guest_pages() {
        // 64 KiB guest pages: 16 balloon pages each.
        assert_eq!(Target::from_host(17, 16, GIB_IN_4K).pages, 32);
        assert_eq!(Target::from_host(32, 16, GIB_IN_4K).pages, 32);
        assert_eq!(Target::from_host(1, 16, GIB_IN_4K).pages, 16);
    }

    #[test]
    fn target_beyond_guest_memory_is_clamped() {
        let t = Target::from_host(u32::MAX, 1, GIB_IN_4K);
        assert_eq!(
            t,
            Target {
                pages: GIB_IN_4K as u32,
                clamped: true
            }
        );
        let t = Target::from_host(GIB_IN_4K as u32 + 1, 1, GIB_IN_4K);
        assert!(t.clamped);
        assert!(!Target::from_host(GIB_IN_4K as u32, 1, GIB_IN_4K).clamped);
    }

    #[test]
    fn rounding_up_cannot_overflow_or_exceed_the_limit() {
        // u32::MAX rounded up to 16 would not fit in 32 bits.
        let t = Target::from_host(u32::MAX, 16, u64::MAX);
        assert!(t.clamped);
        assert_eq!(t.pages % 16, 0);
        assert!(u64::from(t.pages) <= u64::from(u32::MAX));
        // A limit that is not a whole number of guest pages rounds down.
        let t = Target::from_host(100, 16, 40);
        assert_eq!(t.pages, 32);
    }

    #[test]
    fn steps_point_towards_the_target() {
        let t = Target::from_host(500, 1, GIB_IN_4K);
        assert_eq!(t.step_from(0), Step::Inflate(500));
        assert_eq!(t.step_from(800), Step::Deflate(300));
        assert_eq!(t.step_from(500), Step::Idle);
        assert_eq!(t.step_from(0).remaining(), 500);
        assert_eq!(Step::Idle.remaining(), 0);
    }

    #[test]
    fn reserve_is_two_percent_within_bounds() {
        // 1 GiB of 4 KiB pages: 2 % is 20 MiB.
        assert_eq!(reserve_pages(GIB_IN_4K, 12, 0), (20 << 20) >> 12);
        // 256 MiB: 2 % is 5 MiB, raised to 16 MiB.
        assert_eq!(reserve_pages(GIB_IN_4K / 4, 12, 0), (16 << 20) >> 12);
        // 1 TiB: 2 % is 20 GiB, capped at 512 MiB.
        assert_eq!(reserve_pages(GIB_IN_4K * 1024, 12, 0), (512 << 20) >> 12);
        // An explicit value wins, and works with 64 KiB pages.
        assert_eq!(reserve_pages(GIB_IN_4K, 12, 100), (100 << 20) >> 12);
        assert_eq!(reserve_pages(1 << 14, 16, 64), 1024);
    }

    #[test]
    fn allowance_stops_at_the_reserve() {
        assert_eq!(inflate_allowance(1000, 0, 200), 800);
        assert_eq!(inflate_allowance(200, 0, 200), 0);
        assert_eq!(inflate_allowance(10, 0, 200), 0);
    }

    #[test]
    fn swappable_memory_counts_towards_the_allowance() {
        // 80 % of a 1 GiB guest dirty, 150 MiB available, swap for it all:
        // the balloon may take what swapping frees, down to the reserve.
        let mib = 256; // 4 KiB pages per MiB
        assert_eq!(inflate_allowance(150 * mib, 800 * mib, 20 * mib), 930 * mib);
        // Without swap it holds at the reserve.
        assert_eq!(inflate_allowance(150 * mib, 0, 20 * mib), 130 * mib);
        assert_eq!(inflate_allowance(u64::MAX, u64::MAX, 1), u64::MAX - 1);
    }

    #[test]
    fn holding_waits_for_a_quarter_of_the_reserve() {
        let reserve = 5120; // 20 MiB of 4 KiB pages
        let wanted = 1 << 20;
        // A few freed pages do not restart the balloon...
        assert_eq!(held_allowance(0, reserve, wanted, 0), 0);
        assert_eq!(held_allowance(70, reserve, wanted, 0), 0);
        assert_eq!(held_allowance(1279, reserve, wanted, 0), 0);
        // ...a quarter of the reserve does.
        assert_eq!(held_allowance(1280, reserve, wanted, 0), 1280);
        assert_eq!(held_allowance(100_000, reserve, wanted, 0), 100_000);
    }

    #[test]
    fn holding_resumes_for_a_small_remainder() {
        // The target needs only 10 pages more: 10 free pages are enough.
        assert_eq!(held_allowance(10, 5120, 10, 0), 10);
        assert_eq!(held_allowance(9, 5120, 10, 0), 0);
        // Degenerate values never divide by zero or demand nothing.
        assert_eq!(held_allowance(0, 0, 0, 0), 0);
        assert_eq!(held_allowance(1, 0, 0, 0), 1);
        assert_eq!(held_allowance(1, 3, 100, 0), 1);
    }

    #[test]
    fn holding_leaves_out_what_reclaim_freed() {
        // Memory kswapd freed because the balloon pushed the guest below
        // its watermarks does not restart it...
        assert_eq!(held_allowance(3000, 5120, 1 << 20, 3000), 0);
        assert_eq!(held_allowance(3000, 5120, 1 << 20, 2000), 0);
        assert_eq!(held_allowance(10, 5120, 10, 10), 0);
        assert_eq!(held_allowance(10, 5120, 10, u64::MAX), 0);
        // ...memory the guest freed of itself beyond it does.
        assert_eq!(held_allowance(100_000, 5120, 1 << 20, 3000), 97_000);
        assert_eq!(held_allowance(4280, 5120, 1 << 20, 3000), 1280);
    }

    #[test]
    fn recent_reclaim_counts_since_the_hold_then_forgets() {
        let w = HOLD_RECLAIM_WINDOW_MS;
        let mut r = RecentReclaim::start(1000, 0);
        assert_eq!(r.since(1000, 10), 0);
        assert_eq!(r.since(1500, 5_000), 500);
        // Within the first window everything since the hold counts...
        assert_eq!(r.since(1600, w - 1), 600);
        // ...a window later, from the snapshot a window old at most twice.
        assert_eq!(r.since(1600, w), 600);
        assert_eq!(r.since(1600, 2 * w - 1), 600);
        assert_eq!(r.since(1600, 2 * w), 0);
        // Steady reclaim keeps counting; a counter that went back, nothing.
        assert_eq!(r.since(9000, 2 * w + 1), 7400);
        assert_eq!(r.since(10, 2 * w + 2), 0);
    }

    #[test]
    fn out_of_puff_backs_off_up_to_the_limit() {
        assert_eq!(out_of_puff_backoff_ms(0, 5000), 200);
        assert_eq!(out_of_puff_backoff_ms(1, 5000), 200);
        assert_eq!(out_of_puff_backoff_ms(2, 5000), 400);
        assert_eq!(out_of_puff_backoff_ms(5, 5000), 3200);
        assert_eq!(out_of_puff_backoff_ms(6, 5000), 5000);
        assert_eq!(out_of_puff_backoff_ms(u32::MAX, 5000), 5000);
        assert_eq!(out_of_puff_backoff_ms(u32::MAX, u32::MAX), 200 << 16);
    }

    #[test]
    fn batches_are_bounded_by_the_buffer() {
        assert_eq!(batch_pages(1000, 1, 256), 256);
        assert_eq!(batch_pages(10, 1, 256), 10);
        assert_eq!(batch_pages(0, 1, 256), 0);
        // 16 balloon pages per guest page: 256 PFNs are 16 guest pages.
        assert_eq!(batch_pages(1000, 16, 256), 16);
        assert_eq!(batch_pages(17, 16, 256), 2);
    }
}
