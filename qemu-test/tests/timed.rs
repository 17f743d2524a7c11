//! Timed scenarios ([`qemu_test::scenarios::realistic`]): C and ours alternate in one
//! boot and ours must be within 1.2× of C's median time. `make qemu-test`
//! runs this file on its own with one test thread, so that no other VM
//! competes for the CPUs while they are measured.

use anyhow::Result;
use qemu_test::scenarios::realistic;

/// Inflate half of a guest whose memory is full of page cache.
#[test]
fn page_cache_full() -> Result<()> {
    realistic::page_cache_full()
}

/// Inflate half of a two-node guest whose node 0 is nearly full.
#[test]
fn numa_node_nearly_full() -> Result<()> {
    realistic::numa_node_nearly_full()
}
