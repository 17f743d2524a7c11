// SPDX-License-Identifier: GPL-2.0

//! What a driver asks of each virtqueue it creates ([`VqInfo`]), and the
//! one queue kind that is not a plain buffer queue: a balloon's free page
//! hint queue.

use super::{
    PageHint,
    Virtqueue, //
};
use crate::bindings;
use kernel::prelude::*;

/// What a queue carries.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(in crate::virtio) enum QueueKind {
    /// Buffers, owned or lent.
    Buffers,
    /// The free page hint queue of a balloon device: buffers and
    /// [`PageHint`]s.
    FreePageHints,
}

/// Description of one virtqueue for [`Device::find_vqs`](crate::virtio::Device::find_vqs).
#[derive(Clone, Copy)]
pub struct VqInfo {
    name: Option<&'static CStr>,
    callback: bool,
    kind: QueueKind,
}

impl VqInfo {
    /// A used queue with callbacks ([`Driver::vq_callback`](crate::virtio::Driver::vq_callback)
    /// and [`Virtqueue::wait_buf`] wake-ups).
    pub const fn new(name: &'static CStr) -> Self {
        Self {
            name: Some(name),
            callback: true,
            kind: QueueKind::Buffers,
        }
    }

    /// A used queue without callbacks (the driver polls it).
    pub const fn polled(name: &'static CStr) -> Self {
        Self {
            name: Some(name),
            callback: false,
            kind: QueueKind::Buffers,
        }
    }

    /// The free page hint queue of a balloon device (virtio spec 5.5.6.8),
    /// polled, which also takes [`PageHint`]s. Creating the queues fails
    /// with [`EINVAL`] unless the device is a balloon that negotiated
    /// `VIRTIO_BALLOON_F_FREE_PAGE_HINT` and this is its queue 3.
    pub const fn free_page_hints(name: &'static CStr) -> Self {
        Self {
            name: Some(name),
            callback: false,
            kind: QueueKind::FreePageHints,
        }
    }

    /// A queue slot the driver leaves unused (for example, feature not negotiated).
    pub const UNUSED: Self = Self {
        name: None,
        callback: false,
        kind: QueueKind::Buffers,
    };

    pub(in crate::virtio) fn name(&self) -> Option<&'static CStr> {
        self.name
    }

    pub(in crate::virtio) fn has_callback(&self) -> bool {
        self.callback
    }

    pub(in crate::virtio) fn kind(&self) -> QueueKind {
        self.kind
    }
}

/// Index of the free page hint queue of a balloon device (virtio spec 5.5.2).
const BALLOON_FREE_PAGE_VQ: usize = 3;

/// Whether queue `index` of a device of type `device_id` may be a free page
/// hint queue ([`VqInfo::free_page_hints`]): only the balloon's free page
/// queue, once `VIRTIO_BALLOON_F_FREE_PAGE_HINT` is negotiated
/// (`hinting`). A hint names memory without lending it, which only that
/// queue's device contract allows; anywhere else [`EINVAL`].
pub(in crate::virtio) fn check_free_page_hints(
    device_id: u32,
    hinting: bool,
    index: usize,
) -> Result {
    if device_id == bindings::VIRTIO_ID_BALLOON && hinting && index == BALLOON_FREE_PAGE_VQ {
        Ok(())
    } else {
        Err(EINVAL)
    }
}

#[kunit_tests(virtio_balloon_rs_virtqueue)]
mod tests {
    use super::*;
    use bindings::{
        VIRTIO_ID_BALLOON,
        VIRTIO_ID_NET, //
    };

    #[test]
    fn free_page_hints_only_on_a_hinting_balloons_free_page_queue() {
        assert_eq!(
            check_free_page_hints(VIRTIO_ID_BALLOON, true, BALLOON_FREE_PAGE_VQ),
            Ok(())
        );
        // Not negotiated, another queue, another device type: refused.
        assert_eq!(
            check_free_page_hints(VIRTIO_ID_BALLOON, false, BALLOON_FREE_PAGE_VQ),
            Err(EINVAL)
        );
        for index in [0, 1, 2, 4, 5] {
            assert_eq!(
                check_free_page_hints(VIRTIO_ID_BALLOON, true, index),
                Err(EINVAL)
            );
        }
        assert_eq!(
            check_free_page_hints(VIRTIO_ID_NET, true, BALLOON_FREE_PAGE_VQ),
            Err(EINVAL)
        );
    }
}
