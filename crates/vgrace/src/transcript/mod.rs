//! `vgrace transcript`: a fixed sequence of VFIO operations against one device, with the result
//! and errno of each, printed one per line in a canonical form, so that what the real
//! `nvgrace-gpu-vfio-pci` answers (kernel VFIO, `--vfio-device`) can be diffed line by line
//! against what `vgrace serve` answers (vfio-user, `--socket`). scripts/qemu-oracle.sh runs it
//! on both sides; DESIGN.md explains each line that still differs.
//!
//! The sequence: device, region and IRQ info (one index past the end too); every config dword
//! (runs of equal dwords folded) and the 4 KiB edge; each region at its start, its end, past its
//! end, and for memory regions around the end of memory (the all-ones tail); BAR sizing of every
//! BAR register; COMMAND memory decode off and on; VFIO_DEVICE_RESET; FLR through DevCtl; D3hot
//! through PMCSR; SET_IRQS per index and action; close and reopen. Memory is written before it
//! is read, so what the firmware left in it does not matter.

mod target;

use std::io::Write;
use std::os::fd::OwnedFd;

use anyhow::Result;
use nix::errno::Errno;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
};

pub use target::{IrqData, Region, Target};

const CONFIG: u32 = 7;
const CONFIG_SIZE: u64 = 4096;
const COMMAND: u64 = 0x04;
const COMMAND_MEMORY: u16 = 0x2;
/// BAR0's readiness registers (C2C link, HBM training).
const READY_REGS: [u64; 2] = [0x1498, 0x200bc];

/// Runs the transcript and prints it.
pub fn run(args: &crate::cli::TranscriptArgs) -> Result<()> {
    let mut target = match (&args.device.socket, &args.device.vfio_device) {
        (Some(p), _) => Target::user(p.clone())?,
        (None, Some(bdf)) => Target::kernel(bdf)?,
        (None, None) => anyhow::bail!("give --socket or --vfio-device"),
    };
    let lines = transcript(&mut target);
    let mut out = std::io::stdout().lock();
    for l in lines {
        writeln!(out, "{l}")?;
    }
    Ok(())
}

/// A result in the transcript's words: the value, or `ERR <errno name>`.
fn show<T>(r: Result<T, Errno>, f: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => f(v),
        Err(e) => format!("ERR {e:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "(0 bytes)".into();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The recorder: each operation appends one line.
struct Tape<'a> {
    t: &'a mut Target,
    lines: Vec<String>,
}

impl Tape<'_> {
    fn note(&mut self, s: String) {
        self.lines.push(s);
    }

    fn read(&mut self, index: u32, offset: u64, len: u32) -> Option<Vec<u8>> {
        let r = self.t.read(index, offset, len);
        let out = r.as_ref().ok().cloned();
        let line = format!("read {index} {offset:#x} {len} -> {}", show(r, |b| hex(&b)));
        self.note(line);
        out
    }

    fn write(&mut self, index: u32, offset: u64, data: &[u8]) {
        let r = self.t.write(index, offset, data);
        let line = format!(
            "write {index} {offset:#x} {} -> {}",
            hex(data),
            show(r, |n| format!("{n}"))
        );
        self.note(line);
    }

    /// A config read of `len` bytes as a number (None on error), recorded.
    fn cfg(&mut self, offset: u64, len: u32) -> Option<u64> {
        self.read(CONFIG, offset, len)
            .map(|b| b.iter().rev().fold(0u64, |a, x| (a << 8) | u64::from(*x)))
    }

    fn cfg_write(&mut self, offset: u64, value: u64, len: usize) {
        let bytes = value.to_le_bytes();
        self.write(CONFIG, offset, &bytes[..len.min(8)]);
    }
}

/// Runs the whole sequence against `t`.
pub fn transcript(t: &mut Target) -> Vec<String> {
    let mut tape = Tape {
        t,
        lines: Vec::new(),
    };
    let (regions, irqs) = device_info(&mut tape).unwrap_or((9, 5));
    let infos = region_infos(&mut tape, regions);
    let irq_counts = irq_infos(&mut tape, irqs);

    config_dwords(&mut tape);
    for (offset, len) in [
        (0xffc, 4),
        (0xffe, 4),
        (0x1000, 1),
        (0x1000, 4),
        (0x2000, 4),
    ] {
        tape.read(CONFIG, offset, len);
    }

    // Each region's edges; memory regions (a sparse area) around the end of memory too.
    for (index, r) in infos.iter().enumerate() {
        let Some(r) = r else { continue };
        let index = index as u32;
        if index == CONFIG || r.size == 0 {
            continue;
        }
        region_edges(&mut tape, index, r);
    }

    bar_sizing(&mut tape);
    let mem = first_memory(&infos);
    command_toggle(&mut tape, mem);

    tape.note("reset".into());
    let r = tape.t.reset();
    tape.note(format!("reset -> {}", show(r, |()| "ok".into())));
    after_reset(&mut tape, mem);

    flr(&mut tape, mem);
    d3hot(&mut tape, mem);
    set_irqs(&mut tape, &irq_counts);

    tape.note("reopen".into());
    let r = tape.t.reopen();
    tape.note(format!("reopen -> {}", show(r, |()| "ok".into())));
    after_reset(&mut tape, mem);
    device_info(&mut tape);
    tape.lines
}

/// DEVICE_GET_INFO, recorded; the highest region and IRQ indexes to ask about.
fn device_info(tape: &mut Tape<'_>) -> Option<(u32, u32)> {
    let info = tape.t.device_info();
    let found = info.as_ref().ok().map(|(_, r, i)| (*r, *i));
    let line = format!(
        "device_info -> {}",
        show(info, |(f, r, i)| format!(
            "flags={f:#x} regions={r} irqs={i}"
        ))
    );
    tape.note(line);
    found
}

/// REGION_INFO of regions 0 to `last`, recorded; each one's answer, if it had one.
fn region_infos(tape: &mut Tape<'_>, last: u32) -> Vec<Option<Region>> {
    let mut infos = Vec::new();
    for index in 0..=last {
        let r = tape.t.region_info(index);
        infos.push(r.as_ref().ok().cloned());
        let line = format!(
            "region_info {index} -> {}",
            show(r, |r| format!(
                "flags={:#x} size={:#x} sparse={}",
                r.flags,
                r.size,
                match &r.sparse {
                    None => "none".to_string(),
                    Some(a) => a
                        .iter()
                        .map(|(o, s)| format!("{o:#x}+{s:#x}"))
                        .collect::<Vec<_>>()
                        .join(","),
                }
            ))
        );
        tape.note(line);
    }
    infos
}

/// IRQ_INFO of IRQ indexes 0 to `last`, recorded; each one's count (0 on error).
fn irq_infos(tape: &mut Tape<'_>, last: u32) -> Vec<u32> {
    let mut counts = Vec::new();
    for index in 0..=last {
        let r = tape.t.irq_info(index);
        counts.push(r.as_ref().map(|(_, c)| *c).unwrap_or(0));
        let line = format!(
            "irq_info {index} -> {}",
            show(r, |(f, c)| format!("flags={f:#x} count={c}"))
        );
        tape.note(line);
    }
    counts
}

/// Every config dword; runs of three or more equal values fold into one line.
fn config_dwords(tape: &mut Tape<'_>) {
    let mut values = Vec::new();
    for offset in (0..CONFIG_SIZE).step_by(4) {
        let r = tape.t.read(CONFIG, offset, 4);
        values.push(show(r, |b| hex(&b)));
    }
    let mut i = 0;
    while i < values.len() {
        let mut j = i + 1;
        while j < values.len() && values[j] == values[i] {
            j += 1;
        }
        if j - i >= 3 {
            tape.note(format!(
                "config {:#05x}..{:#05x} -> {}",
                i * 4,
                j * 4,
                values[i]
            ));
        } else {
            for (k, v) in values.iter().enumerate().take(j).skip(i) {
                tape.note(format!("config {:#05x} -> {v}", k * 4));
            }
        }
        i = j;
    }
}

/// The first memory region (index, memlength, bar size): the one with a sparse area.
fn first_memory(infos: &[Option<Region>]) -> Option<(u32, u64, u64)> {
    infos.iter().enumerate().find_map(|(i, r)| {
        let r = r.as_ref()?;
        let (_, len) = *r.sparse.as_ref()?.first()?;
        (i as u32 != 0 && r.size > 0).then_some((i as u32, len, r.size))
    })
}

fn region_edges(tape: &mut Tape<'_>, index: u32, r: &Region) {
    let size = r.size;
    let memlength = r
        .sparse
        .as_ref()
        .and_then(|a| a.first())
        .filter(|_| index != 0)
        .map(|a| a.0.saturating_add(a.1));
    match memlength {
        Some(m) => {
            tape.write(index, 0, &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
            tape.read(index, 0, 8);
            tape.read(index, 2, 4);
            tape.write(
                index,
                m - 8,
                &[0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8],
            );
            tape.read(index, m - 8, 8);
            tape.read(index, m - 4, 8);
            tape.read(index, m, 4);
            tape.write(index, m, &[1, 2, 3, 4]);
            tape.read(index, m, 4);
            tape.write(index, m - 2, &[5, 6, 7, 8]);
            tape.read(index, m - 4, 8);
        }
        None if index == 0 => {
            for reg in READY_REGS {
                tape.read(0, reg, 4);
            }
            tape.read(0, 0, 4);
            tape.write(0, 0x100, &[0xde, 0xad, 0xbe, 0xef]);
            tape.read(0, 0x100, 4);
            tape.read(0, 0x101, 2);
        }
        None => {
            tape.read(index, 0, 4);
        }
    }
    tape.read(index, size - 8, 8);
    tape.read(index, size - 4, 8);
    tape.read(index, size - 1, 1);
    tape.read(index, size, 1);
    tape.read(index, size + 4096, 4);
    tape.write(index, size, &[0; 4]);
}

fn bar_sizing(tape: &mut Tape<'_>) {
    for reg in (0x10..=0x24).step_by(4).chain([0x30]) {
        let orig = tape.cfg(reg, 4).unwrap_or(0);
        tape.cfg_write(reg, 0xffff_ffff, 4);
        tape.cfg(reg, 4);
        tape.cfg_write(reg, orig, 4);
        tape.cfg(reg, 4);
    }
}

/// Reads BAR0's readiness registers and 8 bytes of memory.
fn probe(tape: &mut Tape<'_>, mem: Option<(u32, u64, u64)>) {
    tape.read(0, READY_REGS[0], 4);
    if let Some((index, _, _)) = mem {
        tape.read(index, 0, 8);
        tape.write(index, 8, &[0x5a; 4]);
    }
}

fn command_toggle(tape: &mut Tape<'_>, mem: Option<(u32, u64, u64)>) {
    let cmd = tape.cfg(COMMAND, 2).unwrap_or(0);
    tape.cfg_write(COMMAND, cmd & !u64::from(COMMAND_MEMORY), 2);
    tape.cfg(COMMAND, 2);
    probe(tape, mem);
    tape.cfg_write(COMMAND, cmd | u64::from(COMMAND_MEMORY), 2);
    tape.cfg(COMMAND, 2);
    probe(tape, mem);
}

fn after_reset(tape: &mut Tape<'_>, mem: Option<(u32, u64, u64)>) {
    tape.cfg(COMMAND, 2);
    for reg in (0x10..=0x24).step_by(4) {
        tape.cfg(reg, 4);
    }
    probe(tape, mem);
}

/// The config offset of standard capability `id`, walking the list (recorded).
fn find_cap(tape: &mut Tape<'_>, id: u64) -> Option<u64> {
    let mut at = tape.cfg(0x34, 1)?;
    for _ in 0..48 {
        if at == 0 {
            return None;
        }
        let head = tape.cfg(at, 2)?;
        if head & 0xff == id {
            return Some(at);
        }
        at = head >> 8;
    }
    None
}

fn flr(tape: &mut Tape<'_>, mem: Option<(u32, u64, u64)>) {
    let Some(exp) = find_cap(tape, 0x10) else {
        tape.note("flr -> no PCI Express capability".into());
        return;
    };
    tape.cfg(exp + 4, 4);
    let ctl = tape.cfg(exp + 8, 2).unwrap_or(0);
    tape.cfg_write(exp + 8, ctl | 0x8000, 2);
    tape.cfg(exp + 8, 2);
    after_reset(tape, mem);
}

fn d3hot(tape: &mut Tape<'_>, mem: Option<(u32, u64, u64)>) {
    let Some(pm) = find_cap(tape, 0x01) else {
        tape.note("d3hot -> no power management capability".into());
        return;
    };
    let pmcsr = tape.cfg(pm + 4, 2).unwrap_or(0);
    tape.cfg_write(pm + 4, (pmcsr & !3) | 3, 2);
    tape.cfg(pm + 4, 2);
    probe(tape, mem);
    tape.cfg_write(pm + 4, pmcsr & !3, 2);
    tape.cfg(pm + 4, 2);
    probe(tape, mem);
}

fn eventfd() -> Option<OwnedFd> {
    use nix::sys::eventfd::{EfdFlags, EventFd};
    EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)
        .ok()
        .map(OwnedFd::from)
}

fn set_irqs(tape: &mut Tape<'_>, counts: &[u32]) {
    let actions = [
        ("mask", VFIO_IRQ_SET_ACTION_MASK),
        ("unmask", VFIO_IRQ_SET_ACTION_UNMASK),
        ("trigger", VFIO_IRQ_SET_ACTION_TRIGGER),
    ];
    for (index, &count) in counts.iter().enumerate() {
        let index = index as u32;
        for (name, action) in actions {
            let cases: [(&str, u32, u32, u32, IrqData); 4] = [
                ("none", VFIO_IRQ_SET_DATA_NONE, 0, 0, IrqData::None),
                ("none", VFIO_IRQ_SET_DATA_NONE, 0, 1, IrqData::None),
                ("bool", VFIO_IRQ_SET_DATA_BOOL, 0, 1, IrqData::Bool(vec![1])),
                ("none", VFIO_IRQ_SET_DATA_NONE, count, 1, IrqData::None),
            ];
            for (data_name, data, start, n, payload) in cases {
                let r = tape.t.set_irqs(data | action, index, start, n, &payload);
                tape.note(format!(
                    "set_irqs {index} {name} {data_name} start={start} count={n} -> {}",
                    show(r, |()| "ok".into())
                ));
            }
        }
        // Enable through an eventfd, then disable (DATA_NONE, count 0).
        if let Some(fd) = eventfd() {
            let r = tape.t.set_irqs(
                VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                index,
                0,
                1,
                &IrqData::Eventfd(vec![fd]),
            );
            tape.note(format!(
                "set_irqs {index} trigger eventfd start=0 count=1 -> {}",
                show(r, |()| "ok".into())
            ));
            let r = tape.t.set_irqs(
                VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                index,
                0,
                0,
                &IrqData::None,
            );
            tape.note(format!(
                "set_irqs {index} trigger none start=0 count=0 -> {}",
                show(r, |()| "ok".into())
            ));
        }
    }
}
