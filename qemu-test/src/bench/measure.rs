//! Measuring one phase (inflate or deflate): from the QMP command to
//! `actual` at the target, sampled, with guest and host CPU and our
//! driver's counters; and the statistics over repetitions.

use super::*;

/// `actual` (balloon size, bytes) at a time (seconds since the phase began).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds since the QMP command.
    pub t: f64,
    /// Balloon size in bytes (RAM minus QEMU's `actual`).
    pub balloon: u64,
}

/// One inflate or deflate.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    /// Seconds from the QMP command until `actual` reached the target.
    pub secs: f64,
    /// Seconds from the command to the last `BALLOON_CHANGE` event's
    /// timestamp (QEMU rate-limits these to one a second).
    pub event_secs: Option<f64>,
    /// Guest CPU time (all CPUs, non-idle), seconds.
    pub guest_cpu: f64,
    /// Host CPU seconds per QEMU thread name (summed over same-named threads).
    pub qemu_cpu: BTreeMap<String, f64>,
    /// Our driver's debugfs counters, difference over the phase.
    pub counters: BTreeMap<String, u64>,
    /// The balloon size over time.
    pub samples: Vec<Sample>,
}

pub(super) fn diff_map(
    a: &BTreeMap<String, f64>,
    b: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

pub(super) fn diff_counters(
    a: &BTreeMap<String, u64>,
    b: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(a.get(k).copied().unwrap_or(0))))
        .collect()
}

/// Moves the balloon to `target` (guest memory, bytes) and measures it.
pub(super) fn phase(vm: &mut Vm, driver: Driver, target: u64, opts: &BenchOpts) -> Result<Phase> {
    let ram = vm.ram_bytes();
    let cpu0 = guest_busy(vm)?;
    let thr0 = qemu_threads(vm.pid())?;
    let cnt0 = counters(vm, driver)?;
    vm.qmp().drain_events();
    let wall0 = std::time::SystemTime::now();
    let t0 = Instant::now();
    vm.set_balloon_target_bytes(target)?;
    let mut samples = Vec::new();
    loop {
        let actual = vm.query_balloon_actual()?;
        samples.push(Sample {
            t: t0.elapsed().as_secs_f64(),
            balloon: ram.saturating_sub(actual),
        });
        if actual == target {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("{driver:?}: actual stuck at {actual} (target {target})");
        }
        std::thread::sleep(opts.poll);
    }
    let secs = t0.elapsed().as_secs_f64();
    let thr1 = qemu_threads(vm.pid())?;
    let cpu1 = guest_busy(vm)?;
    let cnt1 = counters(vm, driver)?;
    // QEMU emits the last BALLOON_CHANGE up to a second late.
    std::thread::sleep(Duration::from_millis(1100));
    vm.qmp().poll_events()?;
    let event_secs = vm
        .qmp()
        .drain_events()
        .iter()
        .filter(|e| e.balloon_actual().is_some())
        .filter_map(|e| e.timestamp.duration_since(wall0).ok())
        .map(|d| d.as_secs_f64())
        .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
    Ok(Phase {
        secs,
        event_secs,
        guest_cpu: cpu1 - cpu0,
        qemu_cpu: diff_map(&thr0, &thr1),
        counters: diff_counters(&cnt0, &cnt1),
        samples,
    })
}

/// Minimum, median and maximum.
pub fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (v[0], median, v[n - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(stats(vec![3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
        assert_eq!(stats(vec![4.0, 1.0, 2.0, 3.0]), (1.0, 2.5, 4.0));
        assert!(stats(vec![]).1.is_nan());
    }
}
