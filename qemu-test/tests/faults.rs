//! Fault injection aimed at each driver's allocations, in each context it
//! allocates in (`qemu_test::scenarios::faults`). Debug tier only (`make test-debug`):
//! on another kernel every test fails and says so. The C driver's outcome
//! is recorded, ours asserted.

use anyhow::Result;
use qemu_test::scenarios::faults::{fault_injection, Context};
use qemu_test::Driver;

macro_rules! fault_tests {
    ($($name:ident: $driver:expr, $ctx:expr;)*) => {
        $(
            #[test]
            fn $name() -> Result<()> {
                fault_injection($driver, $ctx)
            }
        )*
    };
}

fault_tests! {
    probe_rs: Driver::Rust, Context::Probe;
    remove_rs: Driver::Rust, Context::Remove;
    size_work_rs: Driver::Rust, Context::SizeWork;
    stats_rs: Driver::Rust, Context::Stats;
    oom_rs: Driver::Rust, Context::Oom;
    hinting_rs: Driver::Rust, Context::Hinting;
    probe_c: Driver::C, Context::Probe;
    remove_c: Driver::C, Context::Remove;
    size_work_c: Driver::C, Context::SizeWork;
    stats_c: Driver::C, Context::Stats;
    oom_c: Driver::C, Context::Oom;
    hinting_c: Driver::C, Context::Hinting;
}
