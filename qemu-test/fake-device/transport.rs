// SPDX-License-Identifier: GPL-2.0

//! The device's virtio transport: the configuration operations the
//! virtio core calls (configuration space, status, features, queues,
//! notifications).

use super::*;

pub(super) static CONFIG_OPS: bindings::virtio_config_ops = bindings::virtio_config_ops {
    get: Some(FakeDevice::get),
    set: Some(FakeDevice::set),
    generation: None,
    get_status: Some(FakeDevice::get_status),
    set_status: Some(FakeDevice::set_status),
    reset: Some(FakeDevice::reset),
    find_vqs: Some(FakeDevice::find_vqs),
    del_vqs: Some(FakeDevice::del_vqs),
    synchronize_cbs: None,
    get_features: Some(FakeDevice::get_features),
    get_extended_features: None,
    finalize_features: Some(FakeDevice::finalize_features),
    bus_name: Some(FakeDevice::bus_name),
    set_vq_affinity: None,
    get_vq_affinity: None,
    get_shm_region: None,
    disable_vq_and_reset: None,
    enable_vq_after_reset: None,
};

impl FakeDevice {
    /// The config structure as the device keeps it, little-endian.
    pub(super) fn config(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0..4].copy_from_slice(&self.num_pages.load(Relaxed).to_le_bytes());
        c[4..8].copy_from_slice(&self.actual.load(Relaxed).to_le_bytes());
        c
    }

    pub(super) extern "C" fn get(
        vdev: *mut bindings::virtio_device,
        offset: c_uint,
        buf: *mut c_void,
        len: c_uint,
    ) {
        // SAFETY: The virtio core calls us with our device.
        let this = unsafe { Self::of(vdev) };
        let c = this.config();
        let (offset, len) = (offset as usize, len as usize);
        if offset + len > c.len() {
            pr_err!(
                "virtio_balloon_fake: config read of {len} bytes at {offset} is out of range\n"
            );
            return;
        }
        // SAFETY: `buf` is valid for `len` bytes of writes (virtio core contract).
        unsafe { ptr::copy_nonoverlapping(c[offset..].as_ptr(), buf.cast::<u8>(), len) };
    }

    pub(super) extern "C" fn set(
        vdev: *mut bindings::virtio_device,
        offset: c_uint,
        buf: *const c_void,
        len: c_uint,
    ) {
        // SAFETY: The virtio core calls us with our device.
        let this = unsafe { Self::of(vdev) };
        if offset == 4 && len == 4 {
            let mut b = [0u8; 4];
            // SAFETY: `buf` is valid for 4 bytes of reads.
            unsafe { ptr::copy_nonoverlapping(buf.cast::<u8>(), b.as_mut_ptr(), 4) };
            this.actual.store(u32::from_le_bytes(b), Relaxed);
        } else {
            pr_err!("config write of {len} bytes at {offset} refused\n");
        }
    }

    pub(super) extern "C" fn get_status(vdev: *mut bindings::virtio_device) -> u8 {
        // SAFETY: The virtio core calls us with our device.
        unsafe { Self::of(vdev) }.status.load(Relaxed) as u8
    }

    pub(super) extern "C" fn set_status(vdev: *mut bindings::virtio_device, status: u8) {
        // SAFETY: The virtio core calls us with our device.
        unsafe { Self::of(vdev) }
            .status
            .store(status.into(), Relaxed);
    }

    pub(super) extern "C" fn reset(vdev: *mut bindings::virtio_device) {
        // SAFETY: The virtio core calls us with our device.
        let this = unsafe { Self::of(vdev) };
        this.status.store(0, Relaxed);
        // A reset device forgets the buffers it kept.
        let mut st = this.state.lock();
        st.held.clear();
        st.late.clear();
        for q in st.queues.iter_mut() {
            q.vq = ptr::null_mut();
        }
    }

    pub(super) extern "C" fn get_features(vdev: *mut bindings::virtio_device) -> u64 {
        // SAFETY: The virtio core calls us with our device.
        unsafe { Self::of(vdev) }.features
    }

    pub(super) extern "C" fn finalize_features(vdev: *mut bindings::virtio_device) -> c_int {
        // SAFETY: The virtio core calls us with our device.
        unsafe { bindings::vring_transport_features(vdev) };
        0
    }

    pub(super) extern "C" fn bus_name(_vdev: *mut bindings::virtio_device) -> *const c_char {
        c"fake".as_char_ptr()
    }

    pub(super) extern "C" fn find_vqs(
        vdev: *mut bindings::virtio_device,
        nvqs: c_uint,
        vqs: *mut *mut bindings::virtqueue,
        infos: *mut bindings::virtqueue_info,
        _desc: *mut kb::irq_affinity,
    ) -> c_int {
        // SAFETY: The virtio core calls us with our device.
        let this = unsafe { Self::of(vdev) };
        let mut st = this.state.lock();
        let mut index = 0;
        for i in 0..nvqs as usize {
            // SAFETY: `vqs` and `infos` hold `nvqs` entries (virtio core contract).
            let (info, out) = unsafe { (&*infos.add(i), &mut *vqs.add(i)) };
            *out = ptr::null_mut();
            if info.name.is_null() {
                continue;
            }
            // SAFETY: `vdev` is our registered device; `info.name` is a valid string for the
            // queue's lifetime (driver contract).
            let vq = unsafe {
                bindings::vring_create_virtqueue(
                    index,
                    ring_size(index),
                    64,
                    vdev,
                    true,
                    true,
                    info.ctx,
                    Some(Self::notify),
                    info.callback,
                    info.name,
                )
            };
            if vq.is_null() {
                drop(st);
                // Delete the queues created so far.
                Self::del_vqs(vdev);
                return ENOMEM.to_errno();
            }
            index += 1;
            *out = vq;
            if i < MAX_QUEUES {
                st.queues[i] = Queue {
                    vq,
                    last_avail: 0,
                    used_idx: 0,
                };
            }
        }
        st.broken = false;
        0
    }

    pub(super) extern "C" fn del_vqs(vdev: *mut bindings::virtio_device) {
        // SAFETY: The virtio core calls us with our device; its queue list holds what
        // `vring_create_virtqueue` made for it, and deleting them is the transport's job.
        unsafe {
            let head = ptr::addr_of_mut!((*vdev).vqs);
            loop {
                let next = ptr::read_volatile(ptr::addr_of!((*head).next));
                if next == head {
                    break;
                }
                let vq = next
                    .cast::<u8>()
                    .sub(core::mem::offset_of!(bindings::virtqueue, list))
                    .cast::<bindings::virtqueue>();
                bindings::vring_del_virtqueue(vq);
            }
        }
        // SAFETY: The virtio core calls us with our device.
        let this = unsafe { Self::of(vdev) };
        let mut st = this.state.lock();
        st.queues = [NO_QUEUE; MAX_QUEUES];
        st.held.clear();
        st.late.clear();
    }

    /// The driver notified a queue (any context): play the host later.
    pub(super) extern "C" fn notify(vq: *mut bindings::virtqueue) -> bool {
        // SAFETY: `vq` is one of our queues, created for our device.
        let vdev = unsafe { (*vq).vdev };
        // SAFETY: While the device is registered the registration holds a reference to the
        // `Arc` that `into_raw` gave it, to which `vdev` points.
        let this: Arc<FakeDevice> =
            unsafe { ArcBorrow::from_raw(vdev.cast::<FakeDevice>()) }.into();
        let _ = workqueue::system().enqueue::<_, 0>(this);
        true
    }
}
