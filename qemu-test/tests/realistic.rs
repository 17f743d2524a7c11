//! What users run ([`qemu_test::scenarios::realistic`]): each scenario boots one
//! realistic guest and runs the C driver and ours in it, one after the
//! other, with the same thresholds, and logs their numbers side by side.

use anyhow::Result;
use qemu_test::scenarios::realistic;

/// 80 % of RAM dirty with swap, inflate 40 %.
#[test]
fn swap_under_anonymous_memory() -> Result<()> {
    realistic::swap_under_anonymous_memory()
}

/// A memory-limited cgroup while the balloon moves.
#[test]
fn cgroup_workload() -> Result<()> {
    realistic::cgroup_workload()
}

/// A THP workload across inflate and deflate; huge pages afterwards.
#[test]
fn thp_workload() -> Result<()> {
    realistic::thp_workload()
}

/// A minute of mixed workload and 30 targets.
#[test]
fn long_running() -> Result<()> {
    realistic::long_running()
}
