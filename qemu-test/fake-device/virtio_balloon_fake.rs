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
mod control;
mod host;
mod transport;

use control::*;
use transport::CONFIG_OPS;

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
