//! `vgrace check`: a conformance client for any vfio-user server that claims to be an nvgrace
//! device. It checks the ABI rules one by one and prints PASS/FAIL per rule.
//!
//! The checks restore what they change (memory words, BAR registers) where they can, but they do
//! reset the device once, so run it against a device no guest is using.

use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use vfu::client::Client;
use vfu::device::{BAR0_REGION_INDEX, CONFIG_REGION_INDEX};
use vfu::{Errno, SparseArea};

use crate::cli::CheckArgs;

// These constants deliberately repeat what vgrace-device defines: `check` is an independent
// oracle that judges any server (ours included) against the upstream ABI, so it must not take
// the values from the implementation it checks.

/// Device ids of the upstream table (plus the seed patch's 0x2343).
const KNOWN_DEVICE_IDS: [u16; 6] = [0x2342, 0x2343, 0x2345, 0x2348, 0x2941, 0x31c2];
/// The readiness registers and the value that means ready.
const READY_REGISTERS: [(u64, &str); 2] = [(0x1498, "C2C link"), (0x200bc, "HBM training")];
const READY_VALUE: u32 = 0xff;

/// What the checks need from a server; implemented by the vfu client, and by fakes in tests.
pub trait Target {
    /// REGION_INFO: flags, size, fd offset, sparse areas, and the fd when one came.
    fn region_info(&mut self, index: u32) -> Result<RegionView>;
    /// REGION_READ; returns the bytes the server returned (may be fewer than asked).
    fn read(&mut self, index: u32, offset: u64, count: u32) -> Result<Vec<u8>, CheckError>;
    /// REGION_WRITE.
    fn write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), CheckError>;
    /// DEVICE_RESET.
    fn reset(&mut self) -> Result<()>;
}

/// A failed access: an errno from the server, or anything else.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The server answered with an error reply.
    #[error("the server answered {0}")]
    Errno(Errno),
    /// Anything else (I/O, protocol).
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// REGION_INFO as the checks see it.
#[derive(Debug)]
pub struct RegionView {
    /// VFIO_REGION_INFO_FLAG_* bits.
    pub flags: u32,
    /// Region size.
    pub size: u64,
    /// Offset of the region in its fd.
    pub fd_offset: u64,
    /// Sparse-mmap areas.
    pub sparse: Vec<SparseArea>,
    /// The region fd.
    pub fd: Option<OwnedFd>,
}

const FLAG_READ: u32 = 1;
const FLAG_WRITE: u32 = 2;
const FLAG_MMAP: u32 = 4;

/// One rule's outcome.
struct Outcome {
    rule: String,
    result: Result<String, String>,
}

/// Runs the checks against the server at `--socket`.
pub fn run(args: &CheckArgs) -> Result<ExitCode> {
    let client = Client::connect(&args.socket)
        .with_context(|| format!("cannot connect to {}", args.socket.display()))?;
    let mut target = ClientTarget { client };
    let outcomes = check_all(&mut target, args.ready_timeout);
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    for o in &outcomes {
        match &o.result {
            Ok(detail) => println!("PASS  {:<44} {detail}", o.rule),
            Err(why) => println!("FAIL  {:<44} {why}", o.rule),
        }
    }
    println!("{} passed, {} failed", outcomes.len() - failed, failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs every rule; a rule that cannot even be attempted is a FAIL, never an abort.
fn check_all(t: &mut dyn Target, ready_timeout: Duration) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut push = |rule: &str, result: Result<String, String>| {
        out.push(Outcome {
            rule: rule.to_string(),
            result,
        });
    };

    push("identity: vendor 0x10de, known device id", identity(t));
    push("identity: class 3D controller (0x0302)", class_code(t));
    push(
        "bar0: readiness registers read 0xff",
        readiness(t, ready_timeout),
    );

    let mut memory_regions = Vec::new();
    for index in [2u32, 4] {
        match t.region_info(index) {
            // Blackwell from Linux 6.14: region 2 is the device's real BAR1, a core BAR with no
            // sparse area (the whole BAR is mappable), not a memory region of the variant.
            Ok(info) if index == 2 && info.size > 0 && info.sparse.is_empty() => push(
                "region 2: the real BAR1 (power-of-two size, READ|WRITE|MMAP, no sparse area)",
                pow2(info.size).and_then(|_| {
                    if info.flags & (FLAG_READ | FLAG_WRITE | FLAG_MMAP)
                        == FLAG_READ | FLAG_WRITE | FLAG_MMAP
                    {
                        Ok(format!("{:#x} bytes", info.size))
                    } else {
                        Err(format!("flags {:#x}", info.flags))
                    }
                }),
            ),
            Ok(info) if info.size > 0 => memory_regions.push((index, info)),
            Ok(_) => {}
            Err(e) => push(
                &format!("region {index}: REGION_INFO answers"),
                Err(format!("{e:#}")),
            ),
        }
    }
    push(
        "memory: at least one memory region (BAR2/BAR4)",
        if memory_regions.is_empty() {
            Err("neither region 2 nor region 4 has a size".into())
        } else {
            Ok(format!("{} region(s)", memory_regions.len()))
        },
    );
    for (index, info) in &memory_regions {
        let bar = *index;
        let memlength = info.sparse.first().map(|a| a.size).unwrap_or(0);
        push(
            &format!("region {index}: size is a power of two"),
            pow2(info.size),
        );
        push(
            &format!("region {index}: flags READ|WRITE|MMAP"),
            flags(info.flags),
        );
        push(
            &format!("region {index}: one sparse area [0, memlength)"),
            sparse(info),
        );
        push(
            &format!("region {index}: one fd with the region"),
            fd_present(info),
        );
        push(
            &format!("region {index}: mmap of the fd is coherent"),
            mmap_coherent(t, *index, info),
        );
        push(
            &format!("region {index}: memory reads back writes"),
            memory_rw(t, *index, memlength),
        );
        push(
            &format!("region {index}: reads past memory are all ones"),
            past_memory_read(t, *index, memlength, info.size),
        );
        push(
            &format!("region {index}: writes past memory are dropped"),
            past_memory_write(t, *index, memlength, info.size),
        );
        push(
            &format!("region {index}: access clipped at BAR end"),
            clipped(t, *index, info.size),
        );
        push(
            &format!("region {index}: offset at BAR end is EINVAL"),
            at_end_einval(t, *index, info.size),
        );
        push(
            &format!("BAR{bar}: sizing probe returns the size mask"),
            sizing_probe(t, bar, info.size),
        );
    }
    push(
        "reset: emulated BARs read back as 0 after reset",
        reset_clears_bars(t, &memory_regions),
    );
    out
}

fn config_read32(t: &mut dyn Target, offset: u64) -> Result<u32, String> {
    let bytes = t
        .read(CONFIG_REGION_INDEX, offset, 4)
        .map_err(|e| format!("config read at {offset:#x}: {e:#}"))?;
    let arr: [u8; 4] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| format!("config read at {offset:#x} returned {} bytes", bytes.len()))?;
    Ok(u32::from_le_bytes(arr))
}

fn config_write32(t: &mut dyn Target, offset: u64, value: u32) -> Result<(), String> {
    t.write(CONFIG_REGION_INDEX, offset, &value.to_le_bytes())
        .map_err(|e| format!("config write at {offset:#x}: {e:#}"))
}

fn identity(t: &mut dyn Target) -> Result<String, String> {
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

fn class_code(t: &mut dyn Target) -> Result<String, String> {
    let class = config_read32(t, 8)? >> 16;
    if class == 0x0302 {
        Ok("0x0302".into())
    } else {
        Err(format!("class {class:#06x}"))
    }
}

fn readiness(t: &mut dyn Target, timeout: Duration) -> Result<String, String> {
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

fn pow2(size: u64) -> Result<String, String> {
    if size.is_power_of_two() {
        Ok(format!("{size:#x}"))
    } else {
        Err(format!("size {size:#x}"))
    }
}

fn flags(f: u32) -> Result<String, String> {
    let want = FLAG_READ | FLAG_WRITE | FLAG_MMAP;
    if f & want == want {
        Ok(format!("{f:#x}"))
    } else {
        Err(format!("flags {f:#x}"))
    }
}

fn sparse(info: &RegionView) -> Result<String, String> {
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

fn fd_present(info: &RegionView) -> Result<String, String> {
    if info.fd.is_some() {
        Ok(format!("fd offset {:#x}", info.fd_offset))
    } else {
        Err("no fd".into())
    }
}

/// Writes a word through REGION_WRITE and reads it through the mmap, and the reverse.
fn mmap_coherent(t: &mut dyn Target, index: u32, info: &RegionView) -> Result<String, String> {
    let Some(fd) = info.fd.as_ref() else {
        return Err("no fd".into());
    };
    let Some(area) = info.sparse.first() else {
        return Err("no sparse area".into());
    };
    let len = area.size.min(1 << 20);
    let map = crate::mapping::Mapping::new(fd, info.fd_offset + area.offset, len)
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

fn memory_rw(t: &mut dyn Target, index: u32, memlength: u64) -> Result<String, String> {
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

fn past_memory_read(
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

fn past_memory_write(
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

fn clipped(t: &mut dyn Target, index: u32, size: u64) -> Result<String, String> {
    let data = t
        .read(index, size - 4, 8)
        .map_err(|e| format!("read across the end refused: {e}"))?;
    if data.len() == 4 {
        Ok("8-byte read at size-4 returned 4 bytes".into())
    } else {
        Err(format!("returned {} bytes", data.len()))
    }
}

fn at_end_einval(t: &mut dyn Target, index: u32, size: u64) -> Result<String, String> {
    match t.read(index, size, 4) {
        Err(CheckError::Errno(Errno::EINVAL)) => Ok("EINVAL".into()),
        Err(e) => Err(format!("expected EINVAL, got {e}")),
        Ok(d) => Err(format!("expected EINVAL, read {} bytes", d.len())),
    }
}

fn bar_offset(bar: u32) -> u64 {
    0x10 + 4 * u64::from(bar)
}

fn sizing_probe(t: &mut dyn Target, bar: u32, size: u64) -> Result<String, String> {
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

fn reset_clears_bars(t: &mut dyn Target, regions: &[(u32, RegionView)]) -> Result<String, String> {
    for (bar, _) in regions {
        config_write32(t, bar_offset(*bar), 0x8000_0000)?;
        config_write32(t, bar_offset(*bar) + 4, 0x1)?;
    }
    t.reset().map_err(|e| format!("reset: {e:#}"))?;
    for (bar, _) in regions {
        let lo = config_read32(t, bar_offset(*bar))?;
        let hi = config_read32(t, bar_offset(*bar) + 4)?;
        if lo != 0xc || hi != 0 {
            return Err(format!("BAR{bar} reads {hi:#x}:{lo:#x} after reset"));
        }
    }
    Ok(format!("{} BAR(s)", regions.len()))
}

/// The vfu client as a check target.
struct ClientTarget {
    client: Client,
}

impl Target for ClientTarget {
    fn region_info(&mut self, index: u32) -> Result<RegionView> {
        let r = self
            .client
            .region_info(index)
            .with_context(|| format!("REGION_INFO {index}"))?;
        Ok(RegionView {
            flags: r.info.flags,
            size: r.info.size,
            fd_offset: r.info.offset,
            sparse: r.sparse_areas,
            fd: r.fd,
        })
    }
    fn read(&mut self, index: u32, offset: u64, count: u32) -> Result<Vec<u8>, CheckError> {
        self.client
            .region_read(index, offset, count)
            .map_err(to_check_error)
    }
    fn write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), CheckError> {
        self.client
            .region_write(index, offset, data)
            .map(|_| ())
            .map_err(to_check_error)
    }
    fn reset(&mut self) -> Result<()> {
        Ok(self.client.reset()?)
    }
}

fn to_check_error(e: vfu::Error) -> CheckError {
    match e.remote_errno() {
        Some(errno) => CheckError::Errno(errno),
        None => CheckError::Other(e.into()),
    }
}
