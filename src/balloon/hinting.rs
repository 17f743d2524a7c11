// SPDX-License-Identifier: GPL-2.0

//! Free page hinting (`VIRTIO_BALLOON_F_FREE_PAGE_HINT`, virtio spec
//! 5.5.6.7; C's `report_free_page_func()` and its helpers).
//!
//! During live migration the host writes a new command id to
//! `free_page_hint_cmd_id`. The driver answers on the free page queue with
//! that id, then with as many free blocks of `MAX_PAGE_ORDER` pages as it
//! can allocate (the host skips them when copying memory), then with the
//! STOP id. The blocks stay allocated until the host says DONE, or until
//! memory reclaim asks for them back through the shrinker.

use super::{
    device::{
        Balloon,
        CONFIG_FREE_PAGE_HINT_CMD_ID, //
    },
    vq,
};
use crate::{
    bindings::uapi::{
        VIRTIO_BALLOON_CMD_ID_DONE,
        VIRTIO_BALLOON_CMD_ID_STOP, //
    },
    kext::{
        free_page_hint::{
            HintBlock,
            HintBuffer,
            HINT_BLOCK_PAGES, //
        },
        shrinker::ShrinkHandler,
    },
    virtio,
};
use kernel::{
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
    workqueue, //
};

/// Hinting state (C's `cmd_id_*`, `config_read_bitmap`, `free_page_list`).
#[pin_data]
pub(crate) struct HintState {
    /// The host wrote a new command id that has not been read yet.
    config_read_pending: Atomic<bool>,
    /// The last command id read from the host.
    cmd_id_received: Atomic<u32>,
    /// The command id of the hinting round in progress.
    cmd_id_active: Atomic<u32>,
    /// Blocks the host has seen, kept until DONE or reclaimed.
    #[pin]
    free_blocks: Mutex<KVVec<HintBlock>>,
    /// `free_blocks.len()`, readable without the lock.
    num_free_blocks: Atomic<usize>,
}

impl HintState {
    pub(super) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            config_read_pending: Atomic::new(false),
            cmd_id_received: Atomic::new(VIRTIO_BALLOON_CMD_ID_STOP),
            cmd_id_active: Atomic::new(VIRTIO_BALLOON_CMD_ID_STOP),
            free_blocks <- new_mutex!(KVVec::new()),
            num_free_blocks: Atomic::new(0),
        })
    }
}

impl Balloon {
    /// Queues the hinting work after a configuration change
    /// (C's `virtio_balloon_queue_free_page_work()`).
    pub(super) fn queue_free_page_work(self: &Arc<Self>) {
        if !self.props.free_page_hint {
            return;
        }
        // No need to queue the work if a read was already pending.
        if self.hint.config_read_pending.xchg(true, Relaxed) {
            return;
        }
        let _ = workqueue::system_freezable().enqueue::<Arc<Balloon>, 2>(self.clone());
    }

    /// The latest command id from the host (C's `virtio_balloon_cmd_id_received()`).
    fn cmd_id_received(&self, dev: &virtio::Device<Bound>) -> u32 {
        if self.hint.config_read_pending.xchg(false, Relaxed) {
            let id = dev.config_read_le32(CONFIG_FREE_PAGE_HINT_CMD_ID);
            self.hint.cmd_id_received.store(id, Relaxed);
        }
        self.hint.cmd_id_received.load(Relaxed)
    }

    /// The hinting work (C's `report_free_page_func()`).
    pub(super) fn report_free_page_func(&self, dev: &virtio::Device<Bound>) {
        let id = self.cmd_id_received(dev);
        if id == VIRTIO_BALLOON_CMD_ID_DONE {
            // The host is done: give every block back.
            self.drain_used(dev);
            self.return_free_pages_to_mm(usize::MAX);
        } else if id != VIRTIO_BALLOON_CMD_ID_STOP && id != self.hint.cmd_id_active.load(Relaxed) {
            self.report_free_page(dev);
        }
    }

    /// One hinting round (C's `virtio_balloon_report_free_page()`).
    fn report_free_page(&self, dev: &virtio::Device<Bound>) {
        // Start by sending the received command id.
        let id = self.cmd_id_received(dev);
        self.hint.cmd_id_active.store(id, Relaxed);
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

    /// Takes back what the host has used: blocks go to the free list,
    /// command ids are dropped.
    fn drain_used(&self, dev: &virtio::Device<Bound>) {
        let Ok(q) = dev.vq::<HintBuffer>(vq::FREE_PAGE) else {
            return;
        };
        while let Some((buf, _)) = q.get_buf() {
            if let HintBuffer::Block(block) = buf {
                let mut blocks = self.hint.free_blocks.lock();
                // Without room to keep it, the block simply goes back now.
                if blocks.push(block, GFP_KERNEL | __GFP_NOWARN).is_ok() {
                    self.hint.num_free_blocks.store(blocks.len(), Relaxed);
                }
            }
        }
    }

    /// Queues a command id (C's `send_cmd_id_start()` / `send_cmd_id_stop()`).
    fn send_cmd_id(&self, dev: &virtio::Device<Bound>, id: u32) -> Result {
        self.drain_used(dev);
        let q = dev.vq::<HintBuffer>(vq::FREE_PAGE)?;
        let cmd = KBox::new(self.props.endian.u32(id), GFP_KERNEL)?;
        q.add_outbuf(HintBuffer::CmdId(cmd), size_of::<u32>())?;
        q.kick();
        Ok(())
    }

    /// Hints free blocks until none is left or the host moves on
    /// (C's `send_free_pages()` and `get_free_page_and_send()`).
    fn send_free_pages(&self, dev: &virtio::Device<Bound>) -> Result {
        loop {
            // A STOP or a new command id from the host ends this round.
            if self.hint.cmd_id_active.load(Relaxed) != self.cmd_id_received(dev) {
                return Ok(());
            }
            self.drain_used(dev);
            // No block left: every free page that could be hinted was.
            let Some(block) = HintBlock::alloc() else {
                return Ok(());
            };
            let q = dev.vq::<HintBuffer>(vq::FREE_PAGE)?;
            // One entry is always kept for the command id.
            if q.num_free() > 1 {
                q.add_inbuf(
                    HintBuffer::Block(block),
                    HINT_BLOCK_PAGES << kernel::page::PAGE_SHIFT,
                )?;
                q.kick();
            }
        }
    }

    /// Frees up to `blocks` hinted blocks (C's `return_free_pages_to_mm()`);
    /// returns how many. With `try_only`, gives up if the list is busy.
    fn free_hinted_blocks(&self, blocks: usize, try_only: bool) -> usize {
        let mut list = if try_only {
            match self.hint.free_blocks.try_lock() {
                Some(list) => list,
                None => return 0,
            }
        } else {
            self.hint.free_blocks.lock()
        };
        let n = blocks.min(list.len());
        for _ in 0..n {
            drop(list.pop());
        }
        self.hint.num_free_blocks.store(list.len(), Relaxed);
        n
    }

    /// Gives up to `blocks` hinted blocks back to the page allocator.
    pub(super) fn return_free_pages_to_mm(&self, blocks: usize) -> usize {
        self.free_hinted_blocks(blocks, false)
    }
}

impl ShrinkHandler for Balloon {
    fn count(&self) -> usize {
        self.hint.num_free_blocks.load(Relaxed) * HINT_BLOCK_PAGES
    }

    fn scan(&self, nr_to_scan: usize) -> usize {
        // The hinting work may be allocating (and so reclaiming) with the
        // list locked: do not wait for it.
        let blocks = nr_to_scan.div_ceil(HINT_BLOCK_PAGES);
        self.free_hinted_blocks(blocks, true) * HINT_BLOCK_PAGES
    }
}
