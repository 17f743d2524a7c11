// SPDX-License-Identifier: GPL-2.0

//! Keeping the system awake while the balloon adjusts or reports statistics
//! (C's `start_wakeup_event()`, `process_wakeup_event()`,
//! `finish_wakeup_event()`).
//!
//! The balloon cannot wake the system itself, but a host request that
//! arrives while the system suspends must still be served: each pending
//! request sets a signal bit, and the device's wakeup source stays active
//! until the work that serves the last one has finished.

use crate::{
    compat::{
        new_spinlock_irq,
        SpinLockIrq, //
    },
    virtio,
};
use kernel::prelude::*;

/// A reason to stay awake.
#[derive(Clone, Copy)]
pub(super) enum WakeupSignal {
    /// The balloon size is being adjusted.
    Adjust = 1 << 0,
    /// A statistics request is being served.
    Stats = 1 << 1,
}

struct State {
    processing: bool,
    mask: u32,
}

/// The wakeup state of one device.
#[pin_data]
pub(super) struct Wakeup {
    #[pin]
    state: SpinLockIrq<State>,
}

impl Wakeup {
    pub(super) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            state <- new_spinlock_irq!(State {
                processing: false,
                mask: 0,
            }),
        })
    }

    /// A request arrived: stay awake until it is served.
    pub(super) fn start(
        &self,
        dev: &virtio::Device<impl kernel::device::DeviceContext>,
        signal: WakeupSignal,
    ) {
        let mut s = self.state.lock();
        s.mask |= signal as u32;
        if !s.processing {
            s.processing = true;
            dev.pm_stay_awake();
        }
    }

    /// The work serving `signal` has started; a new request may set it again.
    pub(super) fn process(&self, signal: WakeupSignal) {
        self.state.lock().mask &= !(signal as u32);
    }

    /// The work is done: relax if no request is pending.
    pub(super) fn finish(&self, dev: &virtio::Device<impl kernel::device::DeviceContext>) {
        let mut s = self.state.lock();
        if s.mask == 0 && s.processing {
            s.processing = false;
            dev.pm_relax();
        }
    }

    /// The work was cancelled before it served its requests: relax anyway
    /// (C never relaxes then, and the wakeup source stays active).
    pub(super) fn cancel(&self, dev: &virtio::Device<impl kernel::device::DeviceContext>) {
        let mut s = self.state.lock();
        s.mask = 0;
        if s.processing {
            s.processing = false;
            dev.pm_relax();
        }
    }
}
