//! The plot of `make bench`: the balloon size over time in each run, C in
//! red and ours in blue (`balloon.png`).

use super::{report::name, Run};
use crate::{Driver, MIB};
use anyhow::Result;
use plotters::prelude::*;

/// Draws the balloon size of every run over time into `path`.
pub(super) fn plot(runs: &[Run], path: &std::path::Path, title: &str) -> Result<()> {
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
