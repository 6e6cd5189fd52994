//! The rules themselves: each takes the target (and what it needs to know) and returns what it
//! found, `Ok` for PASS with a detail, `Err` for FAIL with the evidence.

use std::time::{Duration, Instant};

use vfu::device::{BAR0_REGION_INDEX, CONFIG_REGION_INDEX};
use vfu::Errno;

use super::*;

pub(super) fn bar0_size(t: &mut dyn Target) -> Result<String, String> {
    let info = t
        .region_info(BAR0_REGION_INDEX)
        .map_err(|e| format!("{e:#}"))?;
    if info.size == BAR0_SIZE {
        Ok(format!("{:#x} bytes", info.size))
    } else {
        Err(format!("size {:#x}, expected {BAR0_SIZE:#x}", info.size))
    }
}

/// `N` bytes of config space at `offset`.
fn config_read<const N: usize>(t: &mut dyn Target, offset: u64) -> Result<[u8; N], String> {
    let bytes = t
        .read(CONFIG_REGION_INDEX, offset, N as u32)
        .map_err(|e| format!("config read at {offset:#x}: {e:#}"))?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| format!("config read at {offset:#x} returned {} bytes", bytes.len()))
}

/// Writes `bytes` to config space at `offset`.
fn config_write(t: &mut dyn Target, offset: u64, bytes: &[u8]) -> Result<(), String> {
    t.write(CONFIG_REGION_INDEX, offset, bytes)
        .map_err(|e| format!("config write at {offset:#x}: {e:#}"))
}

pub(super) fn config_read32(t: &mut dyn Target, offset: u64) -> Result<u32, String> {
    config_read::<4>(t, offset).map(u32::from_le_bytes)
}

pub(super) fn config_write32(t: &mut dyn Target, offset: u64, value: u32) -> Result<(), String> {
    config_write(t, offset, &value.to_le_bytes())
}

pub(super) fn identity(t: &mut dyn Target) -> Result<String, String> {
    let id = config_read32(t, 0)?;
    let vendor = (id & 0xffff) as u16;
    let device = (id >> 16) as u16;
    if vendor != 0x10de {
        return Err(format!("vendor {vendor:#06x}"));
    }
    if !KNOWN_DEVICE_IDS.contains(&device) {
        return Err(format!(
            "device id {device:#06x} is not in the upstream table"
        ));
    }
    Ok(format!("10de:{device:04x}"))
}

pub(super) fn class_code(t: &mut dyn Target) -> Result<String, String> {
    let class = config_read32(t, 8)? >> 16;
    if class == 0x0302 {
        Ok("0x0302".into())
    } else {
        Err(format!("class {class:#06x}"))
    }
}

pub(super) fn readiness(t: &mut dyn Target, timeout: Duration) -> Result<String, String> {
    let start = Instant::now();
    loop {
        let mut values = Vec::new();
        for (offset, _) in READY_REGISTERS {
            let bytes = t
                .read(BAR0_REGION_INDEX, offset, 4)
                .map_err(|e| format!("BAR0 read at {offset:#x}: {e:#}"))?;
            let arr: [u8; 4] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| "short BAR0 read".to_string())?;
            values.push(u32::from_le_bytes(arr));
        }
        if values.iter().all(|v| *v == READY_VALUE) {
            return Ok(format!("ready after {:.1}s", start.elapsed().as_secs_f64()));
        }
        if start.elapsed() >= timeout {
            let detail: Vec<String> = READY_REGISTERS
                .iter()
                .zip(&values)
                .map(|((off, name), v)| format!("{name} ({off:#x}) = {v:#x}"))
                .collect();
            return Err(format!(
                "not ready after {:?}: {}",
                timeout,
                detail.join(", ")
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(super) fn pow2(size: u64) -> Result<String, String> {
    if size.is_power_of_two() {
        Ok(format!("{size:#x}"))
    } else {
        Err(format!("size {size:#x}"))
    }
}

pub(super) fn flags(f: u32) -> Result<String, String> {
    let want = FLAG_READ | FLAG_WRITE | FLAG_MMAP;
    if f & want == want {
        Ok(format!("{f:#x}"))
    } else {
        Err(format!("flags {f:#x}"))
    }
}

pub(super) fn sparse(info: &RegionView) -> Result<String, String> {
    match info.sparse.as_slice() {
        [area] if area.offset == 0 && area.size > 0 && area.size <= info.size => {
            // roundup_pow_of_two(memlength) == size means memlength is in (size/2, size].
            if area.size > info.size / 2 {
                Ok(format!("[0, {:#x}) of {:#x}", area.size, info.size))
            } else {
                Err(format!(
                    "memlength {:#x} rounds up to less than size {:#x}",
                    area.size, info.size
                ))
            }
        }
        areas => Err(format!("areas {areas:?}")),
    }
}

pub(super) fn fd_present(info: &RegionView) -> Result<String, String> {
    if info.fd.is_some() {
        Ok(format!("fd offset {:#x}", info.fd_offset))
    } else {
        Err("no fd".into())
    }
}

/// Writes a word through REGION_WRITE and reads it through the mmap, and the reverse.
pub(super) fn mmap_coherent(
    t: &mut dyn Target,
    index: u32,
    info: &RegionView,
) -> Result<String, String> {
    let Some(fd) = info.fd.as_ref() else {
        return Err("no fd".into());
    };
    let Some(area) = info.sparse.first() else {
        return Err("no sparse area".into());
    };
    let len = area.size.min(1 << 20);
    let map = super::shared_map::Mapping::new(fd, info.fd_offset + area.offset, len)
        .map_err(|e| format!("mmap: {e:#}"))?;
    let offset = area.offset;
    let original = t.read(index, offset, 8).map_err(|e| e.to_string())?;
    t.write(index, offset, &0x5a5a_1234_dead_beef_u64.to_le_bytes())
        .map_err(|e| e.to_string())?;
    let seen = map.read_u64(0).map_err(|e| format!("mmap: {e:#}"));
    let stored = map
        .write_u64(0, 0x0123_4567_89ab_cdef)
        .map_err(|e| format!("mmap: {e:#}"));
    let back = t.read(index, offset, 8).map_err(|e| e.to_string())?;
    let _ = t.write(index, offset, &original);
    let seen = seen?;
    stored?;
    if seen != 0x5a5a_1234_dead_beef {
        return Err(format!("mmap saw {seen:#x} after REGION_WRITE"));
    }
    if back != 0x0123_4567_89ab_cdef_u64.to_le_bytes() {
        return Err(format!(
            "REGION_READ saw {back:02x?} after a store through the mmap"
        ));
    }
    Ok("both directions".into())
}

pub(super) fn memory_rw(t: &mut dyn Target, index: u32, memlength: u64) -> Result<String, String> {
    let offset = memlength.checked_sub(8).ok_or("memlength under 8 bytes")?;
    let original = t.read(index, offset, 8).map_err(|e| e.to_string())?;
    let pattern = 0xa5c3_0f96_1e2d_3c4b_u64.to_le_bytes();
    t.write(index, offset, &pattern)
        .map_err(|e| e.to_string())?;
    let back = t.read(index, offset, 8).map_err(|e| e.to_string())?;
    let _ = t.write(index, offset, &original);
    if back == pattern {
        Ok(format!("last word at {offset:#x}"))
    } else {
        Err(format!("read back {back:02x?}"))
    }
}

pub(super) fn past_memory_read(
    t: &mut dyn Target,
    index: u32,
    memlength: u64,
    size: u64,
) -> Result<String, String> {
    if memlength >= size {
        return Ok("no tail (memory is a power of two)".into());
    }
    let count = u32::try_from((size - memlength).min(64)).unwrap_or(64);
    let data = t.read(index, memlength, count).map_err(|e| e.to_string())?;
    if data.len() == count as usize && data.iter().all(|b| *b == 0xff) {
        Ok(format!("{count} bytes at {memlength:#x}"))
    } else {
        Err(format!("read {data:02x?}"))
    }
}

pub(super) fn past_memory_write(
    t: &mut dyn Target,
    index: u32,
    memlength: u64,
    size: u64,
) -> Result<String, String> {
    if memlength >= size {
        return Ok("no tail (memory is a power of two)".into());
    }
    let offset = size - 8;
    t.write(index, offset, &[0u8; 8])
        .map_err(|e| format!("write refused: {e}"))?;
    let data = t.read(index, offset, 8).map_err(|e| e.to_string())?;
    if data == [0xff; 8] {
        Ok(format!("at {offset:#x}"))
    } else {
        Err(format!("read back {data:02x?}"))
    }
}

pub(super) fn clipped(t: &mut dyn Target, index: u32, size: u64) -> Result<String, String> {
    let data = t
        .read(index, size - 4, 8)
        .map_err(|e| format!("read across the end refused: {e}"))?;
    if data.len() == 4 {
        Ok("8-byte read at size-4 returned 4 bytes".into())
    } else {
        Err(format!("returned {} bytes", data.len()))
    }
}

pub(super) fn at_end_einval(t: &mut dyn Target, index: u32, size: u64) -> Result<String, String> {
    match t.read(index, size, 4) {
        Err(CheckError::Errno(Errno::EINVAL)) => Ok("EINVAL".into()),
        Err(e) => Err(format!("expected EINVAL, got {e}")),
        Ok(d) => Err(format!("expected EINVAL, read {} bytes", d.len())),
    }
}

pub(super) fn bar_offset(bar: u32) -> u64 {
    0x10 + 4 * u64::from(bar)
}

pub(super) fn sizing_probe(t: &mut dyn Target, bar: u32, size: u64) -> Result<String, String> {
    let lo = bar_offset(bar);
    let (old_lo, old_hi) = (config_read32(t, lo)?, config_read32(t, lo + 4)?);
    config_write32(t, lo, u32::MAX)?;
    config_write32(t, lo + 4, u32::MAX)?;
    let (got_lo, got_hi) = (config_read32(t, lo)?, config_read32(t, lo + 4)?);
    config_write32(t, lo, old_lo)?;
    config_write32(t, lo + 4, old_hi)?;
    let got = u64::from(got_lo) | (u64::from(got_hi) << 32);
    let want = !(size - 1) | 0xc;
    if got == want {
        Ok(format!("{got:#018x}"))
    } else {
        Err(format!("read {got:#018x}, expected {want:#018x}"))
    }
}

/// VFIO_DEVICE_RESET zeroes the variant's emulated BARs (`nvgrace_gpu_ioctl` calls
/// `nvgrace_gpu_init_fake_bar_emu_regs`) and leaves a core BAR's register as the client wrote
/// it (`vfio_pci_ioctl_reset` does not touch the virtual config).
pub(super) fn reset_clears_bars(
    t: &mut dyn Target,
    emulated: &[u32],
    core: &[u32],
) -> Result<String, String> {
    for bar in emulated.iter().chain(core) {
        config_write32(t, bar_offset(*bar), 0x8000_0000)?;
        config_write32(t, bar_offset(*bar) + 4, 0x1)?;
    }
    let written: Vec<(u32, u32, u32)> = core
        .iter()
        .map(|bar| {
            let lo = config_read32(t, bar_offset(*bar))?;
            let hi = config_read32(t, bar_offset(*bar) + 4)?;
            Ok((*bar, lo, hi))
        })
        .collect::<Result<_, String>>()?;
    t.reset().map_err(|e| format!("reset: {e:#}"))?;
    for bar in emulated {
        let lo = config_read32(t, bar_offset(*bar))?;
        let hi = config_read32(t, bar_offset(*bar) + 4)?;
        if lo != 0xc || hi != 0 {
            return Err(format!("BAR{bar} reads {hi:#x}:{lo:#x} after reset"));
        }
    }
    for (bar, lo, hi) in written {
        let now = (
            config_read32(t, bar_offset(bar))?,
            config_read32(t, bar_offset(bar) + 4)?,
        );
        if now != (lo, hi) {
            return Err(format!(
                "core BAR{bar} reads {:#x}:{:#x} after reset, {hi:#x}:{lo:#x} before",
                now.1, now.0
            ));
        }
    }
    Ok(format!(
        "{} emulated BAR(s) cleared, {} core BAR(s) kept",
        emulated.len(),
        core.len()
    ))
}

pub(super) fn config_read16(t: &mut dyn Target, offset: u64) -> Result<u16, String> {
    config_read::<2>(t, offset).map(u16::from_le_bytes)
}

pub(super) fn config_write16(t: &mut dyn Target, offset: u64, value: u16) -> Result<(), String> {
    config_write(t, offset, &value.to_le_bytes())
}

/// The reset rule (6.19+: `nvgrace_gpu_check_device_ready`): memory decode off, reset, and the
/// first REGION_READ of memory region `index` must be EIO when `checked`, succeed otherwise;
/// with decode on the read succeeds (and clears the check, so the device is left usable).
/// COMMAND must survive the reset, and is restored at the end whatever happened.
/// Also says what the first access did (`Some(true)`: EIO, `Some(false)`: it succeeded), which
/// tells a 6.19+ server from an older one.
pub(super) fn reset_decode(
    t: &mut dyn Target,
    index: Option<u32>,
    checked: bool,
) -> (Result<String, String>, Option<bool>) {
    let Some(index) = index else {
        return (
            Ok(format!("{SKIPPED}a core-only device has no memory region")),
            None,
        );
    };
    let command = match config_read16(t, COMMAND_OFFSET) {
        Ok(c) => c,
        Err(e) => return (Err(e), None),
    };
    let (result, eio) = reset_decode_steps(t, index, command, checked);
    let restored = config_write16(t, COMMAND_OFFSET, command);
    (result.and_then(|detail| restored.map(|()| detail)), eio)
}

pub(super) fn reset_decode_steps(
    t: &mut dyn Target,
    index: u32,
    command: u16,
    checked: bool,
) -> (Result<String, String>, Option<bool>) {
    let off = command & !MEMORY_SPACE_ENABLE;
    let mut first = None;
    let result = (|| {
        config_write16(t, COMMAND_OFFSET, off)?;
        t.reset().map_err(|e| format!("reset: {e:#}"))?;
        let kept = config_read16(t, COMMAND_OFFSET)?;
        let read = t.read(index, 0, 4);
        first = match &read {
            Err(CheckError::Errno(Errno::EIO)) => Some(true),
            Ok(_) => Some(false),
            Err(_) => None,
        };
        // Decode on, then a read that must succeed under every version (it also ends the check).
        config_write16(t, COMMAND_OFFSET, command | MEMORY_SPACE_ENABLE)?;
        let second = t.read(index, 0, 4);
        if kept != off {
            return Err(format!(
                "COMMAND {off:#06x} reads {kept:#06x} after the reset (it must survive it)"
            ));
        }
        match (checked, read) {
            (true, Err(CheckError::Errno(Errno::EIO))) => {}
            (true, Err(e)) => return Err(format!("decode off: expected EIO, got {e}")),
            (true, Ok(_)) => {
                return Err("decode off: the read succeeded, expected EIO (6.19+)".into());
            }
            (false, Err(e)) => {
                return Err(format!(
                    "decode off: {e}; before 6.19 the access after a reset is not checked"
                ));
            }
            (false, Ok(_)) => {}
        }
        match second {
            Ok(_) => Ok(format!(
                "region {index}: {}, then with decode on the read succeeds",
                if checked {
                    "EIO with decode off"
                } else {
                    "decode off reads"
                }
            )),
            Err(e) => Err(format!("decode on: the read failed: {e}")),
        }
    })();
    (result, first)
}

/// Memory decode (COMMAND bit 1) must be on for any BAR access to answer: with it off
/// `vfio_pci_bar_rw` answers EIO. Off here means a reset left it off or this client's own
/// session turned it off (a server opens the device for each client with decode on). The
/// checker reports it and does not turn it on: it must not hide the device's state.
/// Returns the rule's result and whether decode is off.
pub(super) fn memory_decode(t: &mut dyn Target) -> (Result<String, String>, bool) {
    match config_read16(t, COMMAND_OFFSET) {
        Ok(c) if c & MEMORY_SPACE_ENABLE != 0 => (Ok(format!("COMMAND {c:#06x}")), false),
        Ok(c) => (
            Err(format!(
                "COMMAND {c:#06x}: memory decode is off (after a reset, or turned off by this \
                 client), so every BAR access answers EIO; the readiness and memory rules are \
                 skipped"
            )),
            true,
        ),
        Err(e) => (Err(e), false),
    }
}

/// Blackwell's BAR1: the whole BAR is mappable through the region fd (no sparse area); maps its
/// last MiB and checks it against REGION_READ/REGION_WRITE at the BAR's end.
pub(super) fn bar1_mmap(t: &mut dyn Target, info: &RegionView) -> Result<String, String> {
    let Some(fd) = info.fd.as_ref() else {
        return Err("no fd".into());
    };
    let len = info.size.min(1 << 20);
    let start = info.size - len;
    let offset = info.size.checked_sub(8).ok_or("BAR1 under 8 bytes")?;
    let at = usize::try_from(offset - start).map_err(|e| e.to_string())?;
    let map = super::shared_map::Mapping::new(fd, info.fd_offset + start, len)
        .map_err(|e| format!("mmap of [{start:#x}, {:#x}): {e:#}", info.size))?;
    let original = t
        .read(BAR1_REGION_INDEX, offset, 8)
        .map_err(|e| e.to_string())?;
    t.write(
        BAR1_REGION_INDEX,
        offset,
        &0x5a5a_1234_dead_beef_u64.to_le_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let seen = map.read_u64(at).map_err(|e| format!("mmap: {e:#}"));
    let _ = t.write(BAR1_REGION_INDEX, offset, &original);
    let seen = seen?;
    if seen == 0x5a5a_1234_dead_beef {
        Ok(format!("last word at {offset:#x} seen through the mapping"))
    } else {
        Err(format!(
            "mmap saw {seen:#x} after REGION_WRITE at {offset:#x}"
        ))
    }
}
