// SPDX-License-Identifier: GPL-2.0

//! Deflate on OOM (`VIRTIO_BALLOON_F_DEFLATE_ON_OOM`; C's
//! `virtio_balloon_oom_notify()`).
//!
//! With this feature the host lets the guest take memory back from the
//! balloon rather than kill a process: before the OOM killer runs, the
//! notifier deflates one batch. Ballooned pages then stay counted in
//! `MemTotal`, as used memory.

use super::device::Balloon;
use crate::kext::oom::OomHandler;

/// Balloon pages released per OOM notification (C's `VIRTIO_BALLOON_OOM_NR_PAGES`).
const OOM_NR_PAGES: u32 = 256;

impl OomHandler for Balloon {
    fn oom_free(&self) -> usize {
        let Some(dev) = self.binding.access() else {
            return 0;
        };
        let freed = self.leak_balloon(&dev, OOM_NR_PAGES);
        self.update_balloon_size(&dev);
        (freed / self.props.per_page.max(1)) as usize
    }
}
