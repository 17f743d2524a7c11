// SPDX-License-Identifier: GPL-2.0

//! Virtqueue indexes of a balloon device, in the order of the virtio spec
//! (5.5.2) and of C's `enum virtio_balloon_vq`.

/// PFNs of pages taken from the guest.
pub(super) const INFLATE: usize = 0;
/// PFNs of pages given back to the guest.
pub(super) const DEFLATE: usize = 1;
/// Memory statistics (`VIRTIO_BALLOON_F_STATS_VQ`).
pub(super) const STATS: usize = 2;
/// Free page hints (`VIRTIO_BALLOON_F_FREE_PAGE_HINT`).
pub(super) const FREE_PAGE: usize = 3;
/// Free page reports (`VIRTIO_BALLOON_F_REPORTING`).
pub(super) const REPORTING: usize = 4;
