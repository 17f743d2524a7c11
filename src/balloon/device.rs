// SPDX-License-Identifier: GPL-2.0

//! One balloon device (C's `struct virtio_balloon`): its state, the work
//! that moves the balloon towards the host's target
//! (`update_balloon_size_func()`), statistics requests, and what happens
//! when the device goes away or the system sleeps.

use super::{
    deflate::leak_balloon,
    hinting::FreePageHints,
    host::{
        Batching,
        Host,
        Negotiated, //
    },
    inflate::Inflater,
    lists::{
        Lists,
        BALLOON_PAGES_PER_PAGE, //
    },
    perf::{
        self,
        Counter, //
    },
    poison,
    round::{
        Round,
        RoundContext,
        Stop, //
    },
    stats, vq,
    wakeup::{
        Wakeup,
        WakeupSignal, //
    },
};
use crate::{
    compat::{
        new_spinlock_irq,
        SpinLockIrq, //
    },
    logic::target::{
        out_of_puff_backoff_ms,
        Step, //
    },
    virtio::{
        self,
        VqInfo, //
    },
    workqueue::{
        cancel_delayed_work,
        cancel_delayed_work_sync,
        cancel_work_sync, //
    },
};
use kernel::{
    device::{
        Bound,
        Core, //
    },
    prelude::*,
    sync::Arc,
    time::{
        delay::fsleep,
        msecs_to_jiffies,
        Delta, //
    },
    workqueue::{
        self,
        impl_has_delayed_work,
        impl_has_work,
        new_delayed_work,
        new_work,
        DelayedWork,
        Work,
        WorkItem, //
    },
};

/// Work item: move the balloon towards the target (C's `update_balloon_size_work`).
const SIZE_WORK: u64 = 0;
/// Work item: answer a statistics request (C's `update_balloon_stats_work`).
const STATS_WORK: u64 = 1;
/// Delayed work item: look at the target again later.
const RECHECK_WORK: u64 = 2;

/// How long the balloon waits, while it holds at the guest's reserve,
/// before it looks whether memory was freed (a new target is seen at once).
const HOLD_RECHECK_MS: u32 = 5000;
/// How long to wait for pages compaction has isolated.
const ISOLATED_RECHECK_MS: u32 = 10;

/// What the size work does after a round.
enum Next {
    /// Run again at once.
    Again,
    /// Look again after this many milliseconds, or at the next target.
    Later(u32),
    /// Nothing to do until the next target.
    Idle,
}

/// One balloon device.
#[pin_data]
pub(crate) struct Balloon {
    /// The pages taken from the guest (C's `vb_dev_info`).
    #[pin]
    lists: Lists,
    /// The device: target, PFN queues, the balloon lock.
    host: Arc<Host>,
    /// Allocating pages to inflate.
    #[pin]
    inflater: Inflater,
    /// C's `stop_update`: once set, no work is queued any more.
    #[pin]
    stop_update: SpinLockIrq<bool>,
    /// Keeps the system awake while a host request is served.
    #[pin]
    wakeup: Wakeup,
    #[pin]
    size_work: Work<Balloon, SIZE_WORK>,
    #[pin]
    recheck_work: DelayedWork<Balloon, RECHECK_WORK>,
    #[pin]
    stats_work: Work<Balloon, STATS_WORK>,
    /// Free page hinting, if negotiated.
    hints: Option<Arc<FreePageHints>>,
}

impl_has_work! {
    impl HasWork<Balloon, SIZE_WORK> for Balloon { self.size_work }
    impl HasWork<Balloon, STATS_WORK> for Balloon { self.stats_work }
}

impl_has_delayed_work! {
    impl HasDelayedWork<Balloon, RECHECK_WORK> for Balloon { self.recheck_work }
}

/// Creates the virtqueues the negotiated features call for (C's `init_vqs()`,
/// without the statistics buffer).
fn init_vqs(dev: &virtio::Device<Core<'_>>, negotiated: &Negotiated) -> Result {
    let used = |on: bool, info: VqInfo| if on { info } else { VqInfo::UNUSED };
    dev.find_vqs(&[
        VqInfo::new(c"inflate"),
        VqInfo::new(c"deflate"),
        used(negotiated.stats, VqInfo::new(c"stats")),
        used(
            negotiated.free_page_hint,
            VqInfo::free_page_hints(c"free_page_vq"),
        ),
        used(negotiated.reporting, VqInfo::new(c"reporting_vq")),
    ])
}

impl Balloon {
    /// Sets up a new device (C's `virtballoon_probe()`): queues, balloon
    /// list, first statistics buffer, free page hinting, poison value. The
    /// registrations (OOM notifier, shrinker, page reporting) are the
    /// driver's ([`super::BalloonDevice`]).
    pub(super) fn probe(dev: &virtio::Device<Core<'_>>, timeout: Delta) -> Result<Arc<Self>> {
        if !dev.has_config_access() {
            dev_err!(dev.as_ref(), "config access disabled\n");
            return Err(EINVAL);
        }
        let negotiated = Negotiated::of(dev);
        init_vqs(dev, &negotiated)?;
        // Never more buffers in flight than a queue holds.
        let batching = Batching::of(dev, &negotiated)?;
        let hints = if negotiated.free_page_hint {
            // One entry is always reserved for the command id.
            if dev.vq::<KBox<u32>>(vq::FREE_PAGE).map_or(0, |q| q.size()) < 2 {
                return Err(ENOSPC);
            }
            Some(FreePageHints::new(
                dev.binding(),
                negotiated.endian,
                timeout,
            )?)
        } else {
            None
        };
        let debugfs = perf::debugfs_dir(dev.as_ref().name());
        let host = Arc::pin_init(
            Host::new(dev, negotiated, batching, timeout, &debugfs),
            GFP_KERNEL,
        )?;
        let this = Arc::pin_init(
            try_pin_init!(Self {
                // Without deflate-on-OOM, ballooned pages leave MemTotal.
                lists <- Lists::new(!negotiated.deflate_on_oom, host.clone()),
                host,
                inflater <- Inflater::new(batching.inflate_depth),
                stop_update <- new_spinlock_irq!(false),
                wakeup <- Wakeup::new(),
                size_work <- new_work!("virtio_balloon_rs::size_work"),
                recheck_work <- new_delayed_work!("virtio_balloon_rs::recheck_work"),
                stats_work <- new_work!("virtio_balloon_rs::stats_work"),
                hints,
            }? Error),
            GFP_KERNEL,
        )?;
        if negotiated.stats {
            // Prime the stats queue with one buffer so the host can use it
            // to ask for statistics later.
            stats::prime(dev, negotiated.endian)?;
        }
        if negotiated.page_poison {
            poison::write_poison_val(dev);
        }
        dev.set_wakeup_capable(true);
        Ok(this)
    }

    /// The device side, for the registrations' handlers.
    pub(super) fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// Free page hinting, if negotiated.
    pub(super) fn hints(&self) -> Option<&Arc<FreePageHints>> {
        self.hints.as_ref()
    }

    /// The device is live: start moving towards the host's target.
    pub(super) fn ready(self: &Arc<Self>, dev: &virtio::Device<Core<'_>>) {
        let step = self.host.read_target(dev).map(|target| {
            let current = self.host.lock().num_pages;
            self.host.towards_target(dev, target, current)
        });
        if !matches!(step, Ok(Step::Idle)) {
            self.changed(dev);
        }
    }

    /// Configuration changed (C's `virtballoon_changed()`), interrupt
    /// context: queue the size work (and the hinting work).
    pub(super) fn changed(self: &Arc<Self>, dev: &virtio::Device) {
        let stopped = self.stop_update.lock();
        if *stopped {
            return;
        }
        self.wakeup.start(dev, WakeupSignal::Adjust);
        // An `Err` means the work is already queued, which is what we want.
        let _ = workqueue::system_freezable().enqueue::<_, SIZE_WORK>(self.clone());
        if let Some(hints) = &self.hints {
            hints.config_changed();
        }
    }

    /// The host returned the statistics buffer (C's `stats_request()`),
    /// interrupt context.
    pub(super) fn stats_request(self: &Arc<Self>, dev: &virtio::Device) {
        let stopped = self.stop_update.lock();
        if !*stopped {
            self.wakeup.start(dev, WakeupSignal::Stats);
            let _ = workqueue::system_freezable().enqueue::<_, STATS_WORK>(self.clone());
        }
    }

    /// What a round on `dev` works with, waiting at most `wait` for the
    /// host.
    fn round_context<'a>(
        &'a self,
        dev: &'a virtio::Device<Bound>,
        wait: Delta,
    ) -> RoundContext<'a> {
        RoundContext {
            dev,
            host: &self.host,
            lists: &self.lists,
            wait,
        }
    }

    /// One round of the size work (C's `update_balloon_size_func()`): read
    /// the host's target, then, under the balloon lock, where the balloon
    /// is, and move up to a few dozen buffers towards the target; a round
    /// that told the host writes `actual`.
    fn update_balloon_size_func(&self, dev: &virtio::Device<Bound>) -> Next {
        if !self.host.recover(dev) {
            return Next::Idle;
        }
        let target = match self.host.read_target(dev) {
            Ok(target) => target,
            Err(e) => {
                dev_warn!(dev.as_ref(), "cannot read the target: {:?}\n", e);
                return Next::Idle;
            }
        };
        let ctx = self.round_context(dev, self.host.timeout());
        let mut b = self.host.lock();
        let round = match self.host.towards_target(dev, target, b.num_pages) {
            Step::Idle => {
                drop(b);
                self.inflater.end();
                return Next::Idle;
            }
            Step::Inflate(n) => self.inflater.fill_balloon(&ctx, b, n),
            Step::Deflate(n) => {
                self.inflater.end();
                leak_balloon(&ctx, &mut b, n)
            }
        };
        self.host.perf().add(Counter::Rounds, 1);
        match round.stop {
            Some(Stop::Host) => Next::Idle,
            Some(Stop::Hold) => Next::Later(HOLD_RECHECK_MS),
            // Let the guest breathe, as C does, and longer each time in a
            // row (C retries every 200 ms for as long as it fails).
            Some(Stop::OutOfPuff) => Next::Later(out_of_puff_backoff_ms(
                self.inflater.out_of_puff_rounds(),
                HOLD_RECHECK_MS,
            )),
            // Every page left is isolated for migration right now.
            None if round.moved == 0 => Next::Later(ISOLATED_RECHECK_MS),
            None => Next::Again,
        }
    }

    /// Deflates up to `num` balloon pages for the OOM notifier, waiting at
    /// most `lock_patience` for the balloon lock and `host_patience` for the
    /// host; returns the guest pages freed. The round writes `actual`
    /// before it lets the lock go: waiting for the lock again could take as
    /// long as a size round waits for the host.
    pub(super) fn deflate_for_oom(
        &self,
        num: u32,
        lock_patience: Delta,
        host_patience: Delta,
    ) -> usize {
        let Some(dev) = self.host.binding().try_access() else {
            return 0;
        };
        if self.host.is_marked_unresponsive() {
            return 0;
        }
        let Some(mut b) = self.host.lock_within(lock_patience) else {
            return 0;
        };
        let round: Round = leak_balloon(&self.round_context(&dev, host_patience), &mut b, num);
        drop(b);
        self.host
            .perf()
            .add(Counter::OomNotifyPages, round.acked.into());
        (round.acked / BALLOON_PAGES_PER_PAGE) as usize
    }

    /// Stops all asynchronous work (C's `stop_update` and `cancel_work_sync()`s).
    pub(super) fn quiesce(self: &Arc<Self>, dev: &virtio::Device) {
        *self.stop_update.lock() = true;
        cancel_work_sync::<_, SIZE_WORK>(self);
        cancel_delayed_work_sync::<_, RECHECK_WORK>(self);
        cancel_work_sync::<_, STATS_WORK>(self);
        if let Some(hints) = &self.hints {
            hints.cancel();
        }
        // Requests whose work was cancelled no longer keep the system awake.
        self.wakeup.cancel(dev);
    }

    /// Deflates the whole balloon, telling the host (C's `remove_common()`
    /// up to the reset), and gives hinted blocks back.
    ///
    /// Loops until the host has every page back (pages compaction has
    /// isolated come back soon). If the host stops answering, the pages it
    /// was told about are never freed: they stay allocated for good
    /// (`MUST_TELL_HOST` forbids reusing them), which is logged.
    pub(super) fn release_all(&self, dev: &virtio::Device<Bound>) {
        let ctx = self.round_context(dev, self.host.timeout());
        loop {
            if !self.host.recover(dev) {
                break;
            }
            let mut b = self.host.lock();
            if b.num_pages == 0 {
                break;
            }
            let num = b.num_pages;
            let round = leak_balloon(&ctx, &mut b, num);
            drop(b);
            if round.stop == Some(Stop::Host) {
                break;
            }
            if round.moved == 0 {
                // Every page left is isolated for migration: wait.
                fsleep(Delta::from_millis(ISOLATED_RECHECK_MS.into()));
            }
        }
        let mut b = self.host.lock();
        if b.num_pages > 0 {
            let left = b.num_pages;
            b.num_pages = 0;
            drop(b);
            dev_err!(
                dev.as_ref(),
                "the device stopped answering with {} balloon pages inflated: they are never \
                 freed (MUST_TELL_HOST)\n",
                left
            );
        } else {
            drop(b);
            self.host.update_balloon_size(dev);
        }
        self.inflater.end();
        if let Some(hints) = &self.hints {
            hints.return_free_pages_to_mm(usize::MAX);
        }
    }

    /// The device goes away (C's `virtballoon_remove()` without the
    /// registrations, which the driver data drops): stop the work, give
    /// every page back, telling the host.
    pub(super) fn remove(self: &Arc<Self>, dev: &virtio::Device<Core<'_>>) {
        self.quiesce(dev);
        self.release_all(dev);
    }

    /// System suspend (C's `virtballoon_freeze()`): the PM core has frozen
    /// the work already. Empty the balloon, reset the device, delete the
    /// queues.
    pub(super) fn freeze(&self, dev: &virtio::Device<Core<'_>>) -> Result {
        self.release_all(dev);
        dev.del_vqs();
        Ok(())
    }

    /// System resume (C's `virtballoon_restore()`): queues again, then
    /// follow the target.
    pub(super) fn restore(self: &Arc<Self>, dev: &virtio::Device<Core<'_>>) -> Result {
        init_vqs(dev, self.host.negotiated())?;
        self.host.refill_buffers()?;
        if self.host.negotiated().stats {
            stats::prime(dev, self.host.negotiated().endian)?;
        }
        dev.ready();
        self.ready(dev);
        self.host.update_balloon_size(dev);
        Ok(())
    }
}

impl WorkItem<SIZE_WORK> for Balloon {
    type Pointer = Arc<Balloon>;

    fn run(this: Arc<Balloon>) {
        this.wakeup.process(WakeupSignal::Adjust);
        let next = match this.host.binding().try_access() {
            Some(dev) => this.update_balloon_size_func(&dev),
            None => Next::Idle,
        };
        let stopped = *this.stop_update.lock();
        match next {
            Next::Again if !stopped => {
                let _ = workqueue::system_freezable().enqueue::<_, SIZE_WORK>(this);
            }
            Next::Later(ms) if !stopped => {
                // Idle until then: let the system sleep meanwhile.
                this.wakeup.finish(this.host.binding().device());
                // The latest delay wins, as with `mod_delayed_work()`: a
                // recheck an earlier round left pending must not postpone
                // (or hasten) this one.
                cancel_delayed_work::<_, RECHECK_WORK>(&this);
                let _ = workqueue::system_freezable()
                    .enqueue_delayed::<_, RECHECK_WORK>(this, msecs_to_jiffies(ms));
            }
            _ => this.wakeup.finish(this.host.binding().device()),
        }
    }
}

impl WorkItem<RECHECK_WORK> for Balloon {
    type Pointer = Arc<Balloon>;

    fn run(this: Arc<Balloon>) {
        let stopped = this.stop_update.lock();
        if !*stopped {
            let _ = workqueue::system_freezable().enqueue::<_, SIZE_WORK>(this.clone());
        }
    }
}

impl WorkItem<STATS_WORK> for Balloon {
    type Pointer = Arc<Balloon>;

    fn run(this: Arc<Balloon>) {
        this.wakeup.process(WakeupSignal::Stats);
        if let Some(dev) = this.host.binding().try_access() {
            stats::handle_request(&dev, this.host.negotiated().endian);
        }
        this.wakeup.finish(this.host.binding().device());
    }
}
