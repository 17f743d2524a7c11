// SPDX-License-Identifier: GPL-2.0

//! KUnit cases of the owned-buffer queue, on a ring the virtio core creates
//! for a device that is never there ([`FakeQueue`]): what the queue does
//! with the buffers it is given, refuses and still holds when it goes away.

use kernel::prelude::kunit_tests;

#[kunit_tests(virtio_balloon_rs_virtqueue_buffers)]
mod tests {
    use super::super::{
        QueueKind,
        Tagged,
        Virtqueue,
        VqSlot, //
    };
    use crate::bindings;
    use core::pin::Pin;
    use kernel::{
        bindings as kb,
        prelude::*,
        static_lock_class,
        sync::{
            atomic::{
                Atomic,
                Relaxed, //
            },
            Arc,
        },
        types::Opaque,
    };

    /// A ring of `vring_create_virtqueue()` for a bare `struct
    /// virtio_device` (no transport, no features): notifications go
    /// nowhere and no buffer is ever used, as with a device that never
    /// answers.
    ///
    /// # Invariants
    ///
    /// `vq` is a live virtqueue of `_vdev`, attached to `slot` until
    /// dropped; `_vdev` is initialized as far as the ring uses it (its
    /// queue list and that list's lock).
    struct FakeQueue {
        /// Dropped after the ring (fields drop after [`Drop::drop`]).
        _vdev: KBox<Opaque<bindings::virtio_device>>,
        vq: *mut bindings::virtqueue,
        slot: Pin<KBox<VqSlot>>,
    }

    /// Notifications go nowhere; the ring counts them as sent.
    extern "C" fn notify(_vq: *mut bindings::virtqueue) -> bool {
        true
    }

    impl FakeQueue {
        /// A ring of `num` entries.
        fn new(num: u32) -> Result<Self> {
            let vdev = KBox::new(Opaque::<bindings::virtio_device>::zeroed(), GFP_KERNEL)?;
            let d = vdev.get();
            // SAFETY: `d` points to a zeroed `struct virtio_device` we own, on the heap, which
            // outlives the ring (dropped after it): its queue list and lock are set up as
            // `register_virtio_device()` does, for `vring_create_virtqueue()`.
            unsafe {
                bindings::INIT_LIST_HEAD(&raw mut (*d).vqs);
                kb::__spin_lock_init(
                    (&raw mut (*d).vqs_list_lock).cast(),
                    c"kunit_vqs_list_lock".as_char_ptr(),
                    static_lock_class!().as_ptr(),
                );
            }
            // SAFETY: `d` is set up above. No features: a split ring in memory from the page
            // allocator (no DMA API), no indirect descriptors; `notify` is callable from any
            // context; the name is static.
            let vq = unsafe {
                bindings::vring_create_virtqueue(
                    0,
                    num,
                    64,
                    d,
                    true,
                    false,
                    false,
                    Some(notify),
                    None,
                    c"kunit".as_char_ptr(),
                )
            };
            if vq.is_null() {
                return Err(ENOMEM);
            }
            let slot = match KBox::pin_init(VqSlot::new(), GFP_KERNEL) {
                Ok(slot) => slot,
                Err(e) => {
                    // SAFETY: Created above, used by nothing else.
                    unsafe { bindings::vring_del_virtqueue(vq) };
                    return Err(e);
                }
            };
            // SAFETY: `vq` is live and holds no tokens yet.
            unsafe { slot.attach(vq, QueueKind::Buffers) };
            // INVARIANT: `vq` of `vdev` is live and attached to `slot`; `vdev` moves into the
            // struct, its heap allocation does not.
            Ok(Self {
                _vdev: vdev,
                vq,
                slot,
            })
        }

        /// A handle of the queue for buffers of type `B`.
        fn queue<B: super::super::Buffer>(&self) -> Result<Virtqueue<'_, B>> {
            Virtqueue::new(&self.slot)
        }

        /// The device goes away: the queue leaves the slot and drops what
        /// it still holds (the device never used anything, as good as
        /// reset).
        fn detach(&self) {
            self.slot.detach();
        }
    }

    impl Drop for FakeQueue {
        fn drop(&mut self) {
            self.slot.detach();
            // SAFETY: `vq` is live (type invariant) and no longer in the slot, so nothing uses it;
            // its device is still there.
            unsafe { bindings::vring_del_virtqueue(self.vq) };
        }
    }

    /// A buffer context that counts how often it is dropped.
    struct Counted(Arc<Atomic<u32>>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.add(1, Relaxed);
        }
    }

    type Words = KBox<[u32; 4]>;

    fn words(tag: u32) -> Result<Words> {
        Ok(KBox::new([tag, tag + 1, tag + 2, tag + 3], GFP_KERNEL)?)
    }

    #[test]
    fn a_refused_buffer_comes_back_whole() -> Result {
        let fake = FakeQueue::new(4)?;
        let q = fake.queue::<Words>()?;
        for tag in 0..4 {
            assert!(q.add_outbuf(words(tag * 10)?, 16).is_ok());
        }
        assert_eq!(q.in_flight(), 4);
        // The ring is full.
        let buf = words(100)?;
        let addr = &raw const *buf;
        let rejected = q.add_outbuf(buf, 16).err().ok_or(EINVAL)?;
        assert_eq!(rejected.err, ENOSPC);
        assert_eq!(&raw const *rejected.buf, addr);
        assert_eq!(*rejected.buf, [100, 101, 102, 103]);
        // Nothing to send, or more than the buffer holds.
        let rejected = q.add_outbuf(rejected.buf, 0).err().ok_or(EINVAL)?;
        assert_eq!(rejected.err, EINVAL);
        let rejected = q.add_inbuf(rejected.buf, 17).err().ok_or(EINVAL)?;
        assert_eq!(rejected.err, EINVAL);
        assert_eq!(*rejected.buf, [100, 101, 102, 103]);
        assert_eq!(q.in_flight(), 4);
        Ok(())
    }

    #[test]
    fn queued_buffers_are_dropped_once_when_the_queue_goes() -> Result {
        let drops = Arc::new(Atomic::new(0u32), GFP_KERNEL)?;
        let fake = FakeQueue::new(8)?;
        let q = fake.queue::<Tagged<[u32; 4], Counted>>()?;
        for tag in 0..3 {
            let buf = Tagged::new([tag; 4], Counted(drops.clone()), GFP_KERNEL)?;
            assert!(q.add_outbuf(buf, 16).is_ok());
        }
        assert!(q.kick());
        // The device used nothing: nothing comes back, nothing is dropped.
        assert!(q.get_buf().is_none());
        assert_eq!(drops.load(Relaxed), 0);
        fake.detach();
        assert_eq!(drops.load(Relaxed), 3);
        // The handle is dead; a buffer offered to it comes back.
        let buf = Tagged::new([7; 4], Counted(drops.clone()), GFP_KERNEL)?;
        let rejected = q.add_outbuf(buf, 16).err().ok_or(EINVAL)?;
        assert_eq!(rejected.err, ENODEV);
        drop(rejected);
        assert_eq!(drops.load(Relaxed), 4);
        Ok(())
    }

    #[test]
    fn a_queue_carries_one_buffer_type() -> Result {
        let fake = FakeQueue::new(4)?;
        let _words = fake.queue::<Words>()?;
        assert_eq!(fake.queue::<KBox<[u64; 2]>>().err(), Some(EINVAL));
        assert!(fake.queue::<Words>().is_ok());
        Ok(())
    }
}
