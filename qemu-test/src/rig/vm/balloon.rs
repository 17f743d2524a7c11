//! What a test asks QEMU through QMP and reads of the host: the balloon
//! target and `actual`, the guest's statistics, QEMU's memory, our
//! driver's counters, migration.

use super::{Vm, Wait, BALLOON_QOM_PATH};
use crate::rig::qmp::QmpClient;
use crate::rig::stats::GuestStats;
use crate::rig::units::{format_bytes, PAGE_SIZE};
use anyhow::{anyhow, Context, Result};
use std::collections::BTreeMap;
use std::time::Duration;

impl Vm {
    /// The QMP session (any command; events with [`QmpClient::events`],
    /// [`QmpClient::drain_events`], [`QmpClient::wait_event`]).
    pub fn qmp(&mut self) -> &mut QmpClient {
        &mut self.qmp
    }

    /// Sets the balloon target: the guest memory size QEMU asks for (QMP
    /// `balloon`; the balloon size becomes RAM − `guest_ram_bytes`).
    pub fn set_balloon_target_bytes(&mut self, guest_ram_bytes: u64) -> Result<()> {
        let value = i64::try_from(guest_ram_bytes).context("balloon target too large")?;
        self.qmp.execute(&qapi::qmp::balloon { value })?;
        Ok(())
    }

    /// Guest memory size as the host sees it (QMP `query-balloon`
    /// `actual`: RAM − balloon size).
    pub fn query_balloon_actual(&mut self) -> Result<u64> {
        let info = self.qmp.execute(&qapi::qmp::query_balloon {})?;
        u64::try_from(info.actual).context("negative balloon actual")
    }

    /// Waits until `actual` is within one page of `bytes`.
    pub fn wait_balloon_actual(&mut self, bytes: u64, timeout: Duration) -> Result<u64> {
        self.wait_until(
            &format!("balloon actual = {}", format_bytes(bytes)),
            timeout,
            Duration::from_millis(50),
            |vm| {
                let a = vm.query_balloon_actual()?;
                Ok(Wait::when(a.abs_diff(bytes) < PAGE_SIZE, a))
            },
        )
    }

    /// Sets the balloon statistics polling interval (0 disables).
    pub fn enable_stats_polling(&mut self, secs: u64) -> Result<()> {
        self.qmp.execute(&qapi::qmp::qom_set {
            path: BALLOON_QOM_PATH.into(),
            property: "guest-stats-polling-interval".into(),
            value: secs.into(),
        })?;
        Ok(())
    }

    /// The latest guest statistics QEMU holds.
    pub fn guest_stats(&mut self) -> Result<GuestStats> {
        let v = self.qmp.execute(&qapi::qmp::qom_get {
            path: BALLOON_QOM_PATH.into(),
            property: "guest-stats".into(),
        })?;
        GuestStats::from_json(&v)
    }

    /// Waits for statistics whose `last_update` is later than `after`
    /// (seconds since the epoch); statistics must be enabled.
    pub fn wait_stats_after(&mut self, after: u64, timeout: Duration) -> Result<GuestStats> {
        self.wait_until(
            &format!("guest stats with last-update > {after}"),
            timeout,
            Duration::from_millis(200),
            |vm| {
                let s = vm.guest_stats()?;
                Ok(Wait::when(s.last_update > after, s))
            },
        )
    }

    // ---- host side ---------------------------------------------------------

    /// QEMU's resident set size (`VmRSS` of `/proc/<pid>/status`).
    pub fn qemu_rss_bytes(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let line = text
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .with_context(|| format!("no VmRSS in {path}"))?;
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("bad line {line:?} in {path}"))?;
        Ok(kb * 1024)
    }

    // ---- waiting -----------------------------------------------------------

    /// Our driver's debugfs counters (`/sys/kernel/debug/virtio_balloon_rs-*/stats`,
    /// `src/balloon/perf.rs`), by name.
    pub fn rs_counters(&mut self) -> Result<BTreeMap<String, u64>> {
        let out = self.run_ok("cat /sys/kernel/debug/virtio_balloon_rs-*/stats")?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_string(), v.trim().parse().ok()?))
            })
            .collect())
    }

    /// Starts a migration whose stream is thrown away (`exec:cat >
    /// /dev/null`), at most `bandwidth` bytes a second, so that the guest's
    /// free page hinting runs while it lasts.
    pub fn start_discarded_migration(&mut self, bandwidth: u64) -> Result<()> {
        self.qmp().execute(&qapi::qmp::migrate_set_parameters(
            qapi::qmp::MigrateSetParameters {
                max_bandwidth: Some(bandwidth),
                ..Default::default()
            },
        ))?;
        self.qmp().execute(&qapi::qmp::migrate {
            uri: Some("exec:cat > /dev/null".into()),
            channels: None,
            detach: None,
            resume: None,
        })?;
        Ok(())
    }

    /// Cancels the outgoing migration and waits until QEMU says it ended
    /// (cancelled, or completed or failed before the cancel), polling
    /// every `poll`. A migration that completed leaves the source paused
    /// (`postmigrate`): the guest is resumed, so that the test goes on
    /// (with free page hinting the stream can be small enough to finish
    /// before the cancel). Returns how it ended.
    pub fn cancel_migration(&mut self, poll: Duration) -> Result<qapi::qmp::MigrationStatus> {
        self.qmp().execute(&qapi::qmp::migrate_cancel {})?;
        let ended = self.wait_until(
            "the migration to be cancelled",
            Duration::from_secs(60),
            poll,
            |vm| {
                let status = vm.qmp().execute(&qapi::qmp::query_migrate {})?.status;
                let done = matches!(
                    status,
                    Some(qapi::qmp::MigrationStatus::cancelled)
                        | Some(qapi::qmp::MigrationStatus::completed)
                        | Some(qapi::qmp::MigrationStatus::failed)
                );
                Ok(Wait::when(done, status))
            },
        )?;
        let ended =
            ended.ok_or_else(|| anyhow!("query-migrate returned no status after the migration"))?;
        let run = self.qmp().execute(&qapi::qmp::query_status {})?;
        if !run.running {
            self.note(&format!(
                "the migration ended {ended:?} and left the guest {:?}: resuming it",
                run.status
            ));
            self.qmp().execute(&qapi::qmp::cont {})?;
        }
        Ok(ended)
    }
}

/// Counter `name` of a [`Vm::rs_counters`] snapshot; missing, it is an
/// error that lists the counters there are.
pub fn rs_counter(counters: &BTreeMap<String, u64>, name: &str) -> Result<u64> {
    counters
        .get(name)
        .copied()
        .with_context(|| format!("no {name} in debugfs stats: {counters:?}"))
}
