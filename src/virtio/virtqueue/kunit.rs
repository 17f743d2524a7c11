// SPDX-License-Identifier: GPL-2.0

//! KUnit cases of the queues, on a ring the virtio core creates for a
//! device that is never there ([`FakeQueue`]): what the owned-buffer queue
//! does with the buffers it is given, refuses and still holds when it goes
//! away; what a lent-memory queue does once unbinding began and with
//! memory the device keeps.

use kernel::prelude::kunit_tests;

#[kunit_tests(virtio_balloon_rs_virtqueue_buffers)]
mod tests {
    use super::super::{
        NotReturned,
        OwnedSgList,
        QueueKind,
        SgList,
        SgQueue,
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
        time::Delta,
        types::Opaque,
    };

    /// A ring of `vring_create_virtqueue()` for a bare `struct
    /// virtio_device`: notifications go nowhere and no buffer is ever used,
    /// as with a device that never answers.
    ///
    /// The ring reads of the device only: its features (all clear: a split
    /// ring, legacy byte order, no indirect descriptors, no event index, no
    /// DMA or map API, so `map` and `dev.parent` stay unread), its queue
    /// list and that list's lock, and `dev` for log lines (a zeroed device
    /// prints as `(null)`). `config` is never called: the ring is never
    /// reset or resized. Not on Xen, where the ring always maps through the
    /// DMA API, which a bare device does not have.
    ///
    /// # Invariants
    ///
    /// `vq` is a live virtqueue of `_vdev` until dropped, attached to
    /// `slot` until [`FakeQueue::detach`] or the drop; `_vdev` is set up as
    /// far as the ring uses it (above).
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
            // SAFETY: Always safe to call.
            if unsafe { bindings::rust_vb_xen_domain() } {
                pr_err!("a bare ring cannot be made on Xen (it maps through the DMA API)\n");
                return Err(ENODEV);
            }
            let vdev = KBox::init(
                pin_init::zeroed::<Opaque<bindings::virtio_device>>(),
                GFP_KERNEL,
            )?;
            let d = vdev.get();
            // SAFETY: `d` points to a zeroed `struct virtio_device` we own, on the heap, which
            // outlives the ring (dropped after it): its queue list and lock are set up as
            // `register_virtio_device()` does. The bindings' `spinlock_t` is the kernel's
            // `spinlock_t` (both generated from `include/linux/spinlock_types.h`), opaque here.
            unsafe {
                bindings::INIT_LIST_HEAD(&raw mut (*d).vqs);
                kb::__spin_lock_init(
                    (&raw mut (*d).vqs_list_lock).cast(),
                    c"kunit_vqs_list_lock".as_char_ptr(),
                    static_lock_class!().as_ptr(),
                );
            }
            // SAFETY: `d` is set up as far as the ring uses it (see the type's documentation);
            // `notify` is callable from any context; the name is static.
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
            // SAFETY: `d` is the ring's device. A ring starts broken where notifications are
            // hardened (`CONFIG_VIRTIO_HARDEN_NOTIFICATION`) until the device is ready, which this
            // one is at once; elsewhere this changes nothing.
            unsafe { bindings::__virtio_unbreak_device(d) };
            let slot = match KBox::pin_init(VqSlot::new(), GFP_KERNEL) {
                Ok(slot) => slot,
                Err(e) => {
                    // SAFETY: Created above, used by nothing else.
                    unsafe { bindings::vring_del_virtqueue(vq) };
                    return Err(e);
                }
            };
            // SAFETY: `vq` is live, holds no buffer, nothing else uses it, and it stays valid
            // until the slot lets it go (`detach`, before `vring_del_virtqueue` in `drop`).
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

        /// A handle of the queue for lent memory.
        fn sg_queue(&self) -> Result<SgQueue<'_>> {
            SgQueue::new(&self.slot)
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
            // Let the queue go first, if `detach` has not already.
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

    /// 64 bytes of owned memory with the one scatterlist entry that
    /// describes them, counting its drops.
    ///
    /// # Invariants
    ///
    /// `sg` is an initialized, ending entry describing `data`.
    struct Lent {
        sg: Opaque<kb::scatterlist>,
        data: Opaque<[u8; 64]>,
        drops: Arc<Atomic<u32>>,
    }

    impl Lent {
        fn new(drops: &Arc<Atomic<u32>>) -> Result<KBox<Self>> {
            let lent = KBox::new(
                Self {
                    sg: Opaque::zeroed(),
                    data: Opaque::zeroed(),
                    drops: drops.clone(),
                },
                GFP_KERNEL,
            )?;
            // SAFETY: `sg` is writable; `data` is 64 bytes of kmalloc memory (in the linear
            // mapping) that stay where they are while the box lives.
            unsafe { kb::sg_init_one(lent.sg.get(), lent.data.get().cast(), 64) };
            // INVARIANT: Initialized above (`sg_init_one` marks the end).
            Ok(lent)
        }
    }

    impl Drop for Lent {
        fn drop(&mut self) {
            self.drops.add(1, Relaxed);
        }
    }

    // SAFETY: One initialized entry that ends the list (type invariant), describing `data`, which
    // the device may write (`Opaque`) and which nothing else uses.
    unsafe impl SgList for Lent {
        fn as_raw(&self) -> (*mut kb::scatterlist, usize) {
            (self.sg.get(), 1)
        }
    }

    // SAFETY: The entry and `data` are the value's own and live as long as it does; dropping it
    // gives them back. `Arc` and plain memory are `Send`.
    unsafe impl OwnedSgList for Lent {}

    // SAFETY: The memory is the value's own; `Opaque` only stops the compiler from assuming
    // nothing writes it.
    unsafe impl Send for Lent {}

    #[test]
    fn nothing_is_lent_once_unbinding_began() -> Result {
        let drops = Arc::new(Atomic::new(0u32), GFP_KERNEL)?;
        let fake = FakeQueue::new(4)?;
        let q = fake.sg_queue()?;
        fake.slot.revoke();
        let Err(NotReturned {
            err,
            sg: Some(back),
        }) = q.try_transfer_owned(Lent::new(&drops)?, Delta::from_millis(1000))
        else {
            return Err(EINVAL);
        };
        // At once, with the memory, and nothing lent that unbinding would wait for.
        assert_eq!(err, ENODEV);
        assert_eq!(fake.slot.lent(), 0);
        assert_eq!(drops.load(Relaxed), 0);
        drop(back);
        assert_eq!(drops.load(Relaxed), 1);
        Ok(())
    }

    #[test]
    fn memory_the_device_keeps_stays_its_until_reset() -> Result {
        let drops = Arc::new(Atomic::new(0u32), GFP_KERNEL)?;
        let fake = FakeQueue::new(4)?;
        let q = fake.sg_queue()?;
        // The device never gives it back: the wait ends, the memory stays.
        let Err(NotReturned { err, sg: None }) =
            q.try_transfer_owned(Lent::new(&drops)?, Delta::from_millis(20))
        else {
            return Err(EINVAL);
        };
        assert_eq!(err, ETIMEDOUT);
        assert_eq!(drops.load(Relaxed), 0);
        // The queue owns it now: unbinding does not wait for it.
        assert_eq!(fake.slot.lent(), 0);
        // Transfers wait until the device gives it back or is reset.
        let Err(NotReturned {
            err,
            sg: Some(back),
        }) = q.try_transfer_owned(Lent::new(&drops)?, Delta::from_millis(20))
        else {
            return Err(EINVAL);
        };
        assert_eq!(err, EBUSY);
        drop(back);
        assert_eq!(drops.load(Relaxed), 1);
        // Reset: the kept memory is freed, once.
        fake.detach();
        assert_eq!(drops.load(Relaxed), 2);
        Ok(())
    }
}
