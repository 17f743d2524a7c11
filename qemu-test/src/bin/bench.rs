//! `make bench`: inflate and deflate with the C driver and ours, alternating
//! in one boot, and report min/median/max, the ratio ours/C, the time
//! breakdown, a JSON file and a PNG plot of the balloon size over time.
//!
//! ```text
//! bench [--reps N] [--guest-mib M] [--balloon-mib B] [--drivers c,rs]
//!       [--guest-state fresh|dirty|cache] [--poll-ms P] [--out DIR]
//!       [--cmdline ARG]...
//! ```

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use qemu_test::bench::{self, BenchOpts, Phase, Run};
use qemu_test::{Driver, MIB};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

fn parse_args() -> Result<(BenchOpts, PathBuf)> {
    let mut opts = BenchOpts::default();
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--reps" => opts.reps = val()?.parse()?,
            "--guest-mib" => opts.guest_mib = val()?.parse()?,
            "--balloon-mib" => opts.balloon_mib = val()?.parse()?,
            "--poll-ms" => opts.poll = Duration::from_millis(val()?.parse()?),
            "--out" => out = Some(PathBuf::from(val()?)),
            "--cmdline" => opts.cmdline.push(val()?),
            "--guest-state" => opts.guest_state = bench::GuestState::parse(&val()?)?,
            "--drivers" => {
                opts.drivers = val()?
                    .split(',')
                    .map(Driver::parse)
                    .collect::<Result<_>>()?
            }
            "-h" | "--help" => {
                println!(
                    "usage: bench [--reps N] [--guest-mib M] [--balloon-mib B] \
                     [--drivers c,rs] [--guest-state fresh|dirty|cache] [--poll-ms P] \
                     [--out DIR] [--cmdline ARG]..."
                );
                std::process::exit(0);
            }
            _ => bail!("unknown argument {a} (see --help)"),
        }
    }
    let out = match out {
        Some(o) => o,
        None => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../build/bench")
                .join(now.to_string())
        }
    };
    Ok((opts, out))
}

fn name(d: Driver) -> &'static str {
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

fn per_driver<'a>(runs: &'a [Run], d: Driver) -> impl Iterator<Item = &'a Run> {
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

fn plot(runs: &[Run], path: &std::path::Path, title: &str) -> Result<()> {
    let root = BitMapBackend::new(path, (1200, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    // Inflate then deflate on one time axis per run.
    let series: Vec<(Driver, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| {
            let mut pts: Vec<(f64, f64)> = r
                .inflate
                .samples
                .iter()
                .map(|s| (s.t, s.balloon as f64 / MIB as f64))
                .collect();
            let off = r.inflate.samples.last().map_or(0.0, |s| s.t) + 0.2;
            pts.extend(
                r.deflate
                    .samples
                    .iter()
                    .map(|s| (off + s.t, s.balloon as f64 / MIB as f64)),
            );
            (r.driver, pts)
        })
        .collect();
    let tmax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.0))
        .fold(0.1, f64::max);
    let ymax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..tmax * 1.05, 0.0..ymax * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the QMP command (inflate, then deflate)")
        .y_desc("balloon size (MiB)")
        .draw()?;
    let mut labelled = [false, false];
    for (d, pts) in &series {
        let (color, i) = match d {
            Driver::C => (RED, 0),
            Driver::Rust => (BLUE, 1),
        };
        let s = chart.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?;
        if !labelled[i] {
            labelled[i] = true;
            s.label(format!("{} driver", name(*d)))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() -> Result<()> {
    let (opts, out) = parse_args()?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    eprintln!(
        "bench: {} MiB guest ({}), balloon {} MiB, {} repetitions of {:?}",
        opts.guest_mib,
        opts.guest_state.name(),
        opts.balloon_mib,
        opts.reps,
        opts.drivers
    );
    let (vm, runs) = bench::run(&opts, |r| {
        eprintln!(
            "bench: {:>4} rep {}: inflate {:.3} s, deflate {:.3} s, guest CPU {:.2} s",
            name(r.driver),
            r.rep,
            r.inflate.secs,
            r.deflate.secs,
            r.inflate.guest_cpu
        )
    })?;
    let accel = vm.accel().to_string();
    let qemu = String::from_utf8_lossy(
        &std::process::Command::new(qemu_test::qemu::qemu_binary())
            .arg("--version")
            .output()?
            .stdout,
    )
    .lines()
    .next()
    .unwrap_or("")
    .to_string();
    drop(vm);

    let mut report = String::new();
    // Table.
    let metrics: [(&str, fn(&Run) -> f64); 7] = [
        ("inflate s", |r| r.inflate.secs),
        ("deflate s", |r| r.deflate.secs),
        ("inflate guest CPU s", |r| r.inflate.guest_cpu),
        ("deflate guest CPU s", |r| r.deflate.guest_cpu),
        ("inflate host CPU s", |r| host_cpu(&r.inflate)),
        ("deflate host CPU s", |r| host_cpu(&r.deflate)),
        ("RSS released MiB", |r| {
            r.rss[0].saturating_sub(r.rss[1]) as f64 / MIB as f64
        }),
    ];
    writeln!(
        report,
        "\n{} MiB balloon, {} MiB guest ({}), {} runs per driver, accelerator {accel}, {qemu}\n",
        opts.balloon_mib,
        opts.guest_mib,
        opts.guest_state.name(),
        opts.reps
    )?;
    writeln!(
        report,
        "{:<22} {:>27} {:>27} {:>10}",
        "metric", "C min / median / max", "Rust min / median / max", "Rust/C"
    )?;
    let mut summary = serde_json::Map::new();
    for (label, f) in metrics {
        let c = bench::stats(per_driver(&runs, Driver::C).map(f).collect());
        let r = bench::stats(per_driver(&runs, Driver::Rust).map(f).collect());
        let ratio = r.1 / c.1;
        writeln!(
            report,
            "{label:<22} {:>8.3} {:>8.3} {:>8.3}  {:>8.3} {:>8.3} {:>8.3} {:>10.3}",
            c.0, c.1, c.2, r.0, r.1, r.2, ratio
        )?;
        summary.insert(
            label.to_string(),
            json!({"c": [c.0, c.1, c.2], "rust": [r.0, r.1, r.2], "ratio_median": ratio}),
        );
    }

    // Where the time goes.
    writeln!(
        report,
        "\nBreakdown (medians): host CPU of QEMU's non-vCPU threads; our driver's counters"
    )?;
    for (phase, get) in [
        ("inflate", (|r: &Run| &r.inflate) as fn(&Run) -> &Phase),
        ("deflate", |r: &Run| &r.deflate),
    ] {
        for d in [Driver::C, Driver::Rust] {
            let ps: Vec<&Phase> = per_driver(&runs, d).map(get).collect();
            if ps.is_empty() {
                continue;
            }
            let med = |f: &dyn Fn(&Phase) -> f64| bench::stats(ps.iter().map(|p| f(p)).collect()).1;
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
                report,
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
                writeln!(report, "           driver: {}", counters.join(", "))?;
            }
        }
    }

    let doc = json!({
        "guest_mib": opts.guest_mib,
        "balloon_mib": opts.balloon_mib,
        "reps": opts.reps,
        "guest_state": opts.guest_state.name(),
        "accelerator": accel,
        "qemu": qemu,
        "cmdline": opts.cmdline,
        "summary": summary,
        "runs": runs.iter().map(|r| json!({
            "driver": name(r.driver),
            "rep": r.rep,
            "rss_bytes": r.rss,
            "inflate": phase_json(&r.inflate),
            "deflate": phase_json(&r.deflate),
        })).collect::<Vec<_>>(),
    });
    let json_path = out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)?)?;
    let png_path = out.join("balloon.png");
    plot(
        &runs,
        &png_path,
        &format!(
            "Inflate and deflate {} MiB, {} MiB guest, {accel}: C (red) vs Rust (blue)",
            opts.balloon_mib, opts.guest_mib
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
