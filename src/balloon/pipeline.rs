// SPDX-License-Identifier: GPL-2.0

//! PFN buffers in flight on the inflate or the deflate queue (C's
//! `tell_host()`, with up to `depth` buffers on the queue instead of one:
//! virtio allows any number before a notification).
//!
//! Every wait is bounded: a buffer the host does not return in time, or a
//! queue that breaks, marks the host unresponsive ([`Host::unresponsive`])
//! and stops the round; the buffer stays on its queue with the pages it
//! names (`MUST_TELL_HOST`).

use super::{
    buffers::{
        DeflateBuffer,
        InflateBuffer, //
    },
    host::Host,
    perf::{
        Counter,
        Stopwatch, //
    },
    round::Stop,
    vq,
};
use crate::virtio::{
    self,
    Buffer,
    Rejected,
    Virtqueue, //
};
use core::num::NonZeroUsize;
use kernel::{
    device::Bound,
    prelude::*,
    time::Delta, //
};

/// A buffer type of a PFN queue, and so its queue: an inflate buffer goes
/// only on the inflate queue, a deflate buffer only on the deflate queue.
pub(super) trait PfnQueue: Buffer {
    /// The queue's index.
    const INDEX: usize;
    /// The queue's name, for log lines.
    const NAME: &'static str;
    /// What waiting for the host on this queue counts in (page migration's
    /// round trips included).
    const WAIT: Counter;
}

impl PfnQueue for InflateBuffer {
    const INDEX: usize = vq::INFLATE;
    const NAME: &'static str = "inflate";
    const WAIT: Counter = Counter::InflateWaitNs;
}

impl PfnQueue for DeflateBuffer {
    const INDEX: usize = vq::DEFLATE;
    const NAME: &'static str = "deflate";
    const WAIT: Counter = Counter::DeflateWaitNs;
}

/// Up to `depth` buffers in flight on `B`'s queue.
pub(super) struct Pipeline<'a, B: PfnQueue> {
    dev: &'a virtio::Device<Bound>,
    host: &'a Host,
    vq: Virtqueue<'a, B>,
    depth: NonZeroUsize,
    wait: Delta,
}

impl<'a, B: PfnQueue> Pipeline<'a, B> {
    /// Up to `depth` buffers on `B`'s queue of `dev`, each of which the
    /// host must return within `wait`; [`ENODEV`] if the queue is gone.
    pub(super) fn new(
        dev: &'a virtio::Device<Bound>,
        host: &'a Host,
        depth: NonZeroUsize,
        wait: Delta,
    ) -> Result<Self> {
        Ok(Self {
            dev,
            host,
            vq: dev.vq::<B>(B::INDEX)?,
            depth,
            wait,
        })
    }

    /// Whether another buffer may be sent now.
    pub(super) fn has_room(&self) -> bool {
        self.vq.in_flight() < self.depth.get()
    }

    /// Buffers sent and not yet returned.
    pub(super) fn in_flight(&self) -> usize {
        self.vq.in_flight()
    }

    /// Queues the first `bytes` of `buf` without notifying the host.
    pub(super) fn queue(&mut self, buf: B, bytes: usize) -> Result<(), Rejected<B>> {
        self.vq.add_outbuf(buf, bytes)
    }

    /// Notifies the host of queued buffers, if it wants to be notified.
    pub(super) fn kick(&mut self) {
        if self.vq.kick() {
            self.host.perf().add(Counter::Notifications, 1);
        }
    }

    /// Sleeps until the host returns a buffer, for at most the pipeline's
    /// wait; if it does not, the host is marked unresponsive.
    pub(super) fn complete(&mut self) -> Result<B, Stop> {
        let sw = Stopwatch::start();
        let done = self.vq.wait_buf(self.wait);
        sw.stop(self.host.perf(), B::WAIT);
        done.map(|used| used.buf).map_err(|e| {
            self.host.unresponsive(self.dev, B::NAME, e, self.wait);
            Stop::Host
        })
    }

    /// Waits for every buffer in flight, handing each to `returned`, until
    /// one does not come back in time.
    pub(super) fn drain(&mut self, mut returned: impl FnMut(B)) -> Result<(), Stop> {
        while self.in_flight() > 0 {
            returned(self.complete()?);
        }
        Ok(())
    }
}
