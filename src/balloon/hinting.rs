// SPDX-License-Identifier: GPL-2.0

//! Free page hinting (`VIRTIO_BALLOON_F_FREE_PAGE_HINT`, virtio spec
//! 5.5.6.8; C's `report_free_page_func()` and its helpers).
//!
//! During live migration the host writes a new command id to
//! `free_page_hint_cmd_id`. The driver answers on the free page queue with
//! that id, then with hints of as many free blocks of `MAX_PAGE_ORDER`
//! pages as it can allocate (the host skips them when copying memory), then
//! with the STOP id. As in C, the blocks belong to the driver's list, not
//! to the queue (the spec lets the driver reuse hinted pages at any time):
//! memory reclaim takes them back through the shrinker whether or not the
//! host has used their hints, and DONE frees them all. The work runs on a
//! freezable, CPU-intensive workqueue of its own, as in C.

use super::vq;
use crate::{
    bindings::uapi::{
        virtio_balloon_config,
        VIRTIO_BALLOON_CMD_ID_DONE,
        VIRTIO_BALLOON_CMD_ID_STOP, //
    },
    logic::pfn::Endian,
    mm::{
        shrinker::Shrink,
        PageBlock, //
    },
    virtio::{
        self,
        ConfigField,
        PageHint, //
    },
    virtio_config_field,
    workqueue::OwnedQueue,
};
use kernel::{
    bindings as kb,
    device::Bound,
    new_mutex,
    prelude::*,
    sync::{
        atomic::{
            Atomic,
            Relaxed, //
        },
        Arc,
        Mutex, //
    },
    time::{
        delay::fsleep,
        Delta,
        Instant,
        Monotonic, //
    },
    workqueue::{
        impl_has_work,
        new_work,
        Work,
        WorkItem, //
    },
};

/// The host's command id (present with `VIRTIO_BALLOON_F_FREE_PAGE_HINT`,
/// which the layout says).
pub(super) const CMD_ID: ConfigField<virtio_balloon_config, u32> = virtio_config_field!(
    virtio_balloon_config,
    __bindgen_anon_1.free_page_hint_cmd_id as u32
);

/// Order of a hinted block: 4 MiB, C's `VIRTIO_BALLOON_HINT_BLOCK_ORDER`
/// (`MAX_PAGE_ORDER`) with 4 KiB pages, the same bytes with larger pages,
/// where C's would be 32 or 512 MiB ([`crate::logic::pfn::hint_block_order`]).
const HINT_BLOCK_ORDER: u32 = crate::logic::pfn::hint_block_order(
    kernel::page::PAGE_SHIFT as u32,
    crate::bindings::VB_MAX_PAGE_ORDER,
);

/// A command id buffer (`__virtio32`), device-readable.
type CmdIdBuffer = KBox<u32>;

/// Free page hinting of one device (C's `cmd_id_*`, `config_read_bitmap`,
/// `free_page_list` and `balloon_wq`).
#[pin_data]
pub(crate) struct FreePageHints {
    binding: virtio::Binding,
    endian: Endian,
    /// How long the host may take to take hints.
    timeout: Delta,
    /// The host wrote a new command id that has not been read yet.
    config_read_pending: Atomic<bool>,
    /// The last command id read from the host.
    cmd_id_received: Atomic<u32>,
    /// The command id of the hinting round in progress.
    cmd_id_active: Atomic<u32>,
    /// Blocks hinted to the host, kept until DONE or reclaimed.
    #[pin]
    blocks: Mutex<KVVec<PageBlock>>,
    /// `blocks.len()`, readable without the lock.
    num_blocks: Atomic<usize>,
    #[pin]
    work: Work<FreePageHints>,
    /// C's `balloon_wq`. Dropped last: the work is cancelled before.
    queue: OwnedQueue,
}

impl_has_work! {
    impl HasWork<FreePageHints> for FreePageHints { self.work }
}

impl FreePageHints {
    /// Hinting for the device behind `binding`.
    pub(super) fn new(
        binding: virtio::Binding,
        endian: Endian,
        timeout: Delta,
    ) -> Result<Arc<Self>> {
        let queue = OwnedQueue::new(
            c"balloon-wq",
            kb::wq_flags_WQ_FREEZABLE | kb::wq_flags_WQ_CPU_INTENSIVE | kb::wq_flags_WQ_PERCPU,
        )?;
        Arc::pin_init(
            pin_init!(Self {
                binding,
                endian,
                timeout,
                config_read_pending: Atomic::new(false),
                cmd_id_received: Atomic::new(VIRTIO_BALLOON_CMD_ID_STOP),
                cmd_id_active: Atomic::new(VIRTIO_BALLOON_CMD_ID_STOP),
                blocks <- new_mutex!(KVVec::new()),
                num_blocks: Atomic::new(0),
                work <- new_work!("virtio_balloon_rs::FreePageHints::work"),
                queue,
            }),
            GFP_KERNEL,
        )
    }

    /// The host changed the configuration: queue the hinting work if a new
    /// command id may be there (C's `virtio_balloon_queue_free_page_work()`).
    /// Interrupt context.
    pub(super) fn config_changed(self: &Arc<Self>) {
        // No need to queue the work if a read was already pending.
        if self.config_read_pending.xchg(true, Relaxed) {
            return;
        }
        // An `Err` means the work is already queued, which is what we want.
        let _ = self.queue.queue().enqueue(self.clone());
    }

    /// Stops the work (from `quiesce`).
    pub(super) fn cancel(self: &Arc<Self>) {
        crate::workqueue::cancel_work_sync::<_, 0>(self);
    }

    /// The latest command id from the host (C's `virtio_balloon_cmd_id_received()`).
    fn cmd_id_received(&self, dev: &virtio::Device<Bound>) -> u32 {
        if self.config_read_pending.xchg(false, Relaxed) {
            match dev.config_read(CMD_ID) {
                Ok(id) => self.cmd_id_received.store(id, Relaxed),
                Err(e) => dev_warn!(dev.as_ref(), "cannot read the hint command id: {:?}\n", e),
            }
        }
        self.cmd_id_received.load(Relaxed)
    }

    /// The hinting work (C's `report_free_page_func()`).
    fn report_free_page_func(&self, dev: &virtio::Device<Bound>) {
        let id = self.cmd_id_received(dev);
        if id == VIRTIO_BALLOON_CMD_ID_DONE {
            // The host is done: give every block back.
            self.return_free_pages_to_mm(usize::MAX);
        } else if id != VIRTIO_BALLOON_CMD_ID_STOP && id != self.cmd_id_active.load(Relaxed) {
            self.report_free_page(dev);
        }
    }

    /// One hinting round (C's `virtio_balloon_report_free_page()`).
    fn report_free_page(&self, dev: &virtio::Device<Bound>) {
        // Start by sending the received command id.
        let id = self.cmd_id_received(dev);
        self.cmd_id_active.store(id, Relaxed);
        if let Err(e) = self.send_cmd_id(dev, id) {
            dev_err!(dev.as_ref(), "Failed to send a start id, err = {:?}\n", e);
        }
        if let Err(e) = self.send_free_pages(dev) {
            dev_err!(dev.as_ref(), "Failed to send a free page, err = {:?}\n", e);
        }
        // End by sending the STOP id.
        if let Err(e) = self.send_cmd_id(dev, VIRTIO_BALLOON_CMD_ID_STOP) {
            dev_err!(dev.as_ref(), "Failed to send a stop id, err = {:?}\n", e);
        }
    }

    /// Takes back what the host used: command id buffers (dropped here;
    /// hints carry nothing to give back).
    fn detach_used(&self, dev: &virtio::Device<Bound>) -> Result {
        let q = dev.vq::<CmdIdBuffer>(vq::FREE_PAGE)?;
        while q.get_buf().is_some() {}
        Ok(())
    }

    /// Queues a command id (C's `send_cmd_id_start()` / `send_cmd_id_stop()`).
    fn send_cmd_id(&self, dev: &virtio::Device<Bound>, id: u32) -> Result {
        self.detach_used(dev)?;
        let q = dev.vq::<CmdIdBuffer>(vq::FREE_PAGE)?;
        let cmd = KBox::new(self.endian.u32(id), GFP_KERNEL)?;
        q.add_outbuf(cmd, size_of::<u32>())?;
        q.kick();
        Ok(())
    }

    /// Hints free blocks until none is left or the host moves on
    /// (C's `send_free_pages()` and `get_free_page_and_send()`).
    ///
    /// Unlike C, a full queue is not a reason to allocate and free blocks
    /// in a loop: the round waits for the host to take hints, and ends if
    /// it takes none for the host timeout, or if the device is going away.
    /// (C loops until the host writes a new command id; once `remove` has
    /// started the driver no longer sees configuration changes, so a host
    /// that stopped taking hints keeps C's `remove` waiting forever.)
    fn send_free_pages(&self, dev: &virtio::Device<Bound>) -> Result {
        let mut full_since: Option<Instant<Monotonic>> = None;
        loop {
            // A STOP or a new command id from the host ends this round, and
            // so does unbinding, which waits for this work.
            if self.binding.is_revoked()
                || self.cmd_id_active.load(Relaxed) != self.cmd_id_received(dev)
            {
                return Ok(());
            }
            self.detach_used(dev)?;
            let q = dev.vq::<CmdIdBuffer>(vq::FREE_PAGE)?;
            // One entry is always kept for the command id.
            if q.num_free() <= 1 {
                let since = *full_since.get_or_insert_with(Instant::now);
                if since.elapsed() > self.timeout {
                    dev_warn!(
                        dev.as_ref(),
                        "the host took no free page hint for {} ms: ending the round\n",
                        self.timeout.as_millis()
                    );
                    return Ok(());
                }
                fsleep(Delta::from_millis(1));
                continue;
            }
            full_since = None;
            // No block left: every free page that could be hinted was.
            let Some(block) = PageBlock::alloc_free(HINT_BLOCK_ORDER) else {
                return Ok(());
            };
            q.add_hint(PageHint::of(&block))?;
            q.kick();
            let mut blocks = self.blocks.lock();
            // Without room to keep it, the block goes back at once (the spec
            // allows reusing a hinted block).
            if blocks.push(block, GFP_KERNEL | __GFP_NOWARN).is_ok() {
                self.num_blocks.store(blocks.len(), Relaxed);
            }
        }
    }

    /// Frees up to `blocks` hinted blocks (C's `return_free_pages_to_mm()`);
    /// returns how many. With `try_only`, gives up if the list is busy.
    fn free_hinted_blocks(&self, blocks: usize, try_only: bool) -> usize {
        let mut list = if try_only {
            match self.blocks.try_lock() {
                Some(list) => list,
                None => return 0,
            }
        } else {
            self.blocks.lock()
        };
        let n = blocks.min(list.len());
        for _ in 0..n {
            drop(list.pop());
        }
        self.num_blocks.store(list.len(), Relaxed);
        n
    }

    /// Gives up to `blocks` hinted blocks back to the page allocator.
    pub(super) fn return_free_pages_to_mm(&self, blocks: usize) -> usize {
        self.free_hinted_blocks(blocks, false)
    }
}

impl WorkItem for FreePageHints {
    type Pointer = Arc<FreePageHints>;

    fn run(this: Arc<FreePageHints>) {
        if let Some(dev) = this.binding.try_access() {
            this.report_free_page_func(&dev);
        }
    }
}

/// Pages in a hinted block.
fn block_pages() -> usize {
    1 << HINT_BLOCK_ORDER
}

impl Shrink for FreePageHints {
    fn count(&self) -> usize {
        self.num_blocks.load(Relaxed) * block_pages()
    }

    fn scan(&self, nr_to_scan: usize) -> usize {
        // The hinting work may be allocating (and so reclaiming) with the
        // list locked: do not wait for it.
        let blocks = nr_to_scan.div_ceil(block_pages());
        self.free_hinted_blocks(blocks, true) * block_pages()
    }
}
