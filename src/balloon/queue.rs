// SPDX-License-Identifier: GPL-2.0

//! Sending PFN buffers to the host with several in flight.
//!
//! C's `tell_host()` queues one buffer of 256 PFNs, notifies the host and
//! sleeps until the host has processed it, 256 pages at a time. A
//! [`Pipeline`] keeps up to `depth` buffers on the queue instead (virtio
//! allows any number of buffers before a notification): the guest fills the
//! next buffer while the host works on the previous ones, and the host is
//! notified only when it is not already processing the queue.

use super::perf::{
    Counter,
    Counters,
    Stopwatch, //
};
use crate::virtio::{
    self,
    Buffer,
    Rejected,
    Virtqueue, //
};
use kernel::{
    device::Bound,
    prelude::*, //
};

/// Buffers in flight on one queue.
pub(super) struct Pipeline<'a, B: Buffer> {
    vq: Virtqueue<'a, B>,
    depth: usize,
    in_flight: usize,
}

impl<'a, B: Buffer> Pipeline<'a, B> {
    /// A pipeline on queue `index` of `dev` with up to `depth` buffers.
    pub(super) fn new(dev: &'a virtio::Device<Bound>, index: usize, depth: usize) -> Result<Self> {
        Ok(Self {
            vq: dev.vq::<B>(index)?,
            depth: depth.max(1),
            in_flight: 0,
        })
    }

    /// Whether another buffer may be sent now.
    pub(super) fn has_room(&self) -> bool {
        self.in_flight < self.depth
    }

    /// Buffers sent and not yet returned.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues the first `bytes` of `buf` and notifies the host if needed.
    pub(super) fn send(
        &mut self,
        buf: B,
        bytes: usize,
        perf: &Counters,
    ) -> Result<(), Rejected<B>> {
        self.queue(buf, bytes)?;
        self.kick(perf);
        Ok(())
    }

    /// Queues the first `bytes` of `buf` without notifying the host.
    pub(super) fn queue(&mut self, buf: B, bytes: usize) -> Result<(), Rejected<B>> {
        self.vq.add_outbuf(buf, bytes)?;
        self.in_flight += 1;
        Ok(())
    }

    /// Notifies the host of queued buffers, if it wants to be notified.
    pub(super) fn kick(&mut self, perf: &Counters) {
        if self.vq.kick() {
            perf.add(Counter::Notifications, 1);
        }
    }

    /// Sleeps until the host returns a buffer (time added to `wait`).
    pub(super) fn complete(&mut self, perf: &Counters, wait: Counter) -> Result<B> {
        let sw = Stopwatch::start();
        let done = self.vq.wait_buf();
        sw.stop(perf, wait);
        // Returned or lost with the queue: no longer in flight either way.
        self.in_flight -= 1;
        done.map(|(buf, _)| buf)
    }
}
