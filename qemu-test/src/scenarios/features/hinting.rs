//! Free page hinting (`VIRTIO_BALLOON_F_FREE_PAGE_HINT`) across a live
//! migration, and under memory pressure while a slow migration runs.

use super::*;

/// Memory the hinting test dirties with random data and frees before it
/// migrates the VM.
const HINT_DIRTY_MIB: u64 = 384;

fn migrate_to_file(vm: &mut Vm, file: &std::path::Path) -> Result<BTreeMap<&'static str, u64>> {
    let uri = format!("exec:cat > '{}'", file.display());
    vm.qmp().execute(&qapi::qmp::migrate {
        uri: Some(uri),
        channels: None,
        detach: None,
        resume: None,
    })?;
    let t0 = Instant::now();
    loop {
        let info = vm.qmp().execute(&qapi::qmp::query_migrate {})?;
        match info.status {
            Some(qapi::qmp::MigrationStatus::completed) => {
                let ram = info.ram.context("no RAM statistics")?;
                let mut m = BTreeMap::new();
                m.insert("transferred", ram.transferred as u64);
                m.insert("normal_pages", ram.normal as u64);
                m.insert("duplicate_pages", ram.duplicate as u64);
                m.insert("ms", t0.elapsed().as_millis() as u64);
                return Ok(m);
            }
            Some(qapi::qmp::MigrationStatus::failed)
            | Some(qapi::qmp::MigrationStatus::cancelled) => {
                bail!("migration failed: {:?}", info.error_desc)
            }
            _ => {}
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(300),
            "migration did not complete in 300 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The free page hint block of our driver with every page size: 4 MiB,
/// C's with 4 KiB pages.
pub const HINT_BLOCK: u64 = 4 * MIB;

/// C's free page hint block in this guest: a block of `MAX_PAGE_ORDER`
/// (the highest order `/proc/buddyinfo` has a column for).
pub fn c_hint_block(vm: &mut Vm) -> Result<u64> {
    let page = vm.guest_page_size()?;
    let line = vm.run_ok("head -1 /proc/buddyinfo")?;
    // "Node 0, zone DMA <count per order 0..=MAX_PAGE_ORDER>"
    let orders = line.split_whitespace().skip(4).count() as u32;
    ensure!(
        orders > 0,
        "cannot read the orders of /proc/buddyinfo: {line:?}"
    );
    Ok(page << (orders - 1))
}

/// With `free-page-hint=on`, migrating the VM to a file skips the guest's
/// free memory: a guest that dirtied `HINT_DIRTY_MIB` of random data and
/// freed it produces a stream that holds what the guest uses and less
/// than half of that data. A second QEMU
/// resumes from the file; the guest runs and its balloon still follows
/// targets.
pub fn free_page_hint_migration(driver: Driver) -> Result<()> {
    // No disks: the destination QEMU could not take over their state. One
    // NUMA node: with two (two RAM blocks), the C driver's hints save
    // nothing in this QEMU under TCG (a 406 MiB stream for 384 MiB freed,
    // ours 119 MiB), so the baseline would not hold.
    let cfg = config(driver, "hint-source")
        .free_page_hint(true)
        .data_disk_mib(None)
        .swap_mib(None)
        .numa_nodes(1);
    let mut vm = Vm::boot(cfg.clone())?;
    let ram = vm.ram_bytes();
    let features = negotiated_features(&mut vm)?;
    ensure!(
        has_bit(&features, bit::FREE_PAGE_HINT),
        "FREE_PAGE_HINT not negotiated"
    );
    let target = target_for(ram, 10);
    balloon_to(&mut vm, target)?;
    // (Asked now: the guest is stopped once migrated.)
    let c_block = c_hint_block(&mut vm)?;
    fill_random_and_free(&mut vm, HINT_DIRTY_MIB)?;
    let buddy = vm.run_ok("cat /proc/buddyinfo")?;
    vm.note(&format!("free blocks per order before migrating:\n{buddy}"));
    // What the guest holds for itself goes in the stream whatever the
    // driver does: about 60 MiB with 4 KiB pages, over 200 MiB with 64 KiB
    // (kernel, page cache and slabs in larger pages).
    let used = vm.meminfo_field("MemTotal")? - vm.meminfo_field("MemFree")?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("vm.migration");
    let stats = migrate_to_file(&mut vm, &file)?;
    let size = std::fs::metadata(&file)?.len();
    vm.note(&format!(
        "migration: stream {} for {} MiB of freed random data, the guest using {}; {stats:?}",
        format_bytes(size),
        HINT_DIRTY_MIB,
        format_bytes(used)
    ));
    // The debug tier's KASAN shadow (an eighth of RAM, outside MemTotal)
    // is in the stream whatever the driver does, and is not zero: free
    // pages' shadow is poisoned.
    let shadow = match Tier::current()? {
        Tier::Debug => ram / 8,
        Tier::Base => 0,
    };
    let allowed = used + HINT_DIRTY_MIB * MIB / 2 + shadow;
    // C hints blocks of MAX_PAGE_ORDER: 4 MiB with 4 KiB pages, but 32 MiB
    // with 16 KiB and 512 MiB with 64 KiB, which the guest's free memory
    // seldom holds. Recorded there, not asserted; ours hints 4 MiB blocks.
    if driver == Driver::C && c_block > HINT_BLOCK && size >= allowed {
        vm.note(&format!(
            "C falls short here, as known: hint blocks of {} left a stream of {}",
            format_bytes(c_block),
            format_bytes(size)
        ));
    } else {
        ensure!(
            size < allowed,
            "the migration stream is {} although {} MiB of it were free pages the guest should \
             have hinted (allowed: the {} the guest used, plus half of them{})",
            format_bytes(size),
            HINT_DIRTY_MIB,
            format_bytes(used),
            if shadow > 0 {
                format!(", plus {} of KASAN shadow", format_bytes(shadow))
            } else {
                String::new()
            }
        );
    }
    drop(vm);

    let mut dst = Vm::boot(
        VmConfig {
            name: format!("{}-hint-destination", driver.load_param()),
            ..cfg
        }
        .incoming(&file),
    )
    .context("resuming the migrated VM")?;
    ensure!(
        dst.query_balloon_actual()? == target,
        "the resumed VM lost the balloon"
    );
    let up = dst.run_ok("cat /proc/uptime")?;
    dst.note(&format!("resumed guest running, uptime {}", up.trim()));
    balloon_to(&mut dst, target_for(ram, 30))?;
    balloon_to(&mut dst, ram)?;
    dst.shutdown()
}

/// Free page hinting holds the guest's free memory while a migration runs;
/// that memory must stay reclaimable (spec 5.5.6.8: the driver may reuse
/// hinted pages at any time). With a migration slowed to 4 MiB/s (it lasts
/// for the whole test) and the driver holding what it hinted, a workload
/// needing 70 % of what the guest had available completes without an OOM
/// kill: the driver's shrinker gives hinted blocks back. After the
/// migration is cancelled, the rest of the hinted memory comes back.
pub fn hinting_under_memory_pressure(driver: Driver) -> Result<()> {
    // As the hinting migration above: no disks, one NUMA node.
    let cfg = config(driver, "hint-pressure")
        .free_page_hint(true)
        .data_disk_mib(None)
        .swap_mib(None)
        .numa_nodes(1);
    let mut vm = Vm::boot(cfg)?;
    ensure!(
        has_bit(&negotiated_features(&mut vm)?, bit::FREE_PAGE_HINT),
        "FREE_PAGE_HINT not negotiated"
    );
    let avail0 = vm.meminfo_field("MemAvailable")?;
    let kills0 = vmstat(&mut vm, "oom_kill")?;
    vm.start_discarded_migration(4 << 20)?;
    let hinting = vm.wait_until(
        "the driver to hold a third of the free memory as hints",
        Duration::from_secs(60),
        Duration::from_millis(500),
        |vm| {
            let free = vm.meminfo_field("MemFree")?;
            Ok(Wait::when(free < avail0 / 3, free))
        },
    );
    let free_hinting = match hinting {
        Ok(free) => free,
        Err(e) => {
            vm.cancel_migration(Duration::from_millis(100))?;
            return Err(e.context("free page hinting did not start: nothing to test"));
        }
    };
    let status = vm.qmp().execute(&qapi::qmp::query_migrate {})?.status;
    ensure!(
        status == Some(qapi::qmp::MigrationStatus::active),
        "the migration is {status:?}, not active, before the workload"
    );
    let hog_mib = avail0 * 7 / 10 / MIB;
    let t0 = Instant::now();
    let hog = vm.run_timeout(
        &format!("memhog -m {hog_mib} 2>&1"),
        Duration::from_secs(300),
    )?;
    let hog_time = t0.elapsed();
    let killed = vmstat(&mut vm, "oom_kill")? - kills0;
    let status = vm.qmp().execute(&qapi::qmp::query_migrate {})?.status;
    let ended = vm.cancel_migration(Duration::from_millis(100))?;
    vm.note(&format!(
        "{driver}: MemAvailable {} before; MemFree {} while hinting; memhog {hog_mib} MiB exited \
         {} in {hog_time:.2?} with the migration {status:?} (it then ended {ended:?}); OOM \
         kills {killed}",
        format_bytes(avail0),
        format_bytes(free_hinting),
        hog.code
    ));
    ensure!(
        hog.code == 0 && killed == 0,
        "{driver}: the workload was killed (exit {}, {killed} OOM kills) while the driver held \
         hinted memory: {}",
        hog.code,
        hog.output.trim()
    );
    let back = vm.wait_until(
        "the hinted memory to come back after the migration",
        Duration::from_secs(60),
        Duration::from_millis(500),
        |vm| {
            let a = vm.meminfo_field("MemAvailable")?;
            Ok(Wait::when(a > avail0 * 8 / 10, a))
        },
    )?;
    vm.note(&format!(
        "{driver}: MemAvailable {} after the migration",
        format_bytes(back)
    ));
    vm.shutdown()
}
