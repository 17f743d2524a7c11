// SPDX-License-Identifier: GPL-2.0

//! Inflating: taking pages from the guest (C's `fill_balloon()`).

use super::{
    device::Balloon,
    vq, //
};
use crate::{
    kext::{
        self,
        balloon::BalloonPage, //
    },
    logic::{
        pfn::{
            PfnBatch,
            PushError,
            PFNS_PER_BUFFER, //
        },
        target::{
            batch_pages,
            inflate_allowance,
            reserve_pages, //
        },
    },
    virtio,
};
use kernel::{
    device::Bound,
    prelude::*,
    sync::{
        atomic::Relaxed,
        Arc, //
    },
    time::{
        delay::fsleep,
        Delta, //
    },
};

/// How long to back off when no page can be allocated, as C does.
const OUT_OF_PUFF_BACKOFF_MS: i64 = 200;

impl Balloon {
    /// Guest pages the balloon may take now without cutting into the
    /// reserve the guest needs to keep running; logs when it starts and
    /// stops holding back.
    fn inflate_allowance(&self, dev: &virtio::Device<Bound>) -> usize {
        let ballooned = u64::from(self.locked.lock().num_pages / self.props.per_page.max(1));
        let guest_pages = if self.props.deflate_on_oom {
            kext::mm::totalram_pages()
        } else {
            kext::mm::totalram_pages() + ballooned
        };
        let shift = kernel::page::PAGE_SHIFT as u32;
        let reserve = reserve_pages(
            guest_pages,
            shift,
            crate::module_parameters::min_available_mib.value(),
        );
        let available = kext::mm::available_pages();
        let allowance = inflate_allowance(available, reserve);
        let holding = allowance == 0;
        if self.holding.xchg(holding, Relaxed) != holding {
            if holding {
                dev_warn!(
                    dev.as_ref(),
                    "holding the balloon at {} MiB: inflating further would leave the guest less \
                     than {} MiB available\n",
                    ballooned << shift >> 20,
                    reserve << shift >> 20
                );
            } else {
                dev_info!(dev.as_ref(), "inflating again\n");
            }
        }
        usize::try_from(allowance).unwrap_or(usize::MAX)
    }

    /// Inflates by up to one buffer of `num` balloon pages; returns how many
    /// balloon pages the host was told about.
    pub(super) fn fill_balloon(self: &Arc<Self>, dev: &virtio::Device<Bound>, num: u32) -> u32 {
        let per = self.props.per_page;
        let want = batch_pages(num, per, PFNS_PER_BUFFER);
        let want = want.min(self.inflate_allowance(dev));
        if want == 0 {
            // Holding at the reserve: check again a little later, as after
            // an allocation failure.
            fsleep(Delta::from_millis(OUT_OF_PUFF_BACKOFF_MS));
            return 0;
        }

        // Allocate without the balloon lock: reclaim may compact and
        // migrate balloon pages, which takes the lock.
        let mut filling = self.filling.lock();
        for _ in 0..want {
            match BalloonPage::alloc() {
                Some(page) => {
                    if filling.push_within_capacity(page).is_err() {
                        break;
                    }
                }
                None => {
                    let fails = self.out_of_puff.fetch_add(1, Relaxed) + 1;
                    if fails.is_power_of_two() {
                        dev_info!(
                            dev.as_ref(),
                            "Out of puff! Can't get {} pages ({} times)\n",
                            per,
                            fails
                        );
                    }
                    fsleep(Delta::from_millis(OUT_OF_PUFF_BACKOFF_MS));
                    break;
                }
            }
        }
        if !filling.is_empty() {
            self.out_of_puff.store(0, Relaxed);
        }

        let mut locked = self.locked.lock();
        let Some(mut buf) = Self::take_pfns(&mut locked) else {
            // Frees the pages.
            filling.clear();
            return 0;
        };
        let mut batch = PfnBatch::new(kernel::page::PAGE_SHIFT as u32, self.props.endian);
        for page in filling.drain_all() {
            match batch.push(&mut buf, page.pfn()) {
                Ok(()) => match self.pages.enqueue(self, page) {
                    Ok(()) => locked.num_pages += per,
                    // `pages` is our own field, so this does not happen;
                    // should it, the page is freed and not announced.
                    Err(_page) => batch.pop_page(),
                },
                Err(PushError::Unreachable) => {
                    dev_warn!(
                        dev.as_ref(),
                        "page frame {:#x} is beyond 32-bit balloon PFNs, not inflating it\n",
                        page.pfn()
                    );
                }
                // `want` never exceeds one buffer.
                Err(PushError::Full) => {}
            }
        }

        let done = batch.len() as u32;
        if !batch.is_empty() {
            locked.pfns = self.tell_host(dev, vq::INFLATE, buf, batch.bytes());
        } else {
            locked.pfns = Some(buf);
        }
        done
    }
}
