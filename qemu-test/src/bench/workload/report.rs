//! The workload mode's report: throughput relative to the undisturbed
//! phases, the table, and the plot (`workload.png`).

use super::{PhaseResult, PHASE, TARGETS};
use crate::bench::report::name;
use crate::bench::BenchOpts;
use crate::rig::units::MIB;
use crate::Driver;
use anyhow::Result;
use std::fmt::Write as _;
use std::path::Path;

/// The undisturbed rates of `rep`, per kind: the geometric mean over the
/// drivers' undisturbed phases of that repetition.
fn baseline(results: &[PhaseResult], rep: usize) -> Option<[f64; 3]> {
    let und: Vec<[f64; 3]> = results
        .iter()
        .filter(|r| r.rep == rep && !r.moving)
        .map(PhaseResult::rates)
        .collect();
    if und.is_empty() {
        return None;
    }
    let n = und.len() as f64;
    Some([0, 1, 2].map(|k| (und.iter().map(|r| r[k].ln()).sum::<f64>() / n).exp()))
}

/// Rates relative to `base` (geometric mean over the kinds).
fn score(rates: &[f64; 3], base: &[f64; 3]) -> f64 {
    let logs: f64 = rates.iter().zip(base).map(|(r, b)| (r / b).ln()).sum();
    (logs / 3.0).exp()
}

/// The phase of `driver` in `rep`, undisturbed or moving.
fn phase_of(
    results: &[PhaseResult],
    rep: usize,
    driver: Driver,
    moving: bool,
) -> Option<&PhaseResult> {
    results
        .iter()
        .find(|r| r.rep == rep && r.driver == driver && r.moving == moving)
}

/// The phases of `driver`, moving or undisturbed, of every repetition.
fn phases(results: &[PhaseResult], driver: Driver, moving: bool) -> Vec<&PhaseResult> {
    results
        .iter()
        .filter(|r| r.driver == driver && r.moving == moving)
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `median (min..max)`, or `-` without values.
fn summary(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.3} ({lo:.2}..{hi:.2})", median(v.to_vec()))
}

/// CPUs the host's `/proc/stat` counts (its `cpuN` lines), 0 if unreadable.
fn host_cpus() -> usize {
    std::fs::read_to_string("/proc/stat").map_or(0, |s| {
        s.lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count()
    })
}

/// The report: per driver and phase, medians over the repetitions.
pub(super) fn report(
    opts: &BenchOpts,
    results: &[PhaseResult],
    accel: &str,
    host_thp: &str,
) -> Result<String> {
    let mut t = String::new();
    writeln!(
        t,
        "workload bench: {} MiB guest ({} state, {} backing, host THP {host_thp}), accel {accel}, \
         {} repetitions (driver order alternating); {} s of workload per phase; moving: \
         {TARGETS} targets, balloons of 10 to 60 % of RAM",
        opts.guest_mib,
        opts.guest_state.name(),
        opts.backing.name(),
        opts.reps,
        PHASE.as_secs()
    )?;
    writeln!(
        t,
        "throughput: geometric mean of the mem/fork/read rates relative to the same \
         repetition's undisturbed rates (both drivers'); median (min..max) over repetitions\n"
    )?;
    let per_rep =
        |f: &dyn Fn(usize) -> Option<f64>| -> Vec<f64> { (0..opts.reps).filter_map(f).collect() };
    let score_of = |rep: usize, driver: Driver, moving: bool| -> Option<f64> {
        Some(score(
            &phase_of(results, rep, driver, moving)?.rates(),
            &baseline(results, rep)?,
        ))
    };
    for &driver in &opts.drivers {
        let und = per_rep(&|rep| score_of(rep, driver, false));
        let mov = per_rep(&|rep| score_of(rep, driver, true));
        let own =
            per_rep(&|rep| Some(score_of(rep, driver, true)? / score_of(rep, driver, false)?));
        writeln!(
            t,
            "{:>4}: undisturbed {}, moving {}, moving/own undisturbed {}",
            name(driver),
            summary(&und),
            summary(&mov),
            summary(&own)
        )?;
    }
    let ratio =
        per_rep(&|rep| Some(score_of(rep, Driver::Rust, true)? / score_of(rep, Driver::C, true)?));
    writeln!(t, "ours/C while the balloon moves: {}\n", summary(&ratio))?;
    writeln!(
        t,
        "{:>4} {:<11} {:>9} {:>9} {:>9} {:>10} {:>10} {:>7} {:>10} {:>9} {:>9} {:>9} {:>10} \
         {:>12}",
        "",
        "phase",
        "mem MiB/s",
        "forks/s",
        "read MiB/s",
        "PSI some",
        "PSI full",
        "kernel",
        "allocstall",
        "compact",
        "pgscan_d",
        "THP huge%",
        "churn MiB",
        "settle/miss"
    )?;
    for &driver in &opts.drivers {
        for moving in [false, true] {
            let rs = phases(results, driver, moving);
            let med = |f: &dyn Fn(&PhaseResult) -> f64| median(rs.iter().map(|r| f(r)).collect());
            // A target not reached before the next one counts as the whole step.
            let step = (PHASE / TARGETS as u32).as_secs_f64();
            let settle: Vec<f64> = rs
                .iter()
                .flat_map(|r| r.settle.iter().map(|s| s.unwrap_or(step)))
                .collect();
            let missed = med(&|r| r.settle.iter().filter(|s| s.is_none()).count() as f64);
            writeln!(
                t,
                "{:>4} {:<11} {:>9.1} {:>9.1} {:>9.1} {:>8.0}ms {:>8.0}ms {:>6.1}% {:>10.0} {:>9.0} \
                 {:>9.0} {:>8.1}% {:>10.0} {:>12}",
                name(driver),
                if moving { "moving" } else { "undisturbed" },
                med(&|r| r.rates()[0]),
                med(&|r| r.rates()[1]),
                med(&|r| r.rates()[2]),
                med(&|r| r.psi_some_ms),
                med(&|r| r.psi_full_ms),
                med(&|r| r.system_share * 100.0),
                med(&|r| r.vmstat["allocstall_"] as f64),
                med(&|r| r.vmstat["compact_stall"] as f64),
                med(&|r| r.vmstat["pgscan_direct"] as f64),
                med(&|r| {
                    let (ok, fell) = (r.vmstat["thp_fault_alloc"], r.vmstat["thp_fault_fallback"]);
                    // No huge page fault at all: not a number, not 0 %.
                    100.0 * ok as f64 / (ok + fell) as f64
                }),
                med(&|r| {
                    (r.vmstat["balloon_inflate"] + r.vmstat["balloon_deflate"]) as f64
                        * r.page as f64
                        / MIB as f64
                }),
                if moving {
                    format!("{:.2}s/{missed:.0}", median(settle))
                } else {
                    "-".into()
                }
            )?;
        }
    }
    writeln!(
        t,
        "\nwhere the CPU went, seconds in the {} s phase:\n{:>4} {:<11} {:>10} {:>10} {:>11} {:>11} \
         {:>11}",
        PHASE.as_secs(),
        "",
        "phase",
        "guest idle",
        "guest kwkr",
        "host vCPUs",
        "host QEMU main",
        "host other"
    )?;
    for &driver in &opts.drivers {
        for moving in [false, true] {
            let rs = phases(results, driver, moving);
            let med = |f: &dyn Fn(&PhaseResult) -> f64| median(rs.iter().map(|r| f(r)).collect());
            writeln!(
                t,
                "{:>4} {:<11} {:>9.1}% {:>10.2} {:>11.1} {:>14.2} {:>11.2}",
                name(driver),
                if moving { "moving" } else { "undisturbed" },
                med(&|r| r.idle_share * 100.0),
                med(&|r| r.kworker_secs),
                med(&|r| r.host_vcpu_secs),
                med(&|r| r.host_main_secs),
                med(&|r| r.host_other_secs)
            )?;
        }
    }
    writeln!(
        t,
        "\nmedians over repetitions. kernel: system+irq+softirq share of the guest's CPU time \
         (the balloon's work is in it); THP huge%: the share of the guest's anonymous huge \
         page faults that got a huge page, thp_fault_alloc / (thp_fault_alloc + \
         thp_fault_fallback), NaN without any; churn: memory the balloon took and gave back \
         (balloon_inflate + balloon_deflate pages) in the phase; settle: median time for \
         actual to reach a target (within a page; polled every 50 ms; a target not reached \
         before the next one counts as the whole {:.0} s step) / targets not reached, of \
         {TARGETS}. guest idle: idle+iowait share of the guest's CPU time; guest kwkr: CPU \
         of the guest's kworker threads, where both drivers' balloon work runs (with the \
         guest's other deferred work); host: CPU of QEMU's vCPU threads (the guest's work, \
         and the host faults it takes), of QEMU's main thread (where QEMU handles the \
         balloon's virtqueues: an madvise per page), and all other host CPU, any process (QEMU's \
         other threads, the host kernel's khugepaged and kcompactd, the bench itself); {} \
         host CPUs",
        (PHASE / TARGETS as u32).as_secs_f64(),
        host_cpus()
    )?;
    Ok(t)
}

/// Throughput per second (relative to the first repetition's undisturbed
/// rates) and
/// the balloon size in the moving phase of the first repetition, C in red,
/// ours in blue.
pub(super) fn plot(results: &[PhaseResult], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let Some(per_sec_base) = baseline(results, 0) else {
        return Ok(());
    };
    let root = BitMapBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(450);
    let secs = PHASE.as_secs_f64();
    let mut chart = ChartBuilder::on(&top)
        .caption(
            "workload throughput while the balloon moves (rep 0)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..secs, 0.0..2.0)?;
    chart
        .configure_mesh()
        .y_desc("throughput / undisturbed")
        .draw()?;
    let mut sizes = ChartBuilder::on(&bottom)
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(
            0.0..secs,
            0.0..(results
                .iter()
                .flat_map(|r| r.balloon.iter().map(|b| b.1))
                .max()
                .unwrap_or(MIB) as f64
                / MIB as f64)
                * 1.1,
        )?;
    sizes
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("balloon (MiB)")
        .draw()?;
    for r in results.iter().filter(|r| r.rep == 0 && r.moving) {
        let color = match r.driver {
            Driver::C => RED,
            Driver::Rust => BLUE,
        };
        let pts = r.per_second.iter().enumerate().map(|(s, c)| {
            let logs: f64 = c
                .iter()
                .zip(&per_sec_base)
                .map(|(&x, &b)| (x.max(1) as f64 / b).ln())
                .sum();
            (s as f64 + 0.5, (logs / 3.0).exp())
        });
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(format!("{} driver", name(r.driver)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        sizes.draw_series(LineSeries::new(
            r.balloon.iter().map(|&(t, b)| (t, b as f64 / MIB as f64)),
            color.stroke_width(2),
        ))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}
