// SPDX-License-Identifier: GPL-2.0

//! A virtio balloon device inside the guest, which misbehaves on demand:
//! the device a test needs to see what a driver does when the host never
//! returns a buffer, returns a bogus one, returns one twice, reports a used
//! length beyond the buffer, or breaks (QEMU does none of these, and its
//! `stop` command pauses the vCPUs too).
//!
//! Loading `virtio_balloon_fake.ko` registers one virtio device of type 5
//! (balloon) on the virtio bus, with its own transport: configuration space
//! in memory, split rings from `vring_create_virtqueue()`, and a work item
//! that plays the host whenever the driver notifies it. Whatever balloon
//! driver is loaded binds it. Control and observation are in debugfs,
//! `/sys/kernel/debug/virtio_balloon_fake/`:
//!
//! - `target` (read/write): the balloon size the "host" asks for, in 4 KiB
//!   pages; writing it raises a configuration change;
//! - `mode` (read/write): `normal`, `silent` (never return an inflate or
//!   deflate buffer), `bogus-id` (return an id the ring never had),
//!   `twice` (return each buffer twice), `oversize` (report 1 MiB used in
//!   each buffer), `broken` (break the device at the next request),
//!   `keep-reports` (keep the buffers of the free page reporting queue, the
//!   first `keep_reports` of them or all; inflate and deflate normal), `late` (return each inflate and deflate
//!   buffer `delay_ms` after the device saw it). The modes apply to the
//!   inflate and deflate queues, `keep-reports` to the reporting queue;
//!   the other queues always answer at once;
//! - `delay_ms` (read/write): the delay of `late`, in milliseconds;
//! - `keep_reports` (read/write): how many reporting buffers
//!   `keep-reports` keeps (counting from the device's start), 0 for all;
//!   the others are returned at once;
//! - `release` (write): return the buffers kept back so far (and the late
//!   ones at once);
//! - `unplug` (write): unregister the device (what a hot-unplug does), and
//!   log how long the driver's removal took;
//! - `break` (write): break the device now (`virtio_break_device()`): the
//!   driver's next buffers are refused (`EIO`) before the device sees them;
//! - `stats` (read): `actual`, PFNs inflated and deflated, PFNs deflated
//!   that were never inflated (a driver bug), buffers returned and kept,
//!   reporting buffers seen, kept and held now, bytes reported, buffers
//!   delayed and pending.
//!
//! Module parameters: `features` (balloon feature bits offered; default
//! `MUST_TELL_HOST | DEFLATE_ON_OOM`; `0x25` adds `REPORTING`), `mode`
//! (initial mode, as a number in the order above), `delay_ms` (initial
//! delay of `late`), `keep_reports`, `deflate_ring`.

#[path = "../../src/bindings.rs"]
#[allow(unused_imports)]
mod bindings;
#[path = "../../src/compat.rs"]
#[allow(dead_code, unused_imports, unused_macros)]
mod compat;

use compat::Param;
use core::{
    marker::PhantomPinned,
    ptr,
    sync::atomic::{
        fence,
        Ordering, //
    },
};
use kernel::{
    bindings as kb, debugfs,
    ffi::{
        c_char,
        c_int,
        c_uint,
        c_void, //
    },
    new_mutex,
    prelude::*,
    sync::{
        atomic::{
            Atomic,
            Relaxed, //
        },
        Arc,
        ArcBorrow,
        Mutex, //
    },
    time::{
        delay::fsleep,
        Delta,
        Instant,
        Monotonic, //
    },
    types::Opaque,
    uaccess::UserSliceReader,
    workqueue::{
        self,
        impl_has_work,
        new_work,
        Work,
        WorkItem, //
    },
};

module! {
    type: FakeModule,
    name: "virtio_balloon_fake",
    authors: ["virtio_balloon_rs developers"],
    description: "A virtio balloon device that misbehaves on demand (test device)",
    license: "GPL",
    params: {
        features: u32 {
            default: 0x5,
            description: "Balloon feature bits offered (VIRTIO_F_VERSION_1 always is)",
        },
        mode: u32 {
            default: 0,
            description: "0 normal, 1 silent, 2 bogus-id, 3 twice, 4 oversize, 5 broken, \
                6 keep-reports, 7 late",
        },
        delay_ms: u32 {
            default: 500,
            description: "How long mode late keeps each inflate and deflate buffer, in ms",
        },
        keep_reports: u32 {
            default: 0,
            description: "How many reporting buffers mode keep-reports keeps (0: all)",
        },
        deflate_ring: u32 {
            default: 256,
            description: "Ring size of the deflate queue (a power of two, 1 to 256; the others \
                have 256)",
        },
    },
}

/// Queues of a balloon device (the driver's `find_vqs` order: inflate,
/// deflate, stats, free page hinting, free page reporting).
const MAX_QUEUES: usize = 5;
/// The free page reporting queue (`VIRTIO_BALLOON_VQ_REPORTING`).
const REPORTING: usize = 4;
/// Ring size offered.
const RING_SIZE: u32 = 256;

/// Ring size of queue `index`: the deflate queue's from the `deflate_ring`
/// parameter (a power of two up to [`RING_SIZE`]).
fn ring_size(index: u32) -> u32 {
    if index != 1 {
        return RING_SIZE;
    }
    let r = module_parameters::deflate_ring.get().clamp(1, RING_SIZE);
    if r.is_power_of_two() {
        r
    } else {
        r.next_power_of_two().min(RING_SIZE)
    }
}
/// PFNs the inflated-page bitmap covers (4 GiB of 4 KiB pages).
const TRACKED_PFNS: usize = 1 << 20;

/// How the device answers inflate and deflate buffers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Normal,
    Silent,
    BogusId,
    Twice,
    Oversize,
    Broken,
    KeepReports,
    Late,
}

const MODES: [(&str, Mode); 8] = [
    ("normal", Mode::Normal),
    ("silent", Mode::Silent),
    ("bogus-id", Mode::BogusId),
    ("twice", Mode::Twice),
    ("oversize", Mode::Oversize),
    ("broken", Mode::Broken),
    ("keep-reports", Mode::KeepReports),
    ("late", Mode::Late),
];

impl Mode {
    fn from_u32(v: u32) -> Mode {
        MODES.get(v as usize).map_or(Mode::Normal, |m| m.1)
    }

    fn name(self) -> &'static str {
        MODES.iter().find(|m| m.1 == self).map_or("?", |m| m.0)
    }

    /// How the device answers a buffer of queue `qi` in this mode.
    fn for_queue(self, qi: usize) -> Mode {
        match (qi, self) {
            (0 | 1, Mode::KeepReports) => Mode::Normal,
            (0 | 1, m) => m,
            (REPORTING, Mode::KeepReports) => Mode::KeepReports,
            _ => Mode::Normal,
        }
    }
}

/// Most buffers the device can have at once: every ring full.
const MAX_BUFFERS: usize = MAX_QUEUES * RING_SIZE as usize;

/// How often the work item looks for new buffers while late ones wait.
const LATE_POLL: Delta = Delta::from_millis(10);

/// One queue as the device sees it.
#[derive(Clone, Copy)]
struct Queue {
    vq: *mut bindings::virtqueue,
    last_avail: u16,
    used_idx: u16,
}

const NO_QUEUE: Queue = Queue {
    vq: ptr::null_mut(),
    last_avail: 0,
    used_idx: 0,
};

struct State {
    queues: [Queue; MAX_QUEUES],
    /// Buffers not returned: (queue, head). Room for [`MAX_BUFFERS`] is
    /// reserved, so that the device never allocates while playing the host
    /// (the guest may be out of memory, waiting for the driver).
    held: KVec<(usize, u16)>,
    /// Buffers to return later (mode `late`): (queue, head, when).
    late: KVec<(usize, u16, Instant<Monotonic>)>,
    /// Balloon PFNs inflated and not deflated.
    inflated: KVVec<u64>,
    broken: bool,
}

// SAFETY: The virtqueue pointers are used only under the state's mutex.
unsafe impl Send for State {}

/// The device.
#[repr(C)]
#[pin_data]
struct FakeDevice {
    /// First: the transport's callbacks find the device from it.
    #[pin]
    vdev: Opaque<bindings::virtio_device>,
    #[pin]
    state: Mutex<State>,
    #[pin]
    work: Work<FakeDevice>,
    num_pages: Atomic<u32>,
    actual: Atomic<u32>,
    status: Atomic<u32>,
    mode: Atomic<u32>,
    registered: Atomic<bool>,
    features: u64,
    inflated_pfns: Atomic<u64>,
    deflated_pfns: Atomic<u64>,
    unknown_deflated: Atomic<u64>,
    returned: Atomic<u64>,
    kept: Atomic<u64>,
    delay_ms: Atomic<u32>,
    keep_reports: Atomic<u32>,
    reports: Atomic<u64>,
    reports_kept: Atomic<u64>,
    reported_bytes: Atomic<u64>,
    delayed: Atomic<u64>,
    #[pin]
    _pin: PhantomPinned,
}

impl_has_work! {
    impl HasWork<FakeDevice> for FakeDevice { self.work }
}

// SAFETY: The virtio device is used by the virtio core under its own locking; the rest is atomics
// and a mutex.
unsafe impl Send for FakeDevice {}
// SAFETY: As above.
unsafe impl Sync for FakeDevice {}

static CONFIG_OPS: bindings::virtio_config_ops = bindings::virtio_config_ops {
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
    fn new() -> Result<Arc<Self>> {
        let mut inflated = KVVec::new();
        inflated.resize(TRACKED_PFNS / 64, 0u64, GFP_KERNEL)?;
        let features =
            u64::from(module_parameters::features.get()) | (1u64 << bindings::VIRTIO_F_VERSION_1);
        let held = KVec::with_capacity(MAX_BUFFERS, GFP_KERNEL)?;
        let late = KVec::with_capacity(MAX_BUFFERS, GFP_KERNEL)?;
        Arc::pin_init(
            pin_init!(Self {
                vdev <- Opaque::ffi_init(|slot: *mut bindings::virtio_device| {
                    // SAFETY: `slot` is valid for writes; an all-zero `virtio_device` is what
                    // transports start from, `register_virtio_device` initializes the rest.
                    unsafe {
                        ptr::write_bytes(slot, 0, 1);
                        (*slot).dev.release = Some(Self::release);
                        (*slot).id.device = bindings::VIRTIO_ID_BALLOON;
                        (*slot).id.vendor = 0x1af4;
                        (*slot).config = &CONFIG_OPS;
                    }
                }),
                state <- new_mutex!(State {
                    queues: [NO_QUEUE; MAX_QUEUES],
                    held,
                    late,
                    inflated,
                    broken: false,
                }),
                work <- new_work!("virtio_balloon_fake::work"),
                num_pages: Atomic::new(0),
                actual: Atomic::new(0),
                status: Atomic::new(0),
                mode: Atomic::new(module_parameters::mode.get()),
                registered: Atomic::new(false),
                features,
                inflated_pfns: Atomic::new(0),
                deflated_pfns: Atomic::new(0),
                unknown_deflated: Atomic::new(0),
                returned: Atomic::new(0),
                kept: Atomic::new(0),
                delay_ms: Atomic::new(module_parameters::delay_ms.get()),
                keep_reports: Atomic::new(module_parameters::keep_reports.get()),
                reports: Atomic::new(0),
                reports_kept: Atomic::new(0),
                reported_bytes: Atomic::new(0),
                delayed: Atomic::new(0),
                _pin: PhantomPinned,
            }),
            GFP_KERNEL,
        )
    }

    fn vdev(&self) -> *mut bindings::virtio_device {
        self.vdev.get()
    }

    /// # Safety
    ///
    /// `vdev` must be the device of a live `FakeDevice`.
    unsafe fn of<'a>(vdev: *mut bindings::virtio_device) -> &'a FakeDevice {
        // CAST: `vdev` is the first field of the `repr(C)` `FakeDevice`.
        // SAFETY: By the safety requirements it is the device of a live `FakeDevice`.
        unsafe { &*vdev.cast::<FakeDevice>() }
    }

    /// Registers the device; the registration owns one reference, which the
    /// device's release gives back.
    fn register(this: &Arc<Self>) -> Result {
        let raw = Arc::into_raw(this.clone());
        // SAFETY: `vdev` is initialized and pinned in the `Arc`, which stays alive (the reference
        // just leaked) until `release`.
        let ret = unsafe { bindings::register_virtio_device(this.vdev()) };
        if ret != 0 {
            // SAFETY: On failure the caller must drop the device reference, which calls `release`
            // and so gives back the reference taken above.
            unsafe { kb::put_device(ptr::addr_of_mut!((*this.vdev()).dev)) };
            return Err(Error::from_errno(ret));
        }
        let _ = raw;
        this.registered.store(true, Relaxed);
        Ok(())
    }

    /// Unregisters the device (the driver's `remove` runs meanwhile);
    /// returns how long that took, in milliseconds.
    fn unplug(&self) -> Option<i64> {
        if !self.registered.xchg(false, Relaxed) {
            return None;
        }
        let start = Instant::<Monotonic>::now();
        // SAFETY: The device is registered (checked and cleared above, once).
        unsafe { bindings::unregister_virtio_device(self.vdev()) };
        Some(start.elapsed().as_millis())
    }

    extern "C" fn release(dev: *mut kb::device) {
        // CAST: `dev` is the `dev` field of our `virtio_device`, the first field of `FakeDevice`.
        let vdev = dev
            .cast::<u8>()
            .wrapping_sub(core::mem::offset_of!(bindings::virtio_device, dev))
            .cast::<FakeDevice>();
        // SAFETY: The registration's reference, from `Arc::into_raw` in `register`.
        drop(unsafe { Arc::from_raw(vdev) });
    }

    /// The config structure as the device keeps it, little-endian.
    fn config(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0..4].copy_from_slice(&self.num_pages.load(Relaxed).to_le_bytes());
        c[4..8].copy_from_slice(&self.actual.load(Relaxed).to_le_bytes());
        c
    }

    extern "C" fn get(
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

    extern "C" fn set(
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

    extern "C" fn get_status(vdev: *mut bindings::virtio_device) -> u8 {
        // SAFETY: The virtio core calls us with our device.
        unsafe { Self::of(vdev) }.status.load(Relaxed) as u8
    }

    extern "C" fn set_status(vdev: *mut bindings::virtio_device, status: u8) {
        // SAFETY: The virtio core calls us with our device.
        unsafe { Self::of(vdev) }
            .status
            .store(status.into(), Relaxed);
    }

    extern "C" fn reset(vdev: *mut bindings::virtio_device) {
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

    extern "C" fn get_features(vdev: *mut bindings::virtio_device) -> u64 {
        // SAFETY: The virtio core calls us with our device.
        unsafe { Self::of(vdev) }.features
    }

    extern "C" fn finalize_features(vdev: *mut bindings::virtio_device) -> c_int {
        // SAFETY: The virtio core calls us with our device.
        unsafe { bindings::vring_transport_features(vdev) };
        0
    }

    extern "C" fn bus_name(_vdev: *mut bindings::virtio_device) -> *const c_char {
        c"fake".as_char_ptr()
    }

    extern "C" fn find_vqs(
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

    extern "C" fn del_vqs(vdev: *mut bindings::virtio_device) {
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
    extern "C" fn notify(vq: *mut bindings::virtqueue) -> bool {
        // SAFETY: `vq` is one of our queues, created for our device.
        let vdev = unsafe { (*vq).vdev };
        // SAFETY: While the device is registered the registration holds a reference to the
        // `Arc` that `into_raw` gave it, to which `vdev` points.
        let this: Arc<FakeDevice> =
            unsafe { ArcBorrow::from_raw(vdev.cast::<FakeDevice>()) }.into();
        let _ = workqueue::system().enqueue::<_, 0>(this);
        true
    }

    fn mode(&self) -> Mode {
        Mode::from_u32(self.mode.load(Relaxed))
    }

    /// Writes a used element and publishes it.
    ///
    /// # Safety
    ///
    /// `vring` must be the live split ring of `q`.
    unsafe fn push_used(vring: &bindings::vring, q: &mut Queue, id: u32, len: u32) {
        let Some(slot) = q.used_idx.checked_rem(vring.num as u16) else {
            return;
        };
        let slot = slot as usize;
        // SAFETY: `slot < num`, within the used ring.
        unsafe {
            let elem = (*vring.used).ring.as_mut_ptr().add(slot);
            ptr::write_volatile(ptr::addr_of_mut!((*elem).id), id.to_le());
            ptr::write_volatile(ptr::addr_of_mut!((*elem).len), len.to_le());
        }
        q.used_idx = q.used_idx.wrapping_add(1);
        fence(Ordering::Release);
        // SAFETY: As above.
        unsafe { ptr::write_volatile(ptr::addr_of_mut!((*vring.used).idx), q.used_idx.to_le()) };
    }

    /// Records the PFNs of an inflate (`inflate`) or deflate buffer at
    /// guest-physical `addr`, `len` bytes.
    fn record(&self, st: &mut State, addr: u64, len: u32, inflate: bool) {
        // SAFETY: Without the DMA API (no `VIRTIO_F_ACCESS_PLATFORM`), a descriptor's address is
        // the physical address of driver memory in the linear mapping, `len` bytes long.
        let va = unsafe { bindings::rust_vb_phys_to_virt(addr) }.cast::<u8>();
        for i in 0..(len / 4) as usize {
            let mut b = [0u8; 4];
            // SAFETY: Within the descriptor's `len` bytes.
            unsafe { ptr::copy_nonoverlapping(va.add(4 * i), b.as_mut_ptr(), 4) };
            let pfn = u32::from_le_bytes(b) as usize;
            let (word, bit) = (pfn / 64, 1u64 << (pfn % 64));
            if inflate {
                self.inflated_pfns.fetch_add(1, Relaxed);
                if let Some(w) = st.inflated.get_mut(word) {
                    *w |= bit;
                }
            } else {
                self.deflated_pfns.fetch_add(1, Relaxed);
                match st.inflated.get_mut(word) {
                    Some(w) if *w & bit != 0 => *w &= !bit,
                    Some(_) => {
                        self.unknown_deflated.fetch_add(1, Relaxed);
                    }
                    None => {}
                }
            }
        }
    }

    /// Plays the host: consumes what the driver made available, answers as
    /// the mode says, returns the late buffers whose time has come, then
    /// interrupts. Returns when the next late buffer is due, if any.
    fn process(&self) -> Option<Instant<Monotonic>> {
        let mut st = self.state.lock();
        let mode = self.mode();
        let now = Instant::<Monotonic>::now();
        let delay = Delta::from_millis(self.delay_ms.load(Relaxed).into());
        for qi in 0..MAX_QUEUES {
            let q = st.queues[qi];
            if q.vq.is_null() {
                continue;
            }
            // SAFETY: `q.vq` is a live queue of ours (cleared on reset and deletion, under the
            // lock we hold).
            let vring = unsafe { *bindings::virtqueue_get_vring(q.vq) };
            let num = vring.num as u16;
            let mut interrupt = false;
            loop {
                // SAFETY: `vring` is live; the driver publishes `avail.idx` after the entries.
                let avail_idx =
                    u16::from_le(unsafe { ptr::read_volatile(ptr::addr_of!((*vring.avail).idx)) });
                fence(Ordering::Acquire);
                if st.queues[qi].last_avail == avail_idx {
                    break;
                }
                let Some(slot) = st.queues[qi].last_avail.checked_rem(num) else {
                    break;
                };
                let slot = slot as usize;
                st.queues[qi].last_avail = st.queues[qi].last_avail.wrapping_add(1);
                // SAFETY: `slot < num`, within the avail ring.
                let head = u16::from_le(unsafe {
                    ptr::read_volatile((*vring.avail).ring.as_ptr().add(slot))
                });
                // Walk the chain, recording PFNs of inflate (0) and deflate (1) buffers.
                let mut d = head;
                for _ in 0..num {
                    if d >= num {
                        break;
                    }
                    // SAFETY: `d < num`, within the descriptor table.
                    let desc = unsafe { ptr::read_volatile(vring.desc.add(d as usize)) };
                    let flags = u16::from_le(desc.flags);
                    let write = u32::from(flags) & bindings::VRING_DESC_F_WRITE != 0;
                    if qi < 2 && !write {
                        self.record(
                            &mut st,
                            u64::from_le(desc.addr),
                            u32::from_le(desc.len),
                            qi == 0,
                        );
                    } else if qi == REPORTING && write {
                        self.reported_bytes
                            .fetch_add(u32::from_le(desc.len).into(), Relaxed);
                    }
                    if u32::from(flags) & bindings::VRING_DESC_F_NEXT == 0 {
                        break;
                    }
                    d = u16::from_le(desc.next);
                }
                if qi == REPORTING {
                    self.reports.fetch_add(1, Relaxed);
                }
                let mut mode = mode.for_queue(qi);
                let keep = u64::from(self.keep_reports.load(Relaxed));
                if mode == Mode::KeepReports && keep != 0 && self.reports_kept.load(Relaxed) >= keep
                {
                    mode = Mode::Normal;
                }
                let qs = &mut st.queues[qi];
                // SAFETY: `vring` is the live ring of `qs`.
                unsafe {
                    match mode {
                        Mode::Normal => Self::push_used(&vring, qs, head.into(), 0),
                        Mode::BogusId => Self::push_used(&vring, qs, u32::from(num) + 7, 0),
                        Mode::Twice => {
                            Self::push_used(&vring, qs, head.into(), 0);
                            Self::push_used(&vring, qs, head.into(), 0);
                        }
                        Mode::Oversize => Self::push_used(&vring, qs, head.into(), 1 << 20),
                        Mode::Silent | Mode::Broken | Mode::KeepReports | Mode::Late => {}
                    }
                }
                match mode {
                    Mode::Silent | Mode::Broken | Mode::KeepReports => {
                        // Room is reserved for every buffer the rings hold.
                        let _ = st.held.push_within_capacity((qi, head));
                        self.kept.fetch_add(1, Relaxed);
                        if qi == REPORTING {
                            self.reports_kept.fetch_add(1, Relaxed);
                        }
                    }
                    Mode::Late => {
                        let _ = st.late.push_within_capacity((qi, head, now + delay));
                        self.delayed.fetch_add(1, Relaxed);
                    }
                    _ => {
                        interrupt = true;
                        self.returned.fetch_add(1, Relaxed);
                    }
                }
                if mode == Mode::Broken && !st.broken {
                    st.broken = true;
                    pr_info!("breaking the device\n");
                    // SAFETY: Our registered device.
                    unsafe { bindings::virtio_break_device(self.vdev()) };
                }
            }
            if interrupt {
                Self::interrupt(q.vq);
            }
        }
        self.return_late(&mut st, now)
    }

    /// Returns the late buffers due by `now` and interrupts their queues;
    /// returns when the next one is due, if any.
    fn return_late(&self, st: &mut State, now: Instant<Monotonic>) -> Option<Instant<Monotonic>> {
        let mut touched = [false; MAX_QUEUES];
        let mut next: Option<Instant<Monotonic>> = None;
        let State { queues, late, .. } = st;
        late.retain(|&mut (qi, head, due)| {
            // (`Instant<Monotonic>` is not `Ord`; their differences are.)
            if due - now > Delta::ZERO {
                next = Some(next.map_or(due, |n| if due - n < Delta::ZERO { due } else { n }));
                return true;
            }
            let q = &mut queues[qi];
            if !q.vq.is_null() {
                // SAFETY: `q.vq` is live (see `process`).
                let vring = unsafe { *bindings::virtqueue_get_vring(q.vq) };
                // SAFETY: `vring` is the live ring of `q`.
                unsafe { Self::push_used(&vring, q, head.into(), 0) };
                self.returned.fetch_add(1, Relaxed);
                touched[qi] = true;
            }
            false
        });
        for (qi, q) in queues.iter().enumerate() {
            if touched[qi] && !q.vq.is_null() {
                Self::interrupt(q.vq);
            }
        }
        next
    }

    /// Raises the queue's interrupt, from process context.
    fn interrupt(vq: *mut bindings::virtqueue) {
        // SAFETY: Interrupts are disabled around the handler, as for a real interrupt; `vq` is a
        // live queue of ours.
        unsafe {
            let flags = bindings::rust_vb_local_irq_save();
            bindings::vring_interrupt(0, vq.cast());
            bindings::rust_vb_local_irq_restore(flags);
        }
    }

    /// Returns every buffer kept back, and the late ones.
    fn release_held(&self) {
        let mut st = self.state.lock();
        let far = Instant::<Monotonic>::now() + Delta::from_secs(3600);
        self.return_late(&mut st, far);
        let mut touched = [false; MAX_QUEUES];
        let State { queues, held, .. } = &mut *st;
        // `drain_all` keeps the vector's reserved room.
        for (qi, head) in held.drain_all() {
            let q = &mut queues[qi];
            if q.vq.is_null() {
                continue;
            }
            // SAFETY: `q.vq` is live (see `process`).
            let vring = unsafe { *bindings::virtqueue_get_vring(q.vq) };
            // SAFETY: `vring` is the live ring of `q`.
            unsafe { Self::push_used(&vring, q, head.into(), 0) };
            touched[qi] = true;
        }
        // Interrupt under the lock, as `process` does: the queues cannot be
        // deleted meanwhile.
        for (qi, q) in queues.iter().enumerate() {
            if touched[qi] && !q.vq.is_null() {
                Self::interrupt(q.vq);
            }
        }
    }

    fn set_target(&self, pages: u32) {
        self.num_pages.store(pages, Relaxed);
        if self.registered.load(Relaxed) {
            // SAFETY: Our registered device.
            unsafe { bindings::virtio_config_changed(self.vdev()) };
        }
    }
}

impl WorkItem for FakeDevice {
    type Pointer = Arc<FakeDevice>;

    /// Plays the host; while late buffers wait, sleeps (here, in process
    /// context, never in the notify callback) and looks again every
    /// [`LATE_POLL`] for new buffers, until the last late one is returned.
    fn run(this: Arc<FakeDevice>) {
        while let Some(due) = this.process() {
            let left = due - Instant::<Monotonic>::now();
            fsleep(left.min(LATE_POLL));
        }
    }
}

/// Reads a short word written to a debugfs file.
fn read_word(reader: &mut UserSliceReader) -> Result<([u8; 32], usize)> {
    let mut buf = [0u8; 32];
    let n = reader.len().min(buf.len());
    reader.read_slice(&mut buf[..n])?;
    let s = core::str::from_utf8(&buf[..n]).map_err(|_| EINVAL)?.trim();
    let mut out = [0u8; 32];
    out[..s.len()].copy_from_slice(s.as_bytes());
    Ok((out, s.len()))
}

fn write_target(dev: &Arc<FakeDevice>, reader: &mut UserSliceReader) -> Result {
    let (w, n) = read_word(reader)?;
    let s = core::str::from_utf8(&w[..n]).map_err(|_| EINVAL)?;
    let pages: u32 = s.parse().map_err(|_| EINVAL)?;
    dev.set_target(pages);
    Ok(())
}

fn read_target(dev: &Arc<FakeDevice>, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
    writeln!(f, "{}", dev.num_pages.load(Relaxed))
}

fn write_mode(dev: &Arc<FakeDevice>, reader: &mut UserSliceReader) -> Result {
    let (w, n) = read_word(reader)?;
    let s = core::str::from_utf8(&w[..n]).map_err(|_| EINVAL)?;
    let (i, m) = MODES
        .iter()
        .enumerate()
        .find(|(_, (name, _))| *name == s)
        .ok_or(EINVAL)?;
    dev.mode.store(i as u32, Relaxed);
    pr_info!("mode {}\n", m.1.name());
    Ok(())
}

fn read_mode(dev: &Arc<FakeDevice>, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
    writeln!(f, "{}", dev.mode().name())
}

fn write_release(dev: &Arc<FakeDevice>, _reader: &mut UserSliceReader) -> Result {
    dev.release_held();
    Ok(())
}

fn write_break(dev: &Arc<FakeDevice>, _reader: &mut UserSliceReader) -> Result {
    if dev.registered.load(Relaxed) {
        let mut st = dev.state.lock();
        st.broken = true;
        pr_info!("breaking the device\n");
        // SAFETY: Our registered device.
        unsafe { bindings::virtio_break_device(dev.vdev()) };
    }
    Ok(())
}

fn write_unplug(dev: &Arc<FakeDevice>, _reader: &mut UserSliceReader) -> Result {
    if let Some(ms) = dev.unplug() {
        pr_info!("unplugged; the driver's removal took {ms} ms\n");
    }
    Ok(())
}

fn read_stats(dev: &Arc<FakeDevice>, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
    writeln!(f, "actual: {}", dev.actual.load(Relaxed))?;
    writeln!(f, "inflated_pfns: {}", dev.inflated_pfns.load(Relaxed))?;
    writeln!(f, "deflated_pfns: {}", dev.deflated_pfns.load(Relaxed))?;
    writeln!(
        f,
        "deflated_never_inflated: {}",
        dev.unknown_deflated.load(Relaxed)
    )?;
    writeln!(f, "buffers_returned: {}", dev.returned.load(Relaxed))?;
    writeln!(f, "buffers_kept: {}", dev.kept.load(Relaxed))?;
    let (reports_held, late_pending) = {
        let st = dev.state.lock();
        let held = st.held.iter().filter(|h| h.0 == REPORTING).count();
        (held, st.late.len())
    };
    writeln!(f, "reports: {}", dev.reports.load(Relaxed))?;
    writeln!(f, "reports_kept: {}", dev.reports_kept.load(Relaxed))?;
    writeln!(f, "reports_held: {reports_held}")?;
    writeln!(f, "reported_bytes: {}", dev.reported_bytes.load(Relaxed))?;
    writeln!(f, "buffers_delayed: {}", dev.delayed.load(Relaxed))?;
    writeln!(f, "buffers_late_pending: {late_pending}")?;
    writeln!(f, "registered: {}", dev.registered.load(Relaxed))
}

/// Reads a number written to a debugfs file.
fn read_u32(reader: &mut UserSliceReader) -> Result<u32> {
    let (w, n) = read_word(reader)?;
    let s = core::str::from_utf8(&w[..n]).map_err(|_| EINVAL)?;
    s.parse().map_err(|_| EINVAL)
}

fn write_delay(dev: &Arc<FakeDevice>, reader: &mut UserSliceReader) -> Result {
    dev.delay_ms.store(read_u32(reader)?, Relaxed);
    Ok(())
}

fn read_delay(dev: &Arc<FakeDevice>, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
    writeln!(f, "{}", dev.delay_ms.load(Relaxed))
}

fn write_keep_reports(dev: &Arc<FakeDevice>, reader: &mut UserSliceReader) -> Result {
    dev.keep_reports.store(read_u32(reader)?, Relaxed);
    Ok(())
}

fn read_keep_reports(dev: &Arc<FakeDevice>, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
    writeln!(f, "{}", dev.keep_reports.load(Relaxed))
}

type DevFile = Pin<KBox<debugfs::File<Arc<FakeDevice>>>>;

/// Creates a debugfs file of the device and keeps it in `files`.
fn add_file<E>(
    files: &mut KVec<DevFile>,
    file: impl PinInit<debugfs::File<Arc<FakeDevice>>, E>,
) -> Result
where
    Error: From<E>,
{
    files.push(KBox::pin_init(file, GFP_KERNEL)?, GFP_KERNEL)?;
    Ok(())
}

struct FakeModule {
    dev: Arc<FakeDevice>,
    _files: KVec<DevFile>,
}

impl kernel::Module for FakeModule {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let dev = FakeDevice::new()?;
        let dir = debugfs::Dir::new(c"virtio_balloon_fake");
        let mut files = KVec::new();
        add_file(
            &mut files,
            dir.read_write_callback_file(c"target", dev.clone(), &read_target, &write_target),
        )?;
        add_file(
            &mut files,
            dir.read_write_callback_file(c"mode", dev.clone(), &read_mode, &write_mode),
        )?;
        add_file(
            &mut files,
            dir.read_write_callback_file(c"delay_ms", dev.clone(), &read_delay, &write_delay),
        )?;
        add_file(
            &mut files,
            dir.read_write_callback_file(
                c"keep_reports",
                dev.clone(),
                &read_keep_reports,
                &write_keep_reports,
            ),
        )?;
        add_file(
            &mut files,
            dir.write_callback_file(c"release", dev.clone(), &write_release),
        )?;
        add_file(
            &mut files,
            dir.write_callback_file(c"unplug", dev.clone(), &write_unplug),
        )?;
        add_file(
            &mut files,
            dir.write_callback_file(c"break", dev.clone(), &write_break),
        )?;
        add_file(
            &mut files,
            dir.read_callback_file(c"stats", dev.clone(), &read_stats),
        )?;
        FakeDevice::register(&dev)?;
        pr_info!(
            "virtio_balloon_fake: registered (features {:#x}, mode {})\n",
            dev.features,
            dev.mode().name()
        );
        Ok(Self { dev, _files: files })
    }
}

impl Drop for FakeModule {
    fn drop(&mut self) {
        self.dev.unplug();
        // The driver is gone and the queues with it: nothing queues the work
        // again. Wait for a run in progress (it may be sleeping for late
        // buffers) before the module's code goes.
        // SAFETY: `work` is a field of the live, pinned device.
        unsafe { kb::flush_work(Work::raw_get(&self.dev.work)) };
    }
}
