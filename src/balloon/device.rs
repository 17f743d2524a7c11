// SPDX-License-Identifier: GPL-2.0

//! The state of one balloon device (C's `struct virtio_balloon`), probe,
//! the size-update work (`update_balloon_size_func()`), and removal.

use super::{
    hinting::HintState,
    inflate::Staging,
    perf::{
        self,
        Counter,
        Counters,
        Stopwatch, //
    },
    vq,
    wakeup::{
        Wakeup,
        WakeupSignal, //
    },
};
use crate::{
    bindings::uapi,
    impl_embeds,
    kext::{
        self,
        balloon::{
            BalloonDevInfo,
            BalloonPage, //
        },
        oom::OomNotifier,
        page_reporting::PageReporting,
        shrinker::Shrinker,
    },
    logic::{
        pfn::{
            pages_per_page,
            Endian,
            PfnArray,
            PFNS_PER_BUFFER, //
        },
        stats::StatsArray,
        target::{
            Step,
            Target, //
        },
    },
    virtio::{
        self,
        Tagged,
        VqInfo, //
    },
};
use core::mem::offset_of;
use kernel::{
    debugfs,
    device::{
        Bound,
        Core, //
    },
    new_mutex, new_spinlock_irq,
    prelude::*,
    sync::{
        atomic::{
            Atomic,
            Relaxed, //
        },
        Arc,
        Mutex,
        SpinLockIrq, //
    },
    workqueue::{
        self,
        impl_has_work,
        new_work,
        Work,
        WorkItem, //
    },
};

/// Offset of `num_pages` (the host's target) in the configuration space.
pub(super) const CONFIG_NUM_PAGES: usize = offset_of!(uapi::virtio_balloon_config, num_pages);
/// Offset of `actual` (the balloon's size) in the configuration space.
pub(super) const CONFIG_ACTUAL: usize = offset_of!(uapi::virtio_balloon_config, actual);
/// Offset of `free_page_hint_cmd_id` (`VIRTIO_BALLOON_F_FREE_PAGE_HINT`).
pub(super) const CONFIG_FREE_PAGE_HINT_CMD_ID: usize =
    offset_of!(uapi::virtio_balloon_config, __bindgen_anon_1);
/// Offset of `poison_val` (`VIRTIO_BALLOON_F_PAGE_POISON`).
pub(super) const CONFIG_POISON_VAL: usize = offset_of!(uapi::virtio_balloon_config, poison_val);

/// Priority of the OOM notifier (C's `VIRTIO_BALLOON_OOM_NOTIFY_PRIORITY`).
const OOM_NOTIFY_PRIORITY: i32 = 80;

const _: () = assert!(crate::logic::pfn::BALLOON_PFN_SHIFT == uapi::VIRTIO_BALLOON_PFN_SHIFT);
const _: () = assert!(crate::logic::stats::tag::NR == uapi::VIRTIO_BALLOON_S_NR as usize);

/// A PFN buffer for the inflate queue.
pub(super) type PfnBuffer = KBox<PfnArray>;
/// A PFN buffer for the deflate queue, carrying the pages it names: they
/// are freed only once the host has read it.
pub(super) type DeflateBuffer = Tagged<PfnArray, KVec<BalloonPage>>;
/// A statistics buffer for the stats queue.
pub(super) type StatsBuffer = KBox<StatsArray>;

/// State protected by the balloon lock (C's `balloon_lock`).
pub(super) struct Locked {
    /// Balloon pages the host was told about (C's `num_pages`).
    pub(super) num_pages: u32,
    /// Inflate buffers not on the queue.
    pub(super) inflate_pool: KVec<PfnBuffer>,
    /// Deflate buffers not on the queue, each with room for one buffer's
    /// pages, so that deflating never allocates (the OOM path relies on it).
    pub(super) deflate_pool: KVec<DeflateBuffer>,
}

impl Locked {
    /// Allocates `depth` buffers of each kind.
    fn new(depth: usize) -> Result<Self> {
        let mut inflate_pool = KVec::with_capacity(depth, GFP_KERNEL)?;
        let mut deflate_pool = KVec::with_capacity(depth, GFP_KERNEL)?;
        for _ in 0..depth {
            inflate_pool.push(new_inflate_buffer()?, GFP_KERNEL)?;
            deflate_pool.push(new_deflate_buffer()?, GFP_KERNEL)?;
        }
        Ok(Self {
            num_pages: 0,
            inflate_pool,
            deflate_pool,
        })
    }

    /// An inflate buffer from the pool, or a new one if a vanished queue
    /// took some with it.
    pub(super) fn take_inflate_buffer(&mut self) -> Option<PfnBuffer> {
        self.inflate_pool
            .pop()
            .or_else(|| new_inflate_buffer().ok())
    }

    /// A deflate buffer from the pool, or a new one if a vanished queue
    /// took some with it.
    pub(super) fn take_deflate_buffer(&mut self) -> Option<DeflateBuffer> {
        self.deflate_pool
            .pop()
            .or_else(|| new_deflate_buffer().ok())
    }
}

fn new_inflate_buffer() -> Result<PfnBuffer> {
    Ok(KBox::new([0; PFNS_PER_BUFFER], GFP_KERNEL)?)
}

/// A deflate buffer with room for the pages of one buffer.
fn new_deflate_buffer() -> Result<DeflateBuffer> {
    Tagged::new(
        [0; PFNS_PER_BUFFER],
        KVec::with_capacity(PFNS_PER_BUFFER, GFP_KERNEL)?,
        GFP_KERNEL,
    )
}

/// Negotiated features and fixed properties of the device.
#[derive(Clone, Copy)]
pub(super) struct Props {
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
    /// Balloon pages per guest page.
    pub(super) per_page: u32,
    /// Byte order of the queues' PFNs and statistics.
    pub(super) endian: Endian,
    /// PFN buffers that may be on the inflate or deflate queue at once.
    pub(super) depth: usize,
}

/// One balloon device.
///
/// The kernel registrations come first so that they are dropped (and
/// unregistered) first, while everything their callbacks use still exists.
#[pin_data]
pub(crate) struct Balloon {
    #[pin]
    pub(super) oom: OomNotifier<Balloon>,
    #[pin]
    pub(super) reporting: PageReporting<Balloon>,
    #[pin]
    pub(super) shrinker: Shrinker<Balloon>,
    #[pin]
    pub(super) pages: BalloonDevInfo<Balloon>,
    pub(super) binding: virtio::Binding,
    pub(super) props: Props,
    #[pin]
    pub(super) locked: Mutex<Locked>,
    /// Pages of the inflate round being prepared; taken before `locked`.
    #[pin]
    pub(super) staging: Mutex<Staging>,
    /// C's `stop_update`: once set, no work is queued any more.
    #[pin]
    pub(super) stop_update: SpinLockIrq<bool>,
    #[pin]
    pub(super) wakeup: Wakeup,
    #[pin]
    pub(super) size_work: Work<Balloon, 0>,
    #[pin]
    pub(super) stats_work: Work<Balloon, 1>,
    /// Free page hinting (`VIRTIO_BALLOON_F_FREE_PAGE_HINT`).
    #[pin]
    pub(super) hint: HintState,
    #[pin]
    pub(super) hint_work: Work<Balloon, 2>,
    /// Inflate failures since the last success, for rate-limited logging.
    pub(super) out_of_puff: Atomic<u32>,
    /// Whether an excessive host target was already reported.
    pub(super) clamp_reported: Atomic<bool>,
    /// Whether inflating is held back to keep the guest's reserve.
    pub(super) holding: Atomic<bool>,
    /// Performance counters, shown in debugfs.
    #[pin]
    pub(super) perf: debugfs::File<Counters>,
}

impl_embeds!(Balloon {
    pages: BalloonDevInfo<Balloon>,
    oom: OomNotifier<Balloon>,
    reporting: PageReporting<Balloon>,
    shrinker: Shrinker<Balloon>,
});

impl_has_work! {
    impl HasWork<Balloon, 0> for Balloon { self.size_work }
    impl HasWork<Balloon, 1> for Balloon { self.stats_work }
    impl HasWork<Balloon, 2> for Balloon { self.hint_work }
}

/// PFN buffers to keep in flight on a queue of `ring` entries: the
/// `buffers` module parameter (0: automatic), at most the ring size.
fn buffers_in_flight(ring: usize) -> usize {
    let want = match crate::module_parameters::buffers.value() {
        0 => DEFAULT_BUFFERS_IN_FLIGHT,
        n => n as usize,
    };
    want.clamp(1, ring.max(1))
}

/// Buffers in flight by default: enough to keep the host busy while the
/// guest prepares the next ones.
const DEFAULT_BUFFERS_IN_FLIGHT: usize = 32;

impl Balloon {
    /// Sets up a new device (C's `virtballoon_probe()`): queues, balloon
    /// list, first statistics buffer, OOM notifier, free page hinting and
    /// reporting, poison value. The core sets `DRIVER_OK` afterwards.
    pub(super) fn probe(dev: &virtio::Device<Core<'_>>) -> Result<Arc<Self>> {
        if !dev.has_config_access() {
            dev_err!(dev.as_ref(), "config access disabled\n");
            return Err(EINVAL);
        }

        let props = Props {
            stats: dev.has_feature(uapi::VIRTIO_BALLOON_F_STATS_VQ),
            deflate_on_oom: dev.has_feature(uapi::VIRTIO_BALLOON_F_DEFLATE_ON_OOM),
            free_page_hint: dev.has_feature(uapi::VIRTIO_BALLOON_F_FREE_PAGE_HINT),
            page_poison: dev.has_feature(uapi::VIRTIO_BALLOON_F_PAGE_POISON),
            reporting: dev.has_feature(uapi::VIRTIO_BALLOON_F_REPORTING),
            per_page: pages_per_page(kernel::page::PAGE_SHIFT as u32),
            endian: if dev.is_little_endian() {
                Endian::Little
            } else {
                Endian::Native
            },
            depth: 1,
        };

        Self::init_vqs(dev, &props)?;
        // Never more buffers than a queue holds.
        let ring = dev.vq::<PfnBuffer>(vq::INFLATE)?.size() as usize;
        let props = Props {
            depth: buffers_in_flight(ring),
            ..props
        };
        let debugfs = perf::debugfs_dir(dev.as_ref().name());

        let reporting_capacity = if props.reporting {
            dev.sg_vq(vq::REPORTING)?.size()
        } else {
            0
        };
        if props.free_page_hint
            && dev
                .vq::<kext::free_page_hint::HintBuffer>(vq::FREE_PAGE)?
                .size()
                < 2
        {
            // One entry is always reserved for the command id.
            return Err(ENOSPC);
        }

        let this = Arc::pin_init(
            try_pin_init!(Self {
                oom <- OomNotifier::new(OOM_NOTIFY_PRIORITY),
                reporting <- PageReporting::new(None, reporting_capacity),
                shrinker <- Shrinker::new(),
                // Without deflate-on-OOM, ballooned pages leave MemTotal.
                pages <- BalloonDevInfo::new(!props.deflate_on_oom),
                binding: dev.binding(),
                props,
                locked <- new_mutex!(Locked::new(props.depth)?),
                staging <- new_mutex!(Staging::new(props.depth)?),
                stop_update <- new_spinlock_irq!(false),
                wakeup <- Wakeup::new(),
                size_work <- new_work!("virtio_balloon_rs::size_work"),
                stats_work <- new_work!("virtio_balloon_rs::stats_work"),
                hint <- HintState::new(),
                hint_work <- new_work!("virtio_balloon_rs::hint_work"),
                out_of_puff: Atomic::new(0),
                clamp_reported: Atomic::new(false),
                holding: Atomic::new(false),
                perf <- debugfs.read_only_file(c"stats", Counters::new()),
            }? Error),
            GFP_KERNEL,
        )?;

        if props.stats {
            // Prime the stats queue with one buffer so the host can use it
            // to ask for statistics later (C's `init_vqs()`).
            this.stats_prime(dev)?;
        }
        if props.free_page_hint {
            // Hinted blocks may be reused under memory pressure.
            this.shrinker.register(&this, c"virtio-balloon-rs")?;
        }
        if props.deflate_on_oom {
            this.oom.register(&this)?;
        }
        if props.page_poison {
            this.write_poison_val(dev);
        }
        if props.reporting {
            this.reporting.register(&this)?;
        }
        dev.set_wakeup_capable(true);
        Ok(this)
    }

    /// Creates the virtqueues the negotiated features call for.
    pub(super) fn init_vqs(dev: &virtio::Device<Core<'_>>, props: &Props) -> Result {
        let used = |on: bool, info: VqInfo| if on { info } else { VqInfo::UNUSED };
        dev.find_vqs(&[
            VqInfo::new(c"inflate"),
            VqInfo::new(c"deflate"),
            used(props.stats, VqInfo::new(c"stats")),
            used(props.free_page_hint, VqInfo::polled(c"free_page_vq")),
            used(props.reporting, VqInfo::new(c"reporting_vq")),
        ])
    }

    /// The device is live: start moving towards the host's target.
    pub(super) fn ready(self: &Arc<Self>, dev: &virtio::Device<Core<'_>>) {
        if self.towards_target(dev) != Step::Idle {
            self.changed(dev);
        }
    }

    /// Configuration changed (C's `virtballoon_changed()`), interrupt
    /// context: queue the size work.
    pub(super) fn changed(self: &Arc<Self>, dev: &virtio::Device<Bound>) {
        let stopped = self.stop_update.lock();
        if !*stopped {
            self.wakeup.start(dev, WakeupSignal::Adjust);
            self.queue_size_work();
            self.queue_free_page_work();
        }
    }

    fn queue_size_work(self: &Arc<Self>) {
        // An `Err` means the work is already queued, which is what we want.
        let _ = workqueue::system_freezable().enqueue::<Arc<Balloon>, 0>(self.clone());
    }

    /// The guest's memory in guest pages with `ballooned` balloon pages
    /// inflated: the managed pages, plus what the balloon took out of them
    /// (without deflate-on-OOM ballooned pages leave the managed count).
    pub(super) fn guest_pages(&self, ballooned: u32) -> u64 {
        let managed = kext::mm::totalram_pages();
        if self.props.deflate_on_oom {
            managed
        } else {
            managed + u64::from(ballooned / self.props.per_page.max(1))
        }
    }

    /// Reads the host's target and decides the next step (C's `towards_target()`).
    pub(super) fn towards_target(&self, dev: &virtio::Device<Bound>) -> Step {
        let sw = Stopwatch::start();
        let num_pages = dev.config_read_le32(CONFIG_NUM_PAGES);
        sw.stop(&self.perf, Counter::ConfigNs);
        let current = self.locked.lock().num_pages;
        let guest_pages = self.guest_pages(current) * u64::from(self.props.per_page);
        let target = Target::from_host(num_pages, self.props.per_page, guest_pages);
        if target.clamped && !self.clamp_reported.xchg(true, Relaxed) {
            dev_warn!(
                dev.as_ref(),
                "host asks for {} balloon pages, the guest has {}: limiting the balloon to {}\n",
                num_pages,
                guest_pages,
                target.pages
            );
        }
        target.step_from(current)
    }

    /// Writes the balloon size to `actual` (C's `update_balloon_size()`).
    pub(super) fn update_balloon_size(&self, dev: &virtio::Device<Bound>) {
        let actual = self.locked.lock().num_pages;
        let sw = Stopwatch::start();
        if let Err(e) = dev.config_write_le32(CONFIG_ACTUAL, actual) {
            dev_warn!(dev.as_ref(), "cannot write actual: {:?}\n", e);
        }
        sw.stop(&self.perf, Counter::ConfigNs);
    }

    /// One round of the size work (C's `update_balloon_size_func()`):
    /// move up to `depth` buffers towards the target; returns whether more
    /// remains.
    fn update_balloon_size_func(self: &Arc<Self>, dev: &virtio::Device<Bound>) -> bool {
        let step = self.towards_target(dev);
        let moved = match step {
            Step::Idle => return false,
            Step::Inflate(n) => self.fill_balloon(dev, n),
            Step::Deflate(n) => self.leak_balloon(dev, n),
        };
        self.perf.add(Counter::Rounds, 1);
        self.update_balloon_size(dev);
        moved < step.remaining()
    }

    /// Stops all asynchronous work (C's `virtballoon_quiesce()`).
    pub(super) fn quiesce(self: &Arc<Self>) {
        self.reporting.unregister();
        self.oom.unregister();
        self.shrinker.unregister();
        *self.stop_update.lock() = true;
        kext::workqueue::cancel_work_sync::<_, 0>(self);
        kext::workqueue::cancel_work_sync::<_, 1>(self);
        kext::workqueue::cancel_work_sync::<_, 2>(self);
    }

    /// The device goes away (C's `virtballoon_remove()`): stop the work,
    /// give every page back, telling the host, and report the empty balloon.
    pub(super) fn remove(self: &Arc<Self>, dev: &virtio::Device<Core<'_>>) {
        self.quiesce();
        self.remove_common(dev);
        self.wakeup.finish(dev);
    }

    /// C's `remove_common()` up to the reset, which the virtio abstraction
    /// does: deflate everything and return hinted pages.
    pub(super) fn remove_common(&self, dev: &virtio::Device<Bound>) {
        self.release_all(dev);
        if self.props.free_page_hint {
            self.return_free_pages_to_mm(usize::MAX);
        }
    }

    /// Deflates the whole balloon (C's `remove_common()` without the reset).
    pub(super) fn release_all(&self, dev: &virtio::Device<Bound>) {
        /// Give up after this many rounds without progress (10 s).
        const MAX_STALLS: u32 = 1000;
        let mut stalled = 0u32;
        loop {
            let left = self.locked.lock().num_pages;
            if left == 0 {
                break;
            }
            if self.leak_balloon(dev, left) > 0 {
                stalled = 0;
                continue;
            }
            // Every remaining page is isolated for migration right now:
            // wait for compaction to put it back.
            stalled += 1;
            if stalled == MAX_STALLS {
                dev_err!(
                    dev.as_ref(),
                    "{} balloon pages cannot be deflated; freeing them unannounced\n",
                    left
                );
                break;
            }
            kernel::time::delay::fsleep(kernel::time::Delta::from_millis(10));
        }
        self.update_balloon_size(dev);
    }
}

impl WorkItem<0> for Balloon {
    type Pointer = Arc<Balloon>;

    fn run(this: Arc<Balloon>) {
        this.wakeup.process(WakeupSignal::Adjust);
        let again = match this.binding.access() {
            Some(dev) => this.update_balloon_size_func(&dev),
            None => false,
        };
        if again && !*this.stop_update.lock() {
            let _ = workqueue::system_freezable().enqueue::<Arc<Balloon>, 0>(this);
        } else {
            this.wakeup.finish(this.binding.device());
        }
    }
}

impl WorkItem<1> for Balloon {
    type Pointer = Arc<Balloon>;

    fn run(this: Arc<Balloon>) {
        this.wakeup.process(WakeupSignal::Stats);
        if let Some(dev) = this.binding.access() {
            this.stats_handle_request(&dev);
        }
        this.wakeup.finish(this.binding.device());
    }
}

impl WorkItem<2> for Balloon {
    type Pointer = Arc<Balloon>;

    fn run(this: Arc<Balloon>) {
        if let Some(dev) = this.binding.access() {
            this.report_free_page_func(&dev);
        }
    }
}
