// SPDX-License-Identifier: GPL-2.0

//! The "host": what the device does with the buffers the driver queues,
//! in each mode (return them, keep them, return them late, twice, with a
//! bogus id or length, or break), and the PFNs it records.

use super::*;

impl FakeDevice {
    pub(super) fn mode(&self) -> Mode {
        Mode::from_u32(self.mode.load(Relaxed))
    }

    /// Writes a used element and publishes it.
    ///
    /// # Safety
    ///
    /// `vring` must be the live split ring of `q`.
    pub(super) unsafe fn push_used(vring: &bindings::vring, q: &mut Queue, id: u32, len: u32) {
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

    /// Walks the descriptor chain at `head` of queue `qi`, recording the
    /// PFNs of inflate (0) and deflate (1) buffers and the bytes reported.
    ///
    /// # Safety
    ///
    /// `vring` is the live ring of queue `qi`.
    pub(super) unsafe fn walk_chain(
        &self,
        st: &mut State,
        vring: &bindings::vring,
        qi: usize,
        head: u16,
    ) {
        let num = vring.num as u16;
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
                self.record(st, u64::from_le(desc.addr), u32::from_le(desc.len), qi == 0);
            } else if qi == REPORTING && write {
                self.reported_bytes
                    .fetch_add(u32::from_le(desc.len).into(), Relaxed);
            }
            if u32::from(flags) & bindings::VRING_DESC_F_NEXT == 0 {
                break;
            }
            d = u16::from_le(desc.next);
        }
    }

    /// Records the PFNs of an inflate (`inflate`) or deflate buffer at
    /// guest-physical `addr`, `len` bytes.
    pub(super) fn record(&self, st: &mut State, addr: u64, len: u32, inflate: bool) {
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
    pub(super) fn process(&self) -> Option<Instant<Monotonic>> {
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
                // SAFETY: `vring` is live and `head` came from its avail ring.
                unsafe { self.walk_chain(&mut st, &vring, qi, head) };
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
    pub(super) fn return_late(
        &self,
        st: &mut State,
        now: Instant<Monotonic>,
    ) -> Option<Instant<Monotonic>> {
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
    pub(super) fn interrupt(vq: *mut bindings::virtqueue) {
        // SAFETY: Interrupts are disabled around the handler, as for a real interrupt; `vq` is a
        // live queue of ours.
        unsafe {
            let flags = bindings::rust_vb_local_irq_save();
            bindings::vring_interrupt(0, vq.cast());
            bindings::rust_vb_local_irq_restore(flags);
        }
    }

    /// Returns every buffer kept back, and the late ones.
    pub(super) fn release_held(&self) {
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

    pub(super) fn set_target(&self, pages: u32) {
        self.num_pages.store(pages, Relaxed);
        if self.registered.load(Relaxed) {
            // SAFETY: Our registered device.
            unsafe { bindings::virtio_config_changed(self.vdev()) };
        }
    }
}
