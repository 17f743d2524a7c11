// SPDX-License-Identifier: GPL-2.0

//! The host side of the balloon: the device's configuration (target and
//! `actual`), its inflate and deflate queues, and the balloon lock (C's
//! `balloon_lock`) that serializes telling the host about pages.
//!
//! Every wait for the host is bounded by `host_timeout_ms`: a device that
//! does not return a PFN buffer in time, or whose queue breaks, is marked
//! unresponsive, and the balloon stops asking it anything until its
//! buffers come back. Buffers it keeps stay on their queue, with the pages
//! they name: pages the host was told about are never reused before it
//! acknowledges them (`MUST_TELL_HOST`).

use super::{
    buffers::{
        deflate_buffer,
        inflate_buffer,
        BufferPool,
        DeflateBuffer,
        InflateBuffer, //
    },
    lists::BALLOON_PAGES_PER_PAGE,
    perf::{
        Counter,
        Counters,
        Stopwatch, //
    },
    vq,
};
use crate::{
    bindings::uapi::{
        self,
        virtio_balloon_config, //
    },
    compat::Param,
    logic::{
        pfn::Endian,
        target::{
            Step,
            Target, //
        },
    },
    mm::stat,
    virtio::{
        self,
        ConfigField, //
    },
    virtio_config_field,
};
use core::num::NonZeroUsize;
use kernel::{
    debugfs,
    device::{
        Bound,
        Core, //
    },
    new_mutex,
    prelude::*,
    sync::{
        atomic::{
            Atomic,
            Relaxed, //
        },
        Mutex,
        MutexGuard, //
    },
    time::{
        delay::fsleep,
        Delta,
        Instant,
        Monotonic, //
    },
};

/// The host's target balloon size, in 4 KiB balloon pages.
const NUM_PAGES: ConfigField<virtio_balloon_config, u32> =
    virtio_config_field!(virtio_balloon_config, num_pages);
/// The balloon's size as the driver reports it, in 4 KiB balloon pages.
const ACTUAL: ConfigField<virtio_balloon_config, u32> =
    virtio_config_field!(virtio_balloon_config, actual);

/// What the negotiated features decide.
#[derive(Clone, Copy)]
pub(super) struct Negotiated {
    /// `VIRTIO_BALLOON_F_STATS_VQ`.
    pub(super) stats: bool,
    /// `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`.
    pub(super) deflate_on_oom: bool,
    /// `VIRTIO_BALLOON_F_FREE_PAGE_HINT`.
    pub(super) free_page_hint: bool,
    /// `VIRTIO_BALLOON_F_PAGE_POISON`.
    pub(super) page_poison: bool,
    /// `VIRTIO_BALLOON_F_REPORTING`.
    pub(super) reporting: bool,
    /// Byte order of the queues' PFNs and statistics.
    pub(super) endian: Endian,
}

impl Negotiated {
    /// The negotiated features of `dev`.
    pub(super) fn of(dev: &virtio::Device<Core<'_>>) -> Self {
        Self {
            stats: dev.has_feature(uapi::VIRTIO_BALLOON_F_STATS_VQ),
            deflate_on_oom: dev.has_feature(uapi::VIRTIO_BALLOON_F_DEFLATE_ON_OOM),
            free_page_hint: dev.has_feature(uapi::VIRTIO_BALLOON_F_FREE_PAGE_HINT),
            page_poison: dev.has_feature(uapi::VIRTIO_BALLOON_F_PAGE_POISON),
            reporting: dev.has_feature(uapi::VIRTIO_BALLOON_F_REPORTING),
            endian: if dev.is_little_endian() {
                Endian::Little
            } else {
                Endian::Native
            },
        }
    }
}

/// How the balloon batches its work, which the queues decide: PFN buffers
/// in flight per queue, and whole blocks.
#[derive(Clone, Copy)]
pub(super) struct Batching {
    /// PFN buffers that may be on the inflate queue at once.
    pub(super) inflate_depth: NonZeroUsize,
    /// PFN buffers that may be on the deflate queue at once: half of
    /// `buffers` capped by the deflate ring's size, rounded up (16 by
    /// default; 1 for `buffers=1`). Deflating is guest-bound (QEMU only
    /// calls `madvise(MADV_WILLNEED)`): fewer pages taken off the list and
    /// not yet freed deflate faster (README, "Performance").
    pub(super) deflate_depth: NonZeroUsize,
    /// Deflate buffers a round sends before it writes `actual`: twice
    /// `buffers` capped by the deflate ring's size (64 by default).
    pub(super) deflate_round: usize,
    /// Inflate whole blocks when free memory has them (module parameter
    /// `blocks`, and two buffers in flight at least).
    pub(super) blocks: bool,
    /// Report the blocks inflated on the free page reporting queue.
    pub(super) report_blocks: bool,
}

impl Batching {
    /// For `dev`, whose queues exist, with the features `negotiated`: the
    /// `buffers` module parameter (0: [`DEFAULT_BUFFERS_IN_FLIGHT`]) capped
    /// by each ring's size, in flight on the inflate queue and half of it on
    /// the deflate queue.
    pub(super) fn of(dev: &virtio::Device<Bound>, negotiated: &Negotiated) -> Result<Self> {
        let want = match crate::module_parameters::buffers.get() {
            0 => DEFAULT_BUFFERS_IN_FLIGHT,
            n => NonZeroUsize::new(n as usize).unwrap_or(DEFAULT_BUFFERS_IN_FLIGHT),
        };
        let depth = |ring: u32| {
            NonZeroUsize::new(ring as usize).map_or(NonZeroUsize::MIN, |ring| want.min(ring))
        };
        let inflate_depth = depth(dev.vq::<InflateBuffer>(vq::INFLATE)?.size());
        let deflate_want = depth(dev.vq::<DeflateBuffer>(vq::DEFLATE)?.size());
        let blocks = crate::module_parameters::blocks.get() != 0 && inflate_depth.get() >= 2;
        Ok(Self {
            inflate_depth,
            deflate_depth: NonZeroUsize::new(deflate_want.get().div_ceil(2))
                .unwrap_or(NonZeroUsize::MIN),
            deflate_round: 2 * deflate_want.get(),
            blocks,
            // QEMU discards a reported range only if `poison_val` is 0
            // (`virtio_balloon_handle_report()`): else reporting is wasted.
            report_blocks: blocks
                && negotiated.reporting
                && !(negotiated.page_poison && super::poison::poison_val() != 0),
        })
    }
}

/// Buffers in flight by default: enough to keep the host busy while the
/// guest prepares the next ones.
const DEFAULT_BUFFERS_IN_FLIGHT: NonZeroUsize = NonZeroUsize::new(32).unwrap();

/// What the balloon lock protects (C's `balloon_lock`).
pub(super) struct Ballooned {
    /// Balloon pages (4 KiB) the host was told about (C's `num_pages`).
    pub(super) num_pages: u32,
    /// Inflate buffers not on the queue.
    pub(super) inflate_buffers: BufferPool<InflateBuffer>,
    /// Deflate buffers not on the queue, each with room for one buffer's
    /// pages.
    pub(super) deflate_buffers: BufferPool<DeflateBuffer>,
}

/// One caller of [`Host::lock_within`] counted in
/// [`Host`]`::patient_waiters` while it exists.
struct PatientWaiter<'a>(&'a Atomic<i32>);

impl<'a> PatientWaiter<'a> {
    fn new(waiters: &'a Atomic<i32>) -> Self {
        waiters.add(1, Relaxed);
        Self(waiters)
    }
}

impl Drop for PatientWaiter<'_> {
    fn drop(&mut self) {
        self.0.add(-1, Relaxed);
    }
}

/// The device as the balloon talks to it.
#[pin_data]
pub(crate) struct Host {
    binding: virtio::Binding,
    negotiated: Negotiated,
    batching: Batching,
    /// The balloon lock.
    #[pin]
    ballooned: Mutex<Ballooned>,
    /// How long the host may take to return a buffer.
    timeout: Delta,
    /// The host stopped answering: ask it nothing more until it does.
    unresponsive: Atomic<bool>,
    /// Whether an excessive target was already reported.
    clamp_reported: Atomic<bool>,
    /// Callers of [`Host::lock_within`] (the OOM notifier) waiting for the
    /// balloon lock: page migration leaves the lock to them.
    patient_waiters: Atomic<i32>,
    /// The task running the OOM notifier ([`Host::oom_context`]), or 0.
    oom_task: Atomic<usize>,
    /// Performance counters, in debugfs.
    #[pin]
    perf: debugfs::File<Counters>,
}

impl Host {
    /// The host side of `dev`, whose queues exist; its counters go in
    /// `debugfs`.
    pub(super) fn new<'a>(
        dev: &virtio::Device<Core<'_>>,
        negotiated: Negotiated,
        batching: Batching,
        timeout: Delta,
        debugfs: &'a debugfs::Dir,
    ) -> impl PinInit<Self, Error> + 'a {
        let binding = dev.binding();
        try_pin_init!(Self {
            binding,
            negotiated,
            batching,
            ballooned <- new_mutex!(Ballooned {
                num_pages: 0,
                inflate_buffers: BufferPool::new(batching.inflate_depth.get(), inflate_buffer)?,
                deflate_buffers: BufferPool::new(batching.deflate_depth.get(), deflate_buffer)?,
            }),
            timeout,
            unresponsive: Atomic::new(false),
            clamp_reported: Atomic::new(false),
            patient_waiters: Atomic::new(0),
            oom_task: Atomic::new(0),
            perf <- debugfs.read_only_file(c"stats", Counters::new()),
        }? Error)
    }

    /// The device, for deferred work.
    pub(super) fn binding(&self) -> &virtio::Binding {
        &self.binding
    }

    /// What the negotiated features decide.
    pub(super) fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// How the balloon batches its work.
    pub(super) fn batching(&self) -> &Batching {
        &self.batching
    }

    /// The performance counters.
    pub(super) fn perf(&self) -> &Counters {
        &self.perf
    }

    /// How long the host may take to return a buffer.
    pub(super) fn timeout(&self) -> Delta {
        self.timeout
    }

    /// Takes the balloon lock.
    ///
    /// Never from the OOM notifier ([`Host::lock_within`] is its way): a
    /// size round holds the lock while it waits for the host, and the
    /// notifier holds `oom_lock`, which every allocation that fails waits
    /// for. Such a call, contended or not, is counted
    /// (`oom_notify_blocking_locks` in debugfs), which `deflate_on_oom_on`
    /// and `oom_with_late_host_rs` require to be 0.
    pub(super) fn lock(&self) -> MutexGuard<'_, Ballooned> {
        if self.on_oom_task() {
            self.perf.add(Counter::OomNotifyBlockingLocks, 1);
        }
        self.ballooned.lock()
    }

    /// Marks the calling task as the OOM notifier's until the context is
    /// dropped, for [`Host::lock`] to count what it must not do.
    ///
    /// The kernel calls OOM notifiers under `oom_lock`, one at a time.
    pub(super) fn oom_context(&self) -> OomContext<'_> {
        self.oom_task.store(current_task_id(), Relaxed);
        OomContext(self)
    }

    /// Whether the calling task is running the OOM notifier.
    fn on_oom_task(&self) -> bool {
        self.oom_task.load(Relaxed) == current_task_id()
    }

    /// Takes the balloon lock if it is free within `patience`: for the OOM
    /// notifier, which must not wait behind a round that waits for the
    /// host. The lock is polled, not queued for, so while it waits, page
    /// migration gives way ([`Host::try_lock_or_yield`]).
    pub(super) fn lock_within(&self, patience: Delta) -> Option<MutexGuard<'_, Ballooned>> {
        let _waiting = PatientWaiter::new(&self.patient_waiters);
        let start = Instant::<Monotonic>::now();
        loop {
            if let Some(guard) = self.ballooned.try_lock() {
                if self.on_oom_task() {
                    self.perf.add(Counter::OomNotifyLocks, 1);
                }
                return Some(guard);
            }
            if start.elapsed() >= patience {
                return None;
            }
            fsleep(Delta::from_millis(1));
        }
    }

    /// Takes the balloon lock if it is free and no caller of
    /// [`Host::lock_within`] is waiting for it: for page migration, which
    /// never waits (compaction puts the page back and may try again).
    ///
    /// Compaction migrating ballooned pages one after the other, each a
    /// round trip to the host under the lock, could otherwise keep a
    /// polling OOM notifier from the lock until it gives up. Best effort: a
    /// migration that took the lock before the notifier came still holds
    /// it for up to two round trips to the host.
    pub(super) fn try_lock_or_yield(&self) -> Option<MutexGuard<'_, Ballooned>> {
        if self.patient_waiters.load(Relaxed) > 0 {
            return None;
        }
        self.ballooned.try_lock()
    }

    /// Makes the PFN buffers a deleted queue took with it (after resume).
    /// Allocates, so it runs without the balloon lock.
    pub(super) fn refill_buffers(&self) -> Result {
        let (inflate, deflate) = {
            let b = self.lock();
            (b.inflate_buffers.missing(), b.deflate_buffers.missing())
        };
        let mut new_inflate = KVec::with_capacity(inflate, GFP_KERNEL)?;
        for _ in 0..inflate {
            new_inflate.push(inflate_buffer()?, GFP_KERNEL)?;
        }
        let mut new_deflate = KVec::with_capacity(deflate, GFP_KERNEL)?;
        for _ in 0..deflate {
            new_deflate.push(deflate_buffer()?, GFP_KERNEL)?;
        }
        let mut b = self.lock();
        for buf in new_inflate.drain_all() {
            b.inflate_buffers.put(buf);
        }
        for buf in new_deflate.drain_all() {
            b.deflate_buffers.put(buf);
        }
        Ok(())
    }

    /// The guest's memory in guest pages with `ballooned` balloon pages
    /// inflated: the managed pages, plus what the balloon took out of them
    /// (without deflate-on-OOM ballooned pages leave the managed count).
    pub(super) fn guest_pages(&self, ballooned: u32) -> u64 {
        let managed = stat::totalram_pages();
        if self.negotiated.deflate_on_oom {
            managed
        } else {
            managed + u64::from(ballooned / BALLOON_PAGES_PER_PAGE)
        }
    }

    /// Reads the host's target (`num_pages`, in balloon pages): a
    /// configuration read, which may sleep; done without the balloon lock.
    pub(super) fn read_target(&self, dev: &virtio::Device<Bound>) -> Result<u32> {
        let sw = Stopwatch::start();
        let num_pages = dev.config_read(NUM_PAGES);
        sw.stop(&self.perf, Counter::ConfigNs);
        num_pages
    }

    /// The next step from `current` balloon pages towards the host's
    /// target `num_pages` (C's `towards_target()`). A target beyond the
    /// guest's memory is clamped and logged once.
    pub(super) fn towards_target(
        &self,
        dev: &virtio::Device<Bound>,
        num_pages: u32,
        current: u32,
    ) -> Step {
        let guest = self.guest_pages(current) * u64::from(BALLOON_PAGES_PER_PAGE);
        let target = Target::from_host(num_pages, BALLOON_PAGES_PER_PAGE, guest);
        if target.clamped && !self.clamp_reported.xchg(true, Relaxed) {
            dev_warn!(
                dev.as_ref(),
                "host asks for {} balloon pages, the guest has {}: limiting the balloon to {}\n",
                num_pages,
                guest,
                target.pages
            );
        }
        target.step_from(current)
    }

    /// Writes the balloon size to `actual` (C's `update_balloon_size()`).
    pub(super) fn update_balloon_size(&self, dev: &virtio::Device<Bound>) {
        let b = self.lock();
        self.publish_actual(dev, &b);
    }

    /// Writes the balloon size to `actual`, the balloon lock held (`b`):
    /// each write is of the size at that moment, and a size changed later
    /// is written later, so `actual` never goes back to an older value.
    pub(super) fn publish_actual(&self, dev: &virtio::Device<Bound>, b: &Ballooned) {
        let sw = Stopwatch::start();
        if let Err(e) = dev.config_write(ACTUAL, b.num_pages) {
            dev_warn!(dev.as_ref(), "cannot write actual: {:?}\n", e);
        }
        sw.stop(&self.perf, Counter::ConfigNs);
    }

    /// Whether the host answers, after trying to recover one marked
    /// unresponsive: that takes back (under the balloon lock) the buffers
    /// it has returned since, and clears the mark once it holds none.
    pub(super) fn recover(&self, dev: &virtio::Device<Bound>) -> bool {
        if !self.unresponsive.load(Relaxed) {
            return true;
        }
        let mut b = self.lock();
        let (Ok(iq), Ok(dq)) = (
            dev.vq::<InflateBuffer>(vq::INFLATE),
            dev.vq::<DeflateBuffer>(vq::DEFLATE),
        ) else {
            return false;
        };
        while let Some(used) = iq.get_buf() {
            b.inflate_buffers.put(used.buf);
        }
        while let Some(mut used) = dq.get_buf() {
            used.buf.ctx().release();
            b.deflate_buffers.put(used.buf);
        }
        if iq.is_broken() || dq.is_broken() || iq.in_flight() + dq.in_flight() > 0 {
            return false;
        }
        self.unresponsive.store(false, Relaxed);
        dev_info!(dev.as_ref(), "the device answers again\n");
        true
    }

    /// The host did not return a buffer (`err`: timed out after `waited`,
    /// or the queue broke): stop asking it.
    pub(super) fn unresponsive(
        &self,
        dev: &virtio::Device<Bound>,
        what: &str,
        err: Error,
        waited: Delta,
    ) {
        if self.unresponsive.xchg(true, Relaxed) {
            return;
        }
        let timeout = waited.as_millis();
        if err == ETIMEDOUT {
            dev_err!(
                dev.as_ref(),
                "the device did not return an {} buffer within {} ms: stopping; pages it holds \
                 are kept until it returns them (MUST_TELL_HOST)\n",
                what,
                timeout
            );
        } else {
            dev_err!(
                dev.as_ref(),
                "the {} queue broke (error {}) before the device returned a buffer: stopping; \
                 pages it holds are kept until it returns them (MUST_TELL_HOST)\n",
                what,
                err.to_errno()
            );
        }
    }

    /// Whether the host was marked unresponsive.
    pub(super) fn is_marked_unresponsive(&self) -> bool {
        self.unresponsive.load(Relaxed)
    }
}

/// The OOM notifier is running on this task ([`Host::oom_context`]).
#[must_use = "the mark ends when the context is dropped"]
pub(super) struct OomContext<'a>(&'a Host);

impl Drop for OomContext<'_> {
    fn drop(&mut self) {
        self.0.oom_task.store(0, Relaxed);
    }
}

/// The calling task's identity: its `task_struct`'s address, never 0.
fn current_task_id() -> usize {
    kernel::task::Task::current_raw().addr()
}

#[kunit_tests(virtio_balloon_rs_config_fields)]
mod tests {
    use super::{
        super::{
            hinting::CMD_ID,
            poison::POISON_VAL, //
        },
        *,
    };

    /// Offset, width and the feature without which the field does not exist.
    fn layout(field: ConfigField<virtio_balloon_config, u32>) -> (usize, usize, Option<u32>) {
        (field.offset(), field.width(), field.feature())
    }

    #[test]
    fn num_pages_always_exists() {
        assert_eq!(layout(NUM_PAGES), (0, 4, None));
    }

    #[test]
    fn actual_always_exists() {
        assert_eq!(layout(ACTUAL), (4, 4, None));
    }

    #[test]
    fn free_page_hint_cmd_id_needs_free_page_hint() {
        assert_eq!(
            layout(CMD_ID),
            (8, 4, Some(uapi::VIRTIO_BALLOON_F_FREE_PAGE_HINT))
        );
    }

    #[test]
    fn poison_val_needs_page_poison() {
        assert_eq!(
            layout(POISON_VAL),
            (12, 4, Some(uapi::VIRTIO_BALLOON_F_PAGE_POISON))
        );
    }
}
