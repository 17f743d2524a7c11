//! `make bench`: inflate and deflate with the C driver and ours, alternating
//! in one boot, and report min/median/max, the ratio ours/C, the time
//! breakdown, a JSON file and a PNG plot of the balloon size over time.
//!
//! ```text
//! bench [--reps N] [--guest-mib M] [--balloon-mib B] [--drivers c,rs]
//!       [--guest-state fresh|dirty|cache|fragmented] [--frag-stride N]
//!       [--backing 4k|thp|hugetlb] [--reporting on|off] [--poll-ms P]
//!       [--compact] [--workload] [--out DIR] [--cmdline ARG]...
//! ```

use anyhow::{bail, Context, Result};
use qemu_test::bench::{self, report, BenchOpts};
use qemu_test::{Backing, Driver};
use std::path::PathBuf;
use std::time::Duration;

const USAGE: &str = "\
usage: bench [--reps N] [--guest-mib M] [--balloon-mib B] [--drivers c,rs]
             [--guest-state fresh|dirty|cache|fragmented] [--frag-stride N]
             [--backing 4k|thp|hugetlb] [--reporting on|off] [--poll-ms P] [--compact]
             [--workload] [--out DIR] [--cmdline ARG]...

  --backing      host pages of the guest RAM: 4k (THP disabled for QEMU), thp
                 (default: anonymous memory, which QEMU madvises MADV_HUGEPAGE;
                 needs host THP always or madvise) or hugetlb (2 MiB hugetlb
                 pages; the bench grows the host's pool and restores it; root)
  --reporting    the device's free-page-reporting (default: on with --backing
                 hugetlb, where our driver reports its whole 2 MiB blocks on
                 that queue so that QEMU frees whole huge pages; off otherwise)
  --guest-state  free guest memory before each inflate: fresh, dirty (default),
                 cache, or fragmented (single free 4 KiB pages, one in every
                 --frag-stride (default 32) pages of the memory held, beside
                 whole free 2 MiB blocks for the balloon)
  --compact      after the inflate and its host figures, compact the guest's memory
                 once (/proc/sys/vm/compact_memory) and report the host figures and
                 the guest's migration counters (/proc/vmstat) again, before the deflate
  --workload     instead of inflate and deflate: a fixed guest workload (memory, fork and
                 exec, page-cache reads) for 60 s undisturbed, then 60 s while the host
                 sets 30 targets (balloons of 10 to 60 % of RAM), each driver in turn;
                 reports its throughput, PSI, stalls, churn and settle times, and
                 workload.png (--guest-state dirty or cache; fresh also works)
";

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
            "--backing" => opts.backing = Backing::parse(&val()?)?,
            "--frag-stride" => opts.frag_stride = val()?.parse()?,
            "--compact" => opts.compact = true,
            "--workload" => opts.workload = true,
            "--reporting" => {
                opts.free_page_reporting = Some(match val()?.as_str() {
                    "on" => true,
                    "off" => false,
                    v => bail!("--reporting {v}: on or off"),
                })
            }
            "--drivers" => {
                opts.drivers = val()?
                    .split(',')
                    .map(Driver::parse)
                    .collect::<Result<_>>()?
            }
            "-h" | "--help" => {
                print!("{USAGE}");
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

fn main() -> Result<()> {
    let (opts, out) = parse_args()?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    eprintln!(
        "bench: {} MiB guest ({}, {} backing), balloon {} MiB, {} repetitions of {:?}",
        opts.guest_mib,
        opts.guest_state.name(),
        opts.backing.name(),
        opts.balloon_mib,
        opts.reps,
        opts.drivers
    );
    if opts.workload {
        return bench::workload::run(&opts, &out);
    }
    let outcome = bench::run(&opts, report::progress)?;
    report::write(&opts, &outcome, &out)
}
