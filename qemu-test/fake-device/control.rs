// SPDX-License-Identifier: GPL-2.0

//! Control and observation in debugfs: the files of
//! `/sys/kernel/debug/virtio_balloon_fake/`.

use super::*;

/// Reads a short word written to a debugfs file.
pub(super) fn read_word(reader: &mut UserSliceReader) -> Result<([u8; 32], usize)> {
    let mut buf = [0u8; 32];
    let n = reader.len().min(buf.len());
    reader.read_slice(&mut buf[..n])?;
    let s = core::str::from_utf8(&buf[..n]).map_err(|_| EINVAL)?.trim();
    let mut out = [0u8; 32];
    out[..s.len()].copy_from_slice(s.as_bytes());
    Ok((out, s.len()))
}

pub(super) fn write_target(dev: &Arc<FakeDevice>, reader: &mut UserSliceReader) -> Result {
    dev.set_target(read_u32(reader)?);
    Ok(())
}

pub(super) fn read_target(
    dev: &Arc<FakeDevice>,
    f: &mut core::fmt::Formatter<'_>,
) -> core::fmt::Result {
    writeln!(f, "{}", dev.num_pages.load(Relaxed))
}

pub(super) fn write_mode(dev: &Arc<FakeDevice>, reader: &mut UserSliceReader) -> Result {
    let (w, n) = read_word(reader)?;
    let s = core::str::from_utf8(&w[..n]).map_err(|_| EINVAL)?;
    let (i, m) = MODES
        .iter()
        .enumerate()
        .find(|(_, (name, _))| *name == s)
        .ok_or(EINVAL)?;
    dev.mode.store(i as u32, Relaxed);
    pr_info!("mode {}\n", m.1.name());
    Ok(())
}

pub(super) fn read_mode(
    dev: &Arc<FakeDevice>,
    f: &mut core::fmt::Formatter<'_>,
) -> core::fmt::Result {
    writeln!(f, "{}", dev.mode().name())
}

pub(super) fn write_release(dev: &Arc<FakeDevice>, _reader: &mut UserSliceReader) -> Result {
    dev.release_held();
    Ok(())
}

pub(super) fn write_break(dev: &Arc<FakeDevice>, _reader: &mut UserSliceReader) -> Result {
    if dev.registered.load(Relaxed) {
        let mut st = dev.state.lock();
        st.broken = true;
        pr_info!("breaking the device\n");
        // SAFETY: Our registered device.
        unsafe { bindings::virtio_break_device(dev.vdev()) };
    }
    Ok(())
}

pub(super) fn write_unplug(dev: &Arc<FakeDevice>, _reader: &mut UserSliceReader) -> Result {
    if let Some(ms) = dev.unplug() {
        pr_info!("unplugged; the driver's removal took {ms} ms\n");
    }
    Ok(())
}

pub(super) fn read_stats(
    dev: &Arc<FakeDevice>,
    f: &mut core::fmt::Formatter<'_>,
) -> core::fmt::Result {
    writeln!(f, "actual: {}", dev.actual.load(Relaxed))?;
    writeln!(f, "inflated_pfns: {}", dev.inflated_pfns.load(Relaxed))?;
    writeln!(f, "deflated_pfns: {}", dev.deflated_pfns.load(Relaxed))?;
    writeln!(
        f,
        "deflated_never_inflated: {}",
        dev.unknown_deflated.load(Relaxed)
    )?;
    writeln!(f, "buffers_returned: {}", dev.returned.load(Relaxed))?;
    writeln!(f, "buffers_kept: {}", dev.kept.load(Relaxed))?;
    let (reports_held, late_pending) = {
        let st = dev.state.lock();
        let held = st.held.iter().filter(|h| h.0 == REPORTING).count();
        (held, st.late.len())
    };
    writeln!(f, "reports: {}", dev.reports.load(Relaxed))?;
    writeln!(f, "reports_kept: {}", dev.reports_kept.load(Relaxed))?;
    writeln!(f, "reports_held: {reports_held}")?;
    writeln!(f, "reported_bytes: {}", dev.reported_bytes.load(Relaxed))?;
    writeln!(f, "buffers_delayed: {}", dev.delayed.load(Relaxed))?;
    writeln!(f, "buffers_late_pending: {late_pending}")?;
    writeln!(f, "registered: {}", dev.registered.load(Relaxed))
}

/// Reads a number written to a debugfs file.
pub(super) fn read_u32(reader: &mut UserSliceReader) -> Result<u32> {
    let (w, n) = read_word(reader)?;
    let s = core::str::from_utf8(&w[..n]).map_err(|_| EINVAL)?;
    s.parse().map_err(|_| EINVAL)
}

pub(super) fn write_delay(dev: &Arc<FakeDevice>, reader: &mut UserSliceReader) -> Result {
    dev.delay_ms.store(read_u32(reader)?, Relaxed);
    Ok(())
}

pub(super) fn read_delay(
    dev: &Arc<FakeDevice>,
    f: &mut core::fmt::Formatter<'_>,
) -> core::fmt::Result {
    writeln!(f, "{}", dev.delay_ms.load(Relaxed))
}

pub(super) fn write_keep_reports(dev: &Arc<FakeDevice>, reader: &mut UserSliceReader) -> Result {
    dev.keep_reports.store(read_u32(reader)?, Relaxed);
    Ok(())
}

pub(super) fn read_keep_reports(
    dev: &Arc<FakeDevice>,
    f: &mut core::fmt::Formatter<'_>,
) -> core::fmt::Result {
    writeln!(f, "{}", dev.keep_reports.load(Relaxed))
}

pub(super) type DevFile = Pin<KBox<debugfs::File<Arc<FakeDevice>>>>;

/// Creates a debugfs file of the device and keeps it in `files`.
pub(super) fn add_file<E>(
    files: &mut KVec<DevFile>,
    file: impl PinInit<debugfs::File<Arc<FakeDevice>>, E>,
) -> Result
where
    Error: From<E>,
{
    files.push(KBox::pin_init(file, GFP_KERNEL)?, GFP_KERNEL)?;
    Ok(())
}
