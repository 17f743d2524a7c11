//! The benchmark's report: the table of min/median/max and the ratio
//! ours/C, where the time went, each run's starting conditions,
//! `results.json` and the plot of the balloon size over time.

use super::plot::plot;
use super::{stats, BenchOpts, GuestMem, GuestState, Outcome, Phase, Run, COMPACT_COUNTERS};
use crate::rig::hostmem::QemuMem;
use crate::{Backing, Driver, MIB};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::Path;

/// One line (two with compaction) on stderr per run, as the runs go.
pub fn progress(r: &Run) {
    eprintln!(
        "bench: {:>4} rep {}: inflate {:.3} s, deflate {:.3} s, guest CPU {:.2} s, \
     RSS returned {:.3}/MiB, pool {:.3}/MiB, host THP {:.1}% -> {:.1}% kept ({:.1}% of backed), \
     guest 4K free {} 2M free {} -> {} (prepared in {:.1} s)",
        name(r.driver),
        r.rep,
        r.inflate.secs,
        r.deflate.secs,
        r.inflate.guest_cpu,
        r.rss_returned_per_mib(),
        r.pool_returned_per_mib(),
        100.0 * r.host_thp_before(),
        100.0 * r.host_thp_kept(),
        100.0 * r.host_thp_backed(),
        r.guest_before.free_single_pages(),
        r.guest_before.free_2m_blocks(),
        r.guest_after.free_2m_blocks(),
        r.prepare_secs,
    );
    if let Some(c) = &r.compaction {
        eprintln!(
            "bench: {:>4} rep {}: compaction {:.1} s: host RAM returned {:.3} -> {:.3}/MiB, \
         host THP {} -> {} MiB; guest {}",
            name(r.driver),
            r.rep,
            c.secs,
            r.ram_returned_per_mib(),
            r.ram_returned_compacted_per_mib(),
            r.host[1].ram_anon_huge / MIB,
            c.host.ram_anon_huge / MIB,
            COMPACT_COUNTERS
                .iter()
                .map(|k| format!(
                    "{k} +{}",
                    c.counter(k).map_or("-".into(), |v| v.to_string())
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// Writes the report of `outcome` (run with `opts`) into `out`:
/// `report.txt` (also printed), `results.json` and `balloon.png`.
pub fn write(opts: &BenchOpts, outcome: &Outcome, out: &Path) -> Result<()> {
    let runs = &outcome.runs;
    let accel = outcome.accel.to_string();
    let arch = crate::rig::config::GuestImage::from_env()?.arch;
    let qemu = format!("{} (guest {arch})", qemu_version(arch)?);
    let mut report = header(opts, outcome, &accel, &qemu);
    let summary = table(&mut report, opts, runs)?;
    let problems = block_problems(runs, opts.reporting());
    if problems.is_empty() {
        if per_driver(runs, Driver::Rust).next().is_some() {
            writeln!(
                report,
                "\nRust runs used whole blocks (inflate_blocks > 0{})",
                if opts.reporting() {
                    ", and reported them"
                } else {
                    ""
                }
            )?;
        }
    } else {
        for p in &problems {
            eprintln!("bench: WARNING: {p}");
            writeln!(report, "\nWARNING: {p}")?;
        }
    }
    writeln!(report, "\n{LEGEND}")?;
    breakdown(&mut report, runs)?;
    starts(&mut report, opts, runs)?;
    let doc = results_json(opts, outcome, &accel, &qemu, summary, &problems);
    let json_path = out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)?)?;
    let png_path = out.join("balloon.png");
    plot(
        runs,
        &png_path,
        &format!(
            "Inflate and deflate {} MiB, {} MiB guest, {} backing, {accel}: C (red) vs Rust (blue)",
            opts.balloon_mib,
            opts.guest_mib,
            opts.backing.name()
        ),
    )
    .context("drawing the plot")?;
    let report_path = out.join("report.txt");
    std::fs::write(&report_path, &report)?;
    print!("{report}");
    println!(
        "\nresults: {}\nreport:  {}\nplot:    {}",
        json_path.display(),
        report_path.display(),
        png_path.display()
    );
    Ok(())
}

/// The `--version` line of `arch`'s QEMU.
fn qemu_version(arch: crate::rig::arch::Arch) -> Result<String> {
    Ok(String::from_utf8_lossy(
        &std::process::Command::new(crate::rig::qemu::qemu_binary(arch))
            .arg("--version")
            .output()?
            .stdout,
    )
    .lines()
    .next()
    .unwrap_or("")
    .to_string())
}

/// The report's first lines: what ran, and the table's heading.
fn header(opts: &BenchOpts, outcome: &Outcome, accel: &str, qemu: &str) -> String {
    let mut report = String::new();
    let _ = writeln!(
        report,
        "\n{} MiB balloon, {} MiB guest ({}), {} backing (host THP [{}]{}), free page reporting \
         {}, {} runs per driver, accelerator {accel}, {qemu}\n",
        opts.balloon_mib,
        opts.guest_mib,
        if opts.guest_state == GuestState::Fragmented {
            format!("fragmented, 1 free page in {}", opts.frag_stride)
        } else {
            opts.guest_state.name().to_string()
        },
        opts.backing.name(),
        outcome.host_thp,
        if outcome.huge_pages_added > 0 {
            format!(
                ", {} hugetlb pages added to the pool for the run",
                outcome.huge_pages_added
            )
        } else {
            String::new()
        },
        if opts.reporting() { "on" } else { "off" },
        opts.reps
    );
    let _ = writeln!(
        report,
        "{:<24} {:>27} {:>27} {:>8}",
        "metric", "C min / median / max", "Rust min / median / max", "Rust/C"
    );
    report
}

/// The table: min, median and max of each metric for each driver, and the
/// ratio of the medians; returns the same as JSON.
fn table(
    report: &mut String,
    opts: &BenchOpts,
    runs: &[Run],
) -> Result<serde_json::Map<String, Value>> {
    let mut summary = serde_json::Map::new();
    for (label, f) in metrics(opts.backing, opts.compact) {
        let c = stats(per_driver(runs, Driver::C).map(f).collect());
        let r = stats(per_driver(runs, Driver::Rust).map(f).collect());
        let ratio = r.1 / c.1;
        writeln!(
            *report,
            "{label:<24} {:>8} {:>8} {:>8}  {:>8} {:>8} {:>8} {:>8}",
            num(c.0),
            num(c.1),
            num(c.2),
            num(r.0),
            num(r.1),
            num(r.2),
            num(ratio)
        )?;
        let finite = |x: f64| if x.is_finite() { json!(x) } else { Value::Null };
        summary.insert(
            label.to_string(),
            json!({
                "c": [finite(c.0), finite(c.1), finite(c.2)],
                "rust": [finite(r.0), finite(r.1), finite(r.2)],
                "ratio_median": finite(ratio),
            }),
        );
    }
    Ok(summary)
}

/// Where the time went: host CPU of QEMU's threads and our driver's
/// counters, medians per phase and driver.
fn breakdown(report: &mut String, runs: &[Run]) -> Result<()> {
    // Where the time goes.
    writeln!(
        *report,
        "Breakdown (medians): host CPU of QEMU's non-vCPU threads; our driver's counters"
    )?;
    for (phase, get) in [
        ("inflate", (|r: &Run| &r.inflate) as fn(&Run) -> &Phase),
        ("deflate", |r: &Run| &r.deflate),
    ] {
        for d in [Driver::C, Driver::Rust] {
            let ps: Vec<&Phase> = per_driver(runs, d).map(get).collect();
            if ps.is_empty() {
                continue;
            }
            let med = |f: &dyn Fn(&Phase) -> f64| stats(ps.iter().map(|p| f(p)).collect()).1;
            let mut threads: Vec<String> = ps[0]
                .qemu_cpu
                .keys()
                .map(|k| {
                    format!(
                        "{k} {:.3}",
                        med(&|p: &Phase| p.qemu_cpu.get(k).copied().unwrap_or(0.0))
                    )
                })
                .collect();
            threads.sort();
            writeln!(
                *report,
                "  {phase} {:<4}: wall {:.3} s, guest CPU {:.3} s, QEMU threads [{}]",
                name(d),
                med(&|p: &Phase| p.secs),
                med(&|p: &Phase| p.guest_cpu),
                threads.join(", ")
            )?;
            if d == Driver::Rust {
                let keys: Vec<String> = ps[0].counters.keys().cloned().collect();
                let counters: Vec<String> = keys
                    .iter()
                    .map(|k| {
                        format!(
                            "{k} {}",
                            med(&|p: &Phase| p.counters.get(k).copied().unwrap_or(0) as f64)
                        )
                    })
                    .collect();
                writeln!(*report, "           driver: {}", counters.join(", "))?;
            }
        }
    }

    Ok(())
}

/// Each run's starting conditions: the guest's free memory by order, the
/// host's huge pages.
fn starts(report: &mut String, opts: &BenchOpts, runs: &[Run]) -> Result<()> {
    // The starting conditions of each run.
    writeln!(
        *report,
        "\nEach run's start: guest /proc/buddyinfo before the inflate (free blocks of order \
         0..10 per zone){}",
        if opts.backing == Backing::Anonymous {
            "; host THPs collapsed again (process_madvise MADV_COLLAPSE)"
        } else {
            ""
        }
    )?;
    for r in runs {
        write!(
            *report,
            "  {} rep {}: prepared in {:.1} s, guest MemFree {} MiB, QEMU RSS {} MiB, \
             guest RAM in host THP {} MiB",
            name(r.driver),
            r.rep,
            r.prepare_secs,
            r.guest_before.mem_free / MIB,
            r.host[0].rss / MIB,
            r.host[0].ram_anon_huge / MIB
        )?;
        if let Some(c) = &r.collapse {
            write!(
                *report,
                " (collapsed from {} MiB in {:.2} s; 2 MiB ranges: {} huge, {} unpopulated, \
                 {} failed)",
                c.anon_huge_before / MIB,
                c.secs,
                c.ranges.huge,
                c.ranges.unpopulated,
                c.ranges.failed
            )?;
        }
        writeln!(*report)?;
        writeln!(
            *report,
            "    at rest, before preparing ({} pages on per-CPU lists):",
            r.guest_rest.pcp_pages
        )?;
        for l in r.guest_rest.buddyinfo.lines() {
            writeln!(*report, "      {}", l.trim_end())?;
        }
        writeln!(
            *report,
            "    prepared, before the inflate ({} pages on per-CPU lists):",
            r.guest_before.pcp_pages
        )?;
        for l in r.guest_before.buddyinfo.lines() {
            writeln!(*report, "      {}", l.trim_end())?;
        }
    }

    Ok(())
}

/// `results.json`: the options, the summary and every run.
fn results_json(
    opts: &BenchOpts,
    outcome: &Outcome,
    accel: &str,
    qemu: &str,
    summary: serde_json::Map<String, Value>,
    problems: &[String],
) -> Value {
    let runs = &outcome.runs;
    json!({
        "guest_mib": opts.guest_mib,
        "balloon_mib": opts.balloon_mib,
        "reps": opts.reps,
        "guest_state": opts.guest_state.name(),
        "frag_stride": opts.frag_stride,
        "free_page_reporting": opts.reporting(),
        "compact": opts.compact,
        "block_problems": problems,
        "backing": opts.backing.name(),
        "host_thp": outcome.host_thp,
        "huge_pages_added": outcome.huge_pages_added,
        "accelerator": accel,
        "qemu": qemu,
        "cmdline": opts.cmdline,
        "summary": summary,
        "runs": runs.iter().map(|r| json!({
            "driver": name(r.driver),
            "rep": r.rep,
            "rss_bytes": r.rss,
            "prepare_secs": r.prepare_secs,
            "collapse": r.collapse.as_ref().map(|c| json!({
                "secs": c.secs,
                "anon_huge_before_bytes": c.anon_huge_before,
                "anon_huge_after_bytes": c.anon_huge_after,
                "ranges_huge": c.ranges.huge,
                "ranges_unpopulated": c.ranges.unpopulated,
                "ranges_failed": c.ranges.failed,
            })),
            "host_before_inflate": host_json(&r.host[0]),
            "host_after_inflate": host_json(&r.host[1]),
            "host_after_deflate": host_json(&r.host[2]),
            "compaction": r.compaction.as_ref().map(|c| json!({
                "secs": c.secs,
                "host_after_compaction": host_json(&c.host),
                "guest_before_compaction": guest_json(&c.guest[0]),
                "guest_after_compaction": guest_json(&c.guest[1]),
                "vmstat_before": c.vmstat[0],
                "vmstat_after": c.vmstat[1],
            })),
            "guest_at_rest": guest_json(&r.guest_rest),
            "guest_before_inflate": guest_json(&r.guest_before),
            "guest_after_deflate": guest_json(&r.guest_after),
            "pagetypeinfo_before_inflate": r.pagetypeinfo,
            "inflate": phase_json(&r.inflate),
            "deflate": phase_json(&r.deflate),
        })).collect::<Vec<_>>(),
    })
}

pub(super) fn name(d: Driver) -> &'static str {
    match d {
        Driver::C => "C",
        Driver::Rust => "Rust",
    }
}

fn phase_json(p: &Phase) -> Value {
    json!({
        "secs": p.secs,
        "event_secs": p.event_secs,
        "guest_cpu_secs": p.guest_cpu,
        "qemu_thread_cpu_secs": p.qemu_cpu,
        "driver_counters": p.counters,
        "samples": p.samples.iter().map(|s| json!([s.t, s.balloon])).collect::<Vec<_>>(),
    })
}

fn per_driver(runs: &[Run], d: Driver) -> impl Iterator<Item = &Run> {
    runs.iter().filter(move |r| r.driver == d)
}

/// Host CPU of the QEMU threads that are not vCPUs: the device model.
fn host_cpu(p: &Phase) -> f64 {
    p.qemu_cpu
        .iter()
        .filter(|(k, _)| k.as_str() != "vcpu")
        .map(|(_, v)| v)
        .sum()
}

fn host_json(m: &QemuMem) -> Value {
    json!({
        "rss_bytes": m.rss,
        "ram_rss_bytes": m.ram_rss,
        "ram_anon_huge_bytes": m.ram_anon_huge,
        "anon_huge_bytes": m.anon_huge,
        "free_huge_pages": m.free_huge_pages,
    })
}

fn guest_json(g: &GuestMem) -> Value {
    json!({
        "buddyinfo": g.buddyinfo,
        "free_blocks_per_order": g.free_blocks,
        "free_2m_blocks": g.free_2m_blocks(),
        "free_single_pages": g.free_single_pages(),
        "anon_huge_bytes": g.anon_huge,
        "mem_free_bytes": g.mem_free,
        "pcp_pages": g.pcp_pages,
    })
}

/// `x` with three decimals, `-` when not a number (not measured, or 0/0).
fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "-".into()
    }
}

type Metric = (&'static str, fn(&Run) -> f64);

/// Our driver's counter over the inflate, not a number for C.
fn counter(r: &Run, name: &str) -> f64 {
    r.inflate_counter(name).map_or(f64::NAN, |v| v as f64)
}

/// Whether our driver used what the run was to measure: whole blocks
/// (`inflate_blocks`), and with reporting, reported them
/// (`reported_blocks`). One line per problem, empty when all is well.
fn block_problems(runs: &[Run], reporting: bool) -> Vec<String> {
    let mut out = Vec::new();
    for r in per_driver(runs, Driver::Rust) {
        let blocks = r.inflate_counter("inflate_blocks");
        let reported = r.inflate_counter("reported_blocks");
        match blocks {
            None => out.push(format!(
                "Rust rep {}: no inflate_blocks counter in debugfs (a module without blocks?)",
                r.rep
            )),
            Some(0) => out.push(format!(
                "Rust rep {}: inflate_blocks = 0: the driver inflated no whole 2 MiB block \
                 (module parameter blocks=0, or no free block in the guest)",
                r.rep
            )),
            Some(_) => {}
        }
        if reporting && blocks.unwrap_or(0) > 0 && reported.unwrap_or(0) == 0 {
            out.push(format!(
                "Rust rep {}: free page reporting offered but reported_blocks = 0 \
                 (inflate_blocks = {})",
                r.rep,
                blocks.unwrap_or(0)
            ));
        }
    }
    out
}

/// The table's rows for `backing`, and with `compact` those of the
/// compaction after the inflate.
fn metrics(backing: Backing, compact: bool) -> Vec<Metric> {
    let mut m: Vec<Metric> = vec![
        ("inflate s", |r| r.inflate.secs),
        ("deflate s", |r| r.deflate.secs),
        ("inflate guest CPU s", |r| r.inflate.guest_cpu),
        ("deflate guest CPU s", |r| r.deflate.guest_cpu),
        ("inflate host CPU s", |r| host_cpu(&r.inflate)),
        ("deflate host CPU s", |r| host_cpu(&r.deflate)),
        ("RSS released MiB", |r| {
            r.rss[0].saturating_sub(r.rss[1]) as f64 / MIB as f64
        }),
        ("host RSS returned/MiB", Run::rss_returned_per_mib),
        ("host RAM returned/MiB", Run::ram_returned_per_mib),
    ];
    if backing == Backing::Hugetlb2M {
        m.push(("host pool returned/MiB", Run::pool_returned_per_mib));
    }
    m.extend([
        (
            "inflate blocks",
            (|r| counter(r, "inflate_blocks")) as fn(&Run) -> f64,
        ),
        ("reported blocks", |r| counter(r, "reported_blocks")),
    ]);
    m.extend([
        (
            "host THP before %",
            (|r| 100.0 * r.host_thp_before()) as fn(&Run) -> f64,
        ),
        ("host THP kept %", |r| 100.0 * r.host_thp_kept()),
        ("guest 4K free before", |r| {
            r.guest_before.free_single_pages() as f64
        }),
        ("guest pcp free before", |r| r.guest_before.pcp_pages as f64),
        ("guest 2M free before", |r| {
            r.guest_before.free_2m_blocks() as f64
        }),
        ("guest 2M free after", |r| {
            r.guest_after.free_2m_blocks() as f64
        }),
        ("guest THP MiB after", |r| {
            r.guest_after.anon_huge as f64 / MIB as f64
        }),
    ]);
    if backing == Backing::Anonymous {
        m.extend([
            (
                "host THP backed %",
                (|r| 100.0 * r.host_thp_backed()) as fn(&Run) -> f64,
            ),
            ("host 4K-backed MiB", Run::host_small_backed_mib),
        ]);
    }
    if compact {
        m.extend([
            (
                "host RAM ret/MiB compact",
                Run::ram_returned_compacted_per_mib as fn(&Run) -> f64,
            ),
            ("host THP MiB inflated", |r| {
                r.host[1].ram_anon_huge as f64 / MIB as f64
            }),
            ("host THP MiB compacted", |r| {
                r.compaction
                    .as_ref()
                    .map_or(f64::NAN, |c| c.host.ram_anon_huge as f64 / MIB as f64)
            }),
            ("host THP kept % compact", |r| {
                100.0 * r.host_thp_kept_compacted()
            }),
            ("guest 2M free inflated", |r| {
                r.compaction
                    .as_ref()
                    .map_or(f64::NAN, |c| c.guest[0].free_2m_blocks() as f64)
            }),
            ("guest 2M free compacted", |r| {
                r.compaction
                    .as_ref()
                    .map_or(f64::NAN, |c| c.guest[1].free_2m_blocks() as f64)
            }),
            ("compaction s", |r| {
                r.compaction.as_ref().map_or(f64::NAN, |c| c.secs)
            }),
            ("compact_migrate_scanned", |r| {
                r.compact_counter("compact_migrate_scanned")
            }),
            ("compact_success", |r| r.compact_counter("compact_success")),
            ("pgmigrate_success", |r| {
                r.compact_counter("pgmigrate_success")
            }),
            ("balloon_migrate", |r| r.compact_counter("balloon_migrate")),
        ]);
    }
    m
}

const LEGEND: &str = "\
RSS released MiB       QEMU's VmRSS + HugetlbPages before minus after the inflate
host RSS returned/MiB  the same per MiB inflated
host RAM returned/MiB  what QEMU's guest RAM mappings hold (Rss + hugetlb) before minus after
                       the inflate, per MiB inflated
host pool returned/MiB free 2 MiB pages the host's hugetlb pool gained x 2 MiB, per MiB inflated
inflate blocks         our driver's whole 2 MiB blocks inflated (debugfs inflate_blocks)
reported blocks        of which reported on the free page reporting queue (reported_blocks)
host THP before %      guest RAM in host transparent huge pages (AnonHugePages of QEMU's guest
                       RAM mappings) before the inflate, % of guest RAM
host THP kept %        the same after the inflate, % of the guest RAM not ballooned
host THP backed %      the same after the inflate, % of the guest RAM the host backs (Rss of the
                       RAM mappings): RAM never touched, which holds no host memory, left out
host 4K-backed MiB     guest RAM the host backs with small pages after the inflate (Rss minus
                       AnonHugePages): what is left of huge pages split by 4 KiB releases, and
                       of ranges never huge (both THP backing only)
guest 4K free before   free single pages (order 0, /proc/buddyinfo) before the inflate
guest pcp free before  free pages on the per-CPU lists (/proc/zoneinfo) before the inflate:
                       not in buddyinfo; an order-0 allocation takes its CPU's first
guest 2M free before   free memory in blocks of order >= 9, in 2 MiB blocks, before the inflate
guest 2M free after    the same after the deflate
guest THP MiB after    the guest's AnonHugePages (/proc/meminfo) after the deflate
With --compact (guest memory compacted once after the inflate, before the deflate):
host RAM ret/MiB compact  host RAM returned/MiB, measured after the compaction
host THP MiB inflated     AnonHugePages of QEMU's guest RAM mappings after the inflate
host THP MiB compacted    the same after the compaction
host THP kept % compact   host THP kept %, measured after the compaction
guest 2M free inflated    guest 2M free, after the inflate (before the compaction)
guest 2M free compacted   the same after the compaction
compaction s              from the write to compact_memory to the counters' last change
compact_migrate_scanned.. the guest's /proc/vmstat counters, rise over the compaction
                          (balloon_migrate: ballooned pages migrated; - if absent)
";
