// SPDX-License-Identifier: GPL-2.0

//! Deflate on OOM (`VIRTIO_BALLOON_F_DEFLATE_ON_OOM`; C's
//! `virtio_balloon_oom_notify()`).
//!
//! With this feature the host lets the guest take memory back from the
//! balloon rather than kill a process: before the OOM killer runs, the
//! notifier deflates one batch. Ballooned pages then stay counted in
//! `MemTotal`, as used memory.
//!
//! Unlike C, the notifier never waits long: every allocation in the guest
//! may be waiting for it. It gives up on the balloon lock after
//! [`LOCK_PATIENCE`] (the size work may hold it while waiting for the
//! host), waits at most [`HOST_PATIENCE`] for the host, and writes
//! `actual` before it lets the lock go, so it never takes it twice. The
//! longest call is in debugfs (`oom_notify_max_ns`), with the pages it
//! deflated (`oom_notify_pages`), the times it got the lock
//! (`oom_notify_locks`, at most one per call) and any blocking take of
//! the lock on the notifier's task (`oom_notify_blocking_locks`, always 0).

use super::{
    device::Balloon,
    perf::{
        Counter,
        Stopwatch, //
    },
};
use crate::mm::oom::OomHandler;
use kernel::time::Delta;

/// Balloon pages released per OOM notification (C's `VIRTIO_BALLOON_OOM_NR_PAGES`).
const OOM_NR_PAGES: u32 = 256;

/// Priority of the OOM notifier (C's `VIRTIO_BALLOON_OOM_NOTIFY_PRIORITY`).
pub(super) const OOM_NOTIFY_PRIORITY: i32 = 80;

/// How long the notifier waits for the balloon lock.
const LOCK_PATIENCE: Delta = Delta::from_millis(100);

/// How long the notifier waits for the host to return a buffer.
const HOST_PATIENCE: Delta = Delta::from_millis(1000);

impl OomHandler for Balloon {
    fn oom_free(&self) -> usize {
        let sw = Stopwatch::start();
        let _oom = self.host().oom_context();
        let freed = self.deflate_for_oom(OOM_NR_PAGES, LOCK_PATIENCE, HOST_PATIENCE);
        let perf = self.host().perf();
        perf.add(Counter::OomNotifyCalls, 1);
        sw.stop_max(perf, Counter::OomNotifyMaxNs);
        freed
    }
}
