//! Sequences of targets: `actual` follows each one, also when the host
//! changes its mind quickly, and ours gives the C driver's `actual` and
//! MemTotal for the same sequence.

use super::{balloon_to, boot, unix_now, within, BALLOON_TIMEOUT, STATS_INTERVAL, STATS_TIMEOUT};
use crate::rig::units::{format_bytes, MIB, PAGE_SIZE};
use crate::rig::vm::Vm;
use crate::{Driver, Tier};
use anyhow::{ensure, Context, Result};
use std::time::Duration;

/// Balloon sizes, as fractions of RAM in percent, that
/// [`several_targets`] and [`same_targets_as_c`] walk through
/// ([`target_sequence`] caps them for the tier).
pub const TARGET_SEQUENCE: [u64; 6] = [10, 50, 30, 75, 5, 0];

/// The largest balloon the debug tier's guest can give, in percent of its
/// RAM: KASAN's shadow and the debug structures leave it about 650 MiB of
/// 1 GiB, so 75 % cannot be reached by any driver.
const DEBUG_TIER_MAX_PERCENT: u64 = 50;

/// [`TARGET_SEQUENCE`] for the current tier.
pub fn target_sequence() -> Result<Vec<u64>> {
    let max = match Tier::current()? {
        Tier::Base => 100,
        Tier::Debug => DEBUG_TIER_MAX_PERCENT,
    };
    Ok(TARGET_SEQUENCE.iter().map(|&p| p.min(max)).collect())
}

/// Target guest memory for a balloon of `percent` % of `ram`, in whole MiB.
pub fn target_for(ram: u64, percent: u64) -> u64 {
    ram - (ram * percent / 100) / MIB * MIB
}

/// Several targets in a row, inflating and deflating: `actual` reaches
/// each one exactly.
pub fn several_targets(driver: Driver) -> Result<()> {
    let mut vm = boot(driver, "several-targets")?;
    let ram = vm.ram_bytes();
    for p in target_sequence()? {
        balloon_to(&mut vm, target_for(ram, p))
            .with_context(|| format!("balloon of {p} % of RAM"))?;
    }
    vm.shutdown()
}

/// A host that changes its mind quickly: many targets in a burst, while
/// statistics are requested every second, end at the last target.
pub fn flapping_targets(driver: Driver) -> Result<()> {
    let mut vm = boot(driver, "flapping")?;
    let ram = vm.ram_bytes();
    vm.enable_stats_polling(STATS_INTERVAL)?;
    let mut last = ram;
    for i in 0..40u64 {
        last = target_for(ram, (i * 37) % 60);
        vm.set_balloon_target_bytes(last)?;
        std::thread::sleep(Duration::from_millis(25));
    }
    let actual = vm.wait_balloon_actual(last, BALLOON_TIMEOUT)?;
    vm.note(&format!(
        "after 40 target changes: actual {}",
        format_bytes(actual)
    ));
    // Stays there, and statistics still flow.
    let s = vm.wait_stats_after(unix_now(), STATS_TIMEOUT)?;
    s.require("stat-free-memory")?;
    balloon_to(&mut vm, ram)?;
    vm.shutdown()
}

/// A balloon that is not a whole number of guest pages, 64 MiB and five
/// balloon (4 KiB) pages: every driver rounds it up to whole guest pages,
/// as C's `towards_target()` does (`ALIGN(num_pages,
/// VIRTIO_BALLOON_PAGES_PER_PAGE)`), and stays there. `actual` is the
/// rounded size exactly, MemTotal drops by it exactly, the kernel counts
/// it in guest pages (`nr_balloon_pages`), and nothing flaps between one
/// guest page too many and one too few. With 4 KiB guest pages nothing
/// needs rounding, and the test checks the same exactness.
pub fn unaligned_target(driver: Driver) -> Result<()> {
    let mut vm = boot(driver, "unaligned-target")?;
    let ram = vm.ram_bytes();
    let page = vm.guest_page_size()?;
    let total0 = vm.meminfo_field("MemTotal")?;
    let balloon = 64 * MIB + 5 * PAGE_SIZE;
    let expected = balloon.div_ceil(page) * page;
    vm.note(&format!(
        "guest pages of {}: a balloon of {} rounds up to {}",
        format_bytes(page),
        format_bytes(balloon),
        format_bytes(expected)
    ));
    vm.set_balloon_target_bytes(ram - balloon)?;
    vm.wait_balloon_actual(ram - expected, BALLOON_TIMEOUT)?;
    // Sampled for three seconds: exactly the rounded size, every time.
    let mut seen = Vec::new();
    for _ in 0..15 {
        seen.push(vm.query_balloon_actual()?);
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(
        seen.iter().all(|&a| a == ram - expected),
        "actual should stay at {} (RAM − {}), saw {:?}",
        format_bytes(ram - expected),
        format_bytes(expected),
        seen.iter().map(|&a| format_bytes(a)).collect::<Vec<_>>()
    );
    let total = vm.meminfo_field("MemTotal")?;
    ensure!(
        total0 - total == expected,
        "MemTotal dropped by {}, not by the rounded balloon {}",
        format_bytes(total0 - total),
        format_bytes(expected)
    );
    if let Some(n) = vm.vmstat_field("nr_balloon_pages")? {
        ensure!(
            n * page == expected,
            "nr_balloon_pages = {n} guest pages of {}, not {}",
            format_bytes(page),
            format_bytes(expected)
        );
    }
    balloon_to(&mut vm, ram)?;
    ensure!(
        vm.meminfo_field("MemTotal")? == total0,
        "MemTotal did not come back after deflating"
    );
    vm.shutdown()
}

/// One step of [`same_targets_as_c`]: `actual` and MemTotal after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Balloon size requested, in % of RAM.
    pub percent: u64,
    /// QEMU's `actual`, bytes.
    pub actual: u64,
    /// Guest MemTotal, bytes.
    pub memtotal: u64,
}

/// Headroom below the guest's available memory that [`same_targets_as_c`]
/// leaves: the largest balloon of the walk leaves at least this much
/// available, above our driver's reserve (2 % of RAM, at least 16 MiB),
/// where ours holds and C goes on.
const SIDE_BY_SIDE_HEADROOM: u64 = 96 * MIB;

/// [`target_sequence`], capped to balloons that leave the guest
/// [`SIDE_BY_SIDE_HEADROOM`] of what it has available now: a distribution
/// kernel (Debian's arm64-16k) keeps more memory for itself than the
/// project's, and there the C driver would inflate into the memory our
/// driver keeps available, so the two would not be compared on equal
/// terms.
fn reachable_sequence(vm: &mut Vm) -> Result<Vec<u64>> {
    let ram = vm.ram_bytes();
    let avail = vm.meminfo_field("MemAvailable")?;
    let cap = avail.saturating_sub(SIDE_BY_SIDE_HEADROOM) * 100 / ram;
    let seq: Vec<u64> = target_sequence()?.iter().map(|&p| p.min(cap)).collect();
    vm.note(&format!(
        "MemAvailable {} of {}: balloons of at most {cap} % ({seq:?})",
        format_bytes(avail),
        format_bytes(ram)
    ));
    Ok(seq)
}

fn walk_targets(vm: &mut Vm, driver: Driver, sequence: &[u64]) -> Result<Vec<Step>> {
    let ram = vm.ram_bytes();
    let mut steps = Vec::new();
    for &p in sequence {
        balloon_to(vm, target_for(ram, p)).with_context(|| format!("{driver:?}: {p} %"))?;
        // MemTotal follows the balloon list immediately.
        steps.push(Step {
            percent: p,
            actual: vm.query_balloon_actual()?,
            memtotal: vm.meminfo_field("MemTotal")?,
        });
    }
    Ok(steps)
}

/// Side by side in one boot: the same target sequence on the C driver, then
/// (after `rmmod`) on ours, gives the same `actual` values and MemTotal
/// within 1 %.
/// The balloons are those of [`target_sequence`] that leave the guest
/// [`SIDE_BY_SIDE_HEADROOM`] available ([`reachable_sequence`]).
pub fn same_targets_as_c() -> Result<()> {
    let mut vm = boot(Driver::C, "side-by-side")?;
    let sequence = reachable_sequence(&mut vm)?;
    let c = walk_targets(&mut vm, Driver::C, &sequence)?;
    vm.run_ok(&format!("rmmod {}", Driver::C.module_name()))?;
    vm.run_ok(&format!("modprobe {}", Driver::Rust.module_name()))?;
    ensure!(
        vm.balloon_driver()?.as_deref() == Some(Driver::Rust.module_name()),
        "the Rust driver did not bind after the C one was removed"
    );
    let rs = walk_targets(&mut vm, Driver::Rust, &sequence)?;
    for (c, r) in c.iter().zip(&rs) {
        vm.note(&format!(
            "{:>3} %: actual C {} / ours {}; MemTotal C {} / ours {}",
            c.percent,
            format_bytes(c.actual),
            format_bytes(r.actual),
            format_bytes(c.memtotal),
            format_bytes(r.memtotal)
        ));
        ensure!(
            c.actual == r.actual,
            "{} %: actual differs: C {}, ours {}",
            c.percent,
            c.actual,
            r.actual
        );
        ensure!(
            within(r.memtotal as i64, c.memtotal as i64, 0.01),
            "{} %: MemTotal differs by more than 1 %: C {}, ours {}",
            c.percent,
            format_bytes(c.memtotal),
            format_bytes(r.memtotal)
        );
    }
    vm.shutdown()
}
