// SPDX-License-Identifier: GPL-2.0

//! Where the balloon's time goes: counters in debugfs.
//!
//! `/sys/kernel/debug/virtio_balloon_rs-<device>/stats` lists, since the
//! device was probed, the pages moved, the PFN buffers sent and
//! notifications made, and the time spent allocating pages, waiting for the
//! host and freeing pages. Counting is a few relaxed atomic additions per
//! buffer of up to 256 pages, off the per-page path.

use core::fmt;
use kernel::{
    debugfs,
    sync::atomic::{
        Atomic,
        Relaxed, //
    },
    time::{
        Instant,
        Monotonic, //
    },
};

/// What is counted. Times are in nanoseconds.
#[derive(Clone, Copy)]
pub(super) enum Counter {
    /// Balloon pages inflated.
    InflatePages,
    /// PFN buffers sent on the inflate queue.
    InflateBuffers,
    /// Time allocating pages for the balloon.
    InflateAllocNs,
    /// Time waiting for the host to return inflate buffers.
    InflateWaitNs,
    /// Balloon pages deflated.
    DeflatePages,
    /// PFN buffers sent on the deflate queue.
    DeflateBuffers,
    /// Time waiting for the host to return deflate buffers.
    DeflateWaitNs,
    /// Time freeing deflated pages.
    DeflateFreeNs,
    /// Notifications of the host (kicks that reached the device).
    Notifications,
    /// Rounds of the size work that inflated or deflated (each that told
    /// the host ends with an `actual` update).
    Rounds,
    /// Time in configuration space reads and writes.
    ConfigNs,
    /// Whole blocks inflated.
    InflateBlocks,
    /// Ballooned blocks reported on the free page reporting queue.
    ReportedBlocks,
    /// Calls of the OOM notifier.
    OomNotifyCalls,
    /// The longest call of the OOM notifier (a maximum, not a sum).
    OomNotifyMaxNs,
    /// Block reports the device kept beyond the host timeout.
    KeptReports,
    /// Balloon pages the OOM notifier deflated.
    OomNotifyPages,
    /// Times the OOM notifier's task got the balloon lock through
    /// [`super::host::Host::lock_within`]: at most one per call.
    OomNotifyLocks,
    /// Calls of the blocking [`super::host::Host::lock`] on the OOM
    /// notifier's task, contended or not: must stay 0.
    OomNotifyBlockingLocks,
}

const NAMES: [&str; 19] = [
    "inflate_pages",
    "inflate_buffers",
    "inflate_alloc_ns",
    "inflate_wait_ns",
    "deflate_pages",
    "deflate_buffers",
    "deflate_wait_ns",
    "deflate_free_ns",
    "notifications",
    "rounds",
    "config_ns",
    "inflate_blocks",
    "reported_blocks",
    "oom_notify_calls",
    "oom_notify_max_ns",
    "kept_reports",
    "oom_notify_pages",
    "oom_notify_locks",
    "oom_notify_blocking_locks",
];

/// The counters of one device.
pub(crate) struct Counters([Atomic<u64>; NAMES.len()]);

impl Counters {
    /// All zero.
    pub(super) fn new() -> Self {
        Self(core::array::from_fn(|_| Atomic::new(0)))
    }

    /// Adds `n` to `c`.
    pub(super) fn add(&self, c: Counter, n: u64) {
        self.0[c as usize].fetch_add(n, Relaxed);
    }

    /// Raises `c` to `n` if it is lower.
    pub(super) fn max(&self, c: Counter, n: u64) {
        let v = &self.0[c as usize];
        let mut old = v.load(Relaxed);
        while old < n {
            match v.cmpxchg(old, n, Relaxed) {
                Ok(_) => break,
                Err(now) => old = now,
            }
        }
    }
}

/// A stopwatch for one of the time counters.
pub(super) struct Stopwatch(Instant<Monotonic>);

impl Stopwatch {
    pub(super) fn start() -> Self {
        Self(Instant::now())
    }

    /// Adds the time since `start` to `c`.
    pub(super) fn stop(self, counters: &Counters, c: Counter) {
        counters.add(c, self.elapsed_ns());
    }

    /// Raises `c` to the time since `start`, if it is lower.
    pub(super) fn stop_max(self, counters: &Counters, c: Counter) {
        counters.max(c, self.elapsed_ns());
    }

    fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(0)
    }
}

impl fmt::Debug for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, v) in NAMES.iter().zip(&self.0) {
            writeln!(f, "{name}: {}", v.load(Relaxed))?;
        }
        Ok(())
    }
}

/// The debugfs directory of a device: `virtio_balloon_rs-<device>` (one
/// per device, so that several devices do not compete for a shared one).
pub(super) fn debugfs_dir(device: &kernel::str::CStr) -> debugfs::Dir {
    match kernel::str::CString::try_from_fmt(kernel::prelude::fmt!(
        "virtio_balloon_rs-{}",
        device.to_str().unwrap_or("?")
    )) {
        Ok(name) => debugfs::Dir::new(&name),
        Err(_) => debugfs::Dir::new(c"virtio_balloon_rs"),
    }
}
