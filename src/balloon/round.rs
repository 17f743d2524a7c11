// SPDX-License-Identifier: GPL-2.0

//! One round of the balloon: what it works with ([`RoundContext`], the
//! parts of C's `struct virtio_balloon *vb` that `fill_balloon()` and
//! `leak_balloon()` use) and what it did ([`Round`], [`Stop`]).
//!
//! The size work ([`super::device`]) builds the context once per round;
//! the OOM notifier and the removal build it with their own patience for
//! the host. Inflate ([`super::inflate`]) and deflate ([`super::deflate`])
//! both take the context, the balloon lock and how many balloon pages to
//! move; both end, if they told the host anything, by writing `actual`
//! under that lock.

use super::{
    host::Host,
    lists::Lists,
    pipeline::{
        PfnQueue,
        Pipeline, //
    },
};
use crate::virtio;
use core::num::NonZeroUsize;
use kernel::{
    device::Bound,
    prelude::*,
    time::Delta, //
};

/// What one round of inflating or deflating works with.
#[derive(Clone, Copy)]
pub(super) struct RoundContext<'a> {
    /// The device, bound for the round.
    pub(super) dev: &'a virtio::Device<Bound>,
    /// Its configuration, queues and the balloon lock.
    pub(super) host: &'a Host,
    /// The balloon's pages.
    pub(super) lists: &'a Lists,
    /// How long the host may take to return a buffer: `host_timeout_ms`,
    /// or less on the OOM path.
    pub(super) wait: Delta,
}

impl<'a> RoundContext<'a> {
    /// Up to `depth` buffers in flight on `B`'s queue, each waited for at
    /// most [`RoundContext::wait`]. A queue that is gone is logged and
    /// stops the round.
    pub(super) fn pipeline<B: PfnQueue>(
        &self,
        depth: NonZeroUsize,
    ) -> Result<Pipeline<'a, B>, Stop> {
        Pipeline::new(self.dev, self.host, depth, self.wait).map_err(|e| {
            dev_warn!(
                self.dev.as_ref(),
                "{} queue unavailable: {:?}\n",
                B::NAME,
                e
            );
            Stop::Host
        })
    }
}

/// Why a round of the balloon stopped before its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stop {
    /// Inflating further would cut into the guest's reserve.
    Hold,
    /// A single-page allocation failed, even after reclaim (C's "Out of
    /// puff").
    OutOfPuff,
    /// The host did not take or return a buffer.
    Host,
}

/// What a round of inflating or deflating did.
#[derive(Clone, Copy, Debug)]
pub(super) struct Round {
    /// Balloon pages the host was told about.
    pub(super) moved: u32,
    /// Balloon pages the host acknowledged (deflate: freed to the guest).
    pub(super) acked: u32,
    /// Why it stopped short, if it did.
    pub(super) stop: Option<Stop>,
}

impl Round {
    /// A round that moved nothing and did not stop short.
    pub(super) const NOTHING: Round = Round {
        moved: 0,
        acked: 0,
        stop: None,
    };

    /// A round that moved nothing because of `stop`.
    pub(super) const fn stopped(stop: Stop) -> Round {
        Round {
            stop: Some(stop),
            ..Round::NOTHING
        }
    }
}
