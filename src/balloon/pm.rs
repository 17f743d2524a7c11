// SPDX-License-Identifier: GPL-2.0

//! System sleep (C's `virtballoon_freeze()` / `virtballoon_restore()`).
//!
//! The PM core freezes the (freezable) workqueue before `freeze`. The
//! balloon is emptied, the device reset and its queues deleted; `restore`
//! sets the queues up again and the balloon follows the host's target anew.

use super::device::Balloon;
use crate::virtio;
use kernel::{
    device::Core,
    prelude::*,
    sync::Arc, //
};

impl Balloon {
    /// Empties the balloon and deletes the queues.
    pub(super) fn freeze(&self, dev: &virtio::Device<Core<'_>>) -> Result {
        self.remove_common(dev);
        dev.del_vqs();
        Ok(())
    }

    /// Recreates the queues and resumes following the target.
    pub(super) fn restore(self: &Arc<Self>, dev: &virtio::Device<Core<'_>>) -> Result {
        Self::init_vqs(dev, &self.props)?;
        if self.props.stats {
            self.stats_prime(dev)?;
        }
        dev.ready();
        self.ready(dev);
        self.update_balloon_size(dev);
        Ok(())
    }
}
