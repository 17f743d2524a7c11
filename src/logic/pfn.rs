// SPDX-License-Identifier: GPL-2.0

//! Balloon page frame numbers.
//!
//! The balloon device counts in 4 KiB "balloon pages" whatever the guest's
//! page size (virtio spec 5.5.6: `VIRTIO_BALLOON_PFN_SHIFT`), and PFNs on the
//! inflate and deflate queues are 32-bit. A guest page of `1 << page_shift`
//! bytes is reported as `pages_per_page(page_shift)` consecutive balloon
//! PFNs.

/// Shift from a balloon PFN to a guest physical address (4 KiB pages).
pub const BALLOON_PFN_SHIFT: u32 = 12;

/// PFNs per inflate/deflate buffer: the C driver's
/// `VIRTIO_BALLOON_ARRAY_PFNS_MAX`.
pub const PFNS_PER_BUFFER: usize = 256;

/// Bytes of one PFN on the queues (`__virtio32`).
pub const PFN_BYTES: usize = 4;

/// Number of balloon pages in one guest page of `1 << page_shift` bytes.
///
/// Guest pages smaller than balloon pages do not exist on any architecture
/// Linux supports; `page_shift` below 12 is treated as 12.
pub const fn pages_per_page(page_shift: u32) -> u32 {
    if page_shift <= BALLOON_PFN_SHIFT {
        1
    } else {
        1 << (page_shift - BALLOON_PFN_SHIFT)
    }
}

/// Bytes the host gives back whole (log2): 2 MiB, a transparent or hugetlb
/// huge page of a host with 4 KiB pages (x86-64, and arm64 as most clouds
/// run it). An assumption about the host, as C's order 5 with 64 KiB
/// pages is: on a host with 16 or 64 KiB pages a 2 MiB range is part of a
/// 32 or 512 MiB huge page, and discarding it splits or cannot free that.
pub const HOST_HUGE_SHIFT: u32 = 21;

/// Bytes of one free page hint (log2): 4 MiB, C's hint block with 4 KiB
/// pages (`MAX_PAGE_ORDER`, 10, on x86-64).
pub const HINT_BLOCK_SHIFT: u32 = 22;

/// The order of a block of `1 << bytes_shift` bytes made of guest pages of
/// `1 << page_shift` bytes, at most `max_order` (the page allocator's
/// largest, `MAX_PAGE_ORDER`).
pub const fn order_for(bytes_shift: u32, page_shift: u32, max_order: u32) -> u32 {
    let order = bytes_shift.saturating_sub(page_shift);
    if order > max_order {
        max_order
    } else {
        order
    }
}

/// The order of guest-page blocks that make up [`HOST_HUGE_SHIFT`] bytes:
/// 9 with 4 KiB pages, 7 with 16 KiB, 5 with 64 KiB.
///
/// The balloon's whole-block inflate order and its free page reporting
/// order: the page allocator's own default for reporting, `pageblock_order`,
/// is 2 MiB only with 4 KiB pages (32 MiB with 16 KiB, 512 MiB with 64 KiB,
/// where a guest's free memory rarely holds whole blocks of it, so the
/// host would get nothing back).
pub const fn host_huge_order(page_shift: u32, max_order: u32) -> u32 {
    order_for(HOST_HUGE_SHIFT, page_shift, max_order)
}

/// The order of a free page hint block, [`HINT_BLOCK_SHIFT`] bytes: 10 with
/// 4 KiB pages (C's where `MAX_PAGE_ORDER` is 10), 8 with 16 KiB, 6 with
/// 64 KiB. C hints blocks of `MAX_PAGE_ORDER`, which is 32 MiB with 16 KiB
/// pages and 512 MiB with 64 KiB (by default): a guest's free memory
/// seldom holds such blocks, and migration then copies the free memory it
/// should have skipped. The price of smaller blocks: more allocations,
/// buffers and notifications per hinted GiB than C with those page sizes
/// (as many as with 4 KiB pages), and blocks below `pageblock_order`.
pub const fn hint_block_order(page_shift: u32, max_order: u32) -> u32 {
    order_for(HINT_BLOCK_SHIFT, page_shift, max_order)
}

/// Byte order of 32-bit values on the virtqueues (`__virtio32`): little
/// endian for a VIRTIO 1.0 device, guest-native for a legacy one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endian {
    /// Little endian (`VIRTIO_F_VERSION_1`, or a little-endian guest).
    Little,
    /// Guest byte order (legacy device on a big-endian guest).
    Native,
}

impl Endian {
    /// Encodes `v` for the device.
    pub const fn u16(self, v: u16) -> u16 {
        match self {
            Endian::Little => v.to_le(),
            Endian::Native => v,
        }
    }

    /// Encodes `v` for the device.
    pub const fn u32(self, v: u32) -> u32 {
        match self {
            Endian::Little => v.to_le(),
            Endian::Native => v,
        }
    }

    /// Encodes `v` for the device.
    pub const fn u64(self, v: u64) -> u64 {
        match self {
            Endian::Little => v.to_le(),
            Endian::Native => v,
        }
    }
}

/// A buffer of PFNs for the inflate or deflate queue, as the device reads it.
pub type PfnArray = [u32; PFNS_PER_BUFFER];

/// Fills a [`PfnArray`] with the balloon PFNs of guest pages.
#[derive(Debug)]
pub struct PfnBatch {
    page_shift: u32,
    endian: Endian,
    len: usize,
}

/// Why a guest page could not be added to a [`PfnBatch`].
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The buffer has no room for another guest page.
    Full,
    /// The page lies above what a 32-bit balloon PFN can express (guests
    /// with more than 16 TiB of memory): the host cannot be told about it.
    /// The C driver truncates such PFNs silently and inflates the wrong page.
    Unreachable,
}

impl PfnBatch {
    /// Starts an empty batch.
    pub const fn new(page_shift: u32, endian: Endian) -> Self {
        Self {
            page_shift,
            endian,
            len: 0,
        }
    }

    /// Balloon pages per guest page.
    pub const fn pages_per_page(&self) -> u32 {
        pages_per_page(self.page_shift)
    }

    /// Number of PFNs in the batch.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch holds no PFN.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Size in bytes of the PFNs in the batch, for the virtqueue.
    pub const fn bytes(&self) -> usize {
        self.len * PFN_BYTES
    }

    /// Whether another guest page fits.
    pub const fn is_full(&self) -> bool {
        self.len + self.pages_per_page() as usize > PFNS_PER_BUFFER
    }

    /// Appends the balloon PFNs of the guest page with frame number `pfn`
    /// (in guest page units) to `buf`.
    pub fn push(&mut self, buf: &mut PfnArray, pfn: u64) -> Result<(), PushError> {
        let per = self.pages_per_page();
        if self.is_full() {
            return Err(PushError::Full);
        }
        let first = pfn
            .checked_mul(u64::from(per))
            .ok_or(PushError::Unreachable)?;
        let last = first + u64::from(per) - 1;
        if last > u64::from(u32::MAX) {
            return Err(PushError::Unreachable);
        }
        for i in 0..per {
            buf[self.len] = self.endian.u32(first as u32 + i);
            self.len += 1;
        }
        Ok(())
    }

    /// Removes the last guest page pushed, if any.
    pub fn pop_page(&mut self) {
        self.len = self.len.saturating_sub(self.pages_per_page() as usize);
    }

    /// Empties the batch for reuse.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_huge_order_is_2_mib_for_every_page_size() {
        // (page shift, MAX_PAGE_ORDER of arm64 with that page size)
        assert_eq!(host_huge_order(12, 10), 9);
        assert_eq!(host_huge_order(14, 11), 7);
        assert_eq!(host_huge_order(16, 13), 5);
        for shift in [12, 14, 16] {
            assert_eq!(1u64 << (host_huge_order(shift, 13) + shift), 2 << 20);
        }
        // Never above the allocator's largest order.
        assert_eq!(host_huge_order(12, 8), 8);
        assert_eq!(host_huge_order(22, 10), 0);
    }

    #[test]
    fn hint_block_order_is_4_mib_for_every_page_size() {
        // C's 4 MiB on x86-64, the same bytes on arm64.
        assert_eq!(hint_block_order(12, 10), 10);
        assert_eq!(hint_block_order(14, 11), 8);
        assert_eq!(hint_block_order(16, 13), 6);
        // Never above the allocator's largest order.
        assert_eq!(hint_block_order(12, 8), 8);
    }

    #[test]
    fn four_k_pages_map_one_to_one() {
        assert_eq!(pages_per_page(12), 1);
        let mut buf = [0; PFNS_PER_BUFFER];
        let mut b = PfnBatch::new(12, Endian::Little);
        b.push(&mut buf, 0x1234).unwrap();
        b.push(&mut buf, 7).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b.bytes(), 8);
        assert_eq!(u32::from_le(buf[0]), 0x1234);
        assert_eq!(u32::from_le(buf[1]), 7);
    }

    #[test]
    fn large_pages_expand_to_consecutive_balloon_pfns() {
        // 64 KiB pages: 16 balloon pages each, first one at the page start.
        let mut buf = [0; PFNS_PER_BUFFER];
        let mut b = PfnBatch::new(16, Endian::Little);
        assert_eq!(b.pages_per_page(), 16);
        b.push(&mut buf, 3).unwrap();
        assert_eq!(b.len(), 16);
        for (i, pfn) in buf.iter().take(16).enumerate() {
            assert_eq!(u32::from_le(*pfn), 48 + i as u32);
        }
    }

    #[test]
    fn batch_holds_exactly_one_buffer() {
        let mut buf = [0; PFNS_PER_BUFFER];
        let mut b = PfnBatch::new(12, Endian::Little);
        for pfn in 0..PFNS_PER_BUFFER as u64 {
            b.push(&mut buf, pfn).unwrap();
        }
        assert!(b.is_full());
        assert_eq!(b.push(&mut buf, 999), Err(PushError::Full));
        assert_eq!(b.bytes(), 1024);
        b.clear();
        assert!(b.is_empty());
    }

    #[test]
    fn pop_page_forgets_the_last_guest_page() {
        let mut buf = [0; PFNS_PER_BUFFER];
        let mut b = PfnBatch::new(16, Endian::Little);
        b.push(&mut buf, 1).unwrap();
        b.push(&mut buf, 2).unwrap();
        b.pop_page();
        assert_eq!(b.len(), 16);
        b.pop_page();
        b.pop_page();
        assert!(b.is_empty());
    }

    #[test]
    fn large_page_batch_is_full_when_next_page_does_not_fit() {
        let mut buf = [0; PFNS_PER_BUFFER];
        let mut b = PfnBatch::new(16, Endian::Little);
        for pfn in 0..16 {
            b.push(&mut buf, pfn).unwrap();
        }
        assert_eq!(b.len(), 256);
        assert_eq!(b.push(&mut buf, 16), Err(PushError::Full));
    }

    #[test]
    fn pfns_beyond_32_bits_are_refused_not_truncated() {
        let mut buf = [0; PFNS_PER_BUFFER];
        let mut b = PfnBatch::new(12, Endian::Little);
        assert_eq!(b.push(&mut buf, 1 << 32), Err(PushError::Unreachable));
        assert_eq!(b.push(&mut buf, u64::from(u32::MAX)), Ok(()));
        let mut b = PfnBatch::new(16, Endian::Little);
        assert_eq!(b.push(&mut buf, 1 << 28), Err(PushError::Unreachable));
        assert_eq!(b.push(&mut buf, u64::MAX), Err(PushError::Unreachable));
        assert!(b.is_empty());
    }

    #[test]
    fn native_endian_leaves_values_alone() {
        let mut buf = [0; PFNS_PER_BUFFER];
        let mut b = PfnBatch::new(12, Endian::Native);
        b.push(&mut buf, 0x01020304).unwrap();
        assert_eq!(buf[0], 0x01020304);
    }
}
