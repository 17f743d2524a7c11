// SPDX-License-Identifier: GPL-2.0

//! Deflating: giving pages back to the guest (C's `leak_balloon()`).

use super::{
    device::Balloon,
    vq, //
};
use crate::{
    logic::{
        pfn::{
            PfnBatch,
            PFNS_PER_BUFFER, //
        },
        target::batch_pages,
    },
    virtio,
};
use kernel::device::Bound;

impl Balloon {
    /// Deflates by up to one buffer of `num` balloon pages; returns how many
    /// balloon pages were given back. Allocates nothing unless a vanished
    /// queue took the PFN buffer.
    pub(super) fn leak_balloon(&self, dev: &virtio::Device<Bound>, num: u32) -> u32 {
        let per = self.props.per_page;
        let mut locked = self.locked.lock();
        // We can't release more pages than taken.
        let num = num.min(locked.num_pages);
        let want = batch_pages(num, per, PFNS_PER_BUFFER);
        let Some(mut buf) = Self::take_pfns(&mut locked) else {
            return 0;
        };

        let mut batch = PfnBatch::new(kernel::page::PAGE_SHIFT as u32, self.props.endian);
        for _ in 0..want {
            // The balloon holds `num_pages`, so it is not empty; `None`
            // means the rest is isolated for migration right now.
            let Some(page) = self.pages.dequeue() else {
                break;
            };
            // Every ballooned page was reachable when it was inflated.
            let _ = batch.push(&mut buf, page.pfn());
            locked.num_pages -= per;
            if let Err(err) = locked.leaking.push_within_capacity(page) {
                // Capacity is one batch, so this does not happen; free it
                // after telling the host all the same.
                drop(err);
            }
        }

        let done = batch.len() as u32;
        // The host must hear about the pages before the guest reuses them
        // (VIRTIO_BALLOON_F_MUST_TELL_HOST); C tells it in every case.
        if !batch.is_empty() {
            locked.pfns = self.tell_host(dev, vq::DEFLATE, buf, batch.bytes());
        } else {
            locked.pfns = Some(buf);
        }
        // Only now give the pages back to the page allocator.
        locked.leaking.clear();
        done
    }
}
