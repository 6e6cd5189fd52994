//! `vgrace check`: a conformance client for any vfio-user server that claims to be an nvgrace
//! device. It checks the ABI rules one by one and prints PASS/FAIL per rule.
//!
//! The checks restore what they change (memory words, BAR registers, COMMAND) where they can,
//! but they reset the device (twice when it has memory), so run it against a device no guest is
//! using. They leave no reset check pending: the last access after the last reset has decode on.
//!
//! `--linux VERSION` picks the rules that changed between kernels: Blackwell's layout (6.9
//! splits it the Hopper way; from 6.14 region 2 is its real BAR1 and all memory is at region 4)
//! and the first memory access after a reset (from 6.19 EIO while memory decode is off). Under
//! every version a device without memory regions (C2C link down, no memory properties) is
//! accepted as a core-only function.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use vfu::client::Client;
use vfu::{Errno, SparseArea};

use vgrace_device::LinuxVersion;

use crate::cli::CheckArgs;

mod kernel;
mod rules;
mod shared_map;

use rules::*;

// These constants deliberately repeat what vgrace-device defines: `check` is an independent
// oracle that judges any server (ours included) against the upstream ABI, so it must not take
// the values from the implementation it checks.

/// Device ids of the upstream table (plus the seed patch's 0x2343).
const KNOWN_DEVICE_IDS: [u16; 6] = [0x2342, 0x2343, 0x2345, 0x2348, 0x2941, 0x31c2];
/// Blackwell (GB200, GB300): from 6.14 no resmem, and region 2 is the device's real BAR1.
const BLACKWELL_DEVICE_IDS: [u16; 2] = [0x2941, 0x31c2];
/// BAR0, the core's register BAR.
const BAR0_SIZE: u64 = 16 << 20;
/// PCI COMMAND and its memory space enable bit.
const COMMAND_OFFSET: u64 = 4;
const MEMORY_SPACE_ENABLE: u16 = 1 << 1;
/// VFIO region index of Blackwell's BAR1 (its registers at config 0x18).
const BAR1_REGION_INDEX: u32 = 2;
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

/// A rule's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Fail,
    Skip,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::Skip => "SKIP",
        }
    }
}

/// One rule's outcome.
struct Outcome {
    rule: String,
    verdict: Verdict,
    detail: String,
}

impl Outcome {
    /// A rule's `Ok` is a PASS, unless its detail says it was skipped (`skipped: why`).
    fn new(rule: &str, result: Result<String, String>) -> Self {
        let (verdict, detail) = match result {
            Ok(d) => match d.strip_prefix(SKIPPED) {
                Some(why) => (Verdict::Skip, why.to_string()),
                None => (Verdict::Pass, d),
            },
            Err(d) => (Verdict::Fail, d),
        };
        Self {
            rule: rule.to_string(),
            verdict,
            detail,
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.rule,
            "result": self.verdict.label(),
            "detail": self.detail,
            "cites": cites(&self.rule),
        })
    }
}

/// How a rule's detail starts when the rule could not be attempted.
const SKIPPED: &str = "skipped: ";

/// The Linux functions a rule's text names: the identifiers in its parentheses that look like
/// kernel functions (`nvgrace_gpu_ioctl`, `vfio_pci_bar_rw`).
fn cites(rule: &str) -> Vec<&str> {
    rule.split('(')
        .skip(1)
        .filter_map(|group| group.split(')').next())
        .flat_map(|group| group.split([',', ' ']))
        .filter(|w| {
            w.contains('_')
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .collect()
}

/// What the whole run found: the rules, and which Linux versions the server's behaviour fits.
struct Report {
    outcomes: Vec<Outcome>,
    /// The versions whose rules the server's version-dependent answers match, when any of its
    /// answers differ between versions (Blackwell's layout, the first access after a reset);
    /// `None` when nothing it did tells the versions apart.
    fits: Option<Vec<LinuxVersion>>,
}

impl Report {
    fn count(&self, v: Verdict) -> usize {
        self.outcomes.iter().filter(|o| o.verdict == v).count()
    }

    /// One line when the server behaves as another version than the one checked.
    fn version_note(&self, linux: LinuxVersion) -> Option<String> {
        let fits = self.fits.as_ref()?;
        if fits.is_empty() || fits.contains(&linux) {
            return None;
        }
        let names: Vec<String> = fits.iter().map(ToString::to_string).collect();
        Some(format!(
            "the server behaves as nvgrace-gpu-vfio-pci of Linux {}, not {linux}: check with \
             --linux {} (it must match the server's --linux)",
            names.join(" or "),
            names.last().map_or("", String::as_str)
        ))
    }
}

/// Runs the checks against the server at `--socket`: 0 when every rule passed (or was
/// skipped), 1 when one failed; an error (no server, no answer) is 1 too, from `main`.
pub fn run(args: &CheckArgs) -> Result<ExitCode> {
    // A vfio-user server at --socket, or a device under kernel VFIO (--vfio-device: the real
    // driver, on a Grace host or in the oracle's L1 guest).
    let (name, caps, mut target): (String, Option<vfu::wire::Caps>, Box<dyn Target>) =
        match (&args.device.vfio_device, &args.device.socket) {
            (Some(bdf), _) => (
                format!("{bdf} (kernel VFIO)"),
                None,
                Box::new(kernel::KernelTarget::open(bdf)?),
            ),
            (None, Some(socket)) => {
                let client = connect(args, socket)?;
                let caps = client.caps();
                (
                    socket.display().to_string(),
                    Some(caps),
                    Box::new(ClientTarget { client }),
                )
            }
            (None, None) => anyhow::bail!("give --socket or --vfio-device"),
        };
    let mut out = crate::out::stdout();
    if !args.json {
        writeln!(
            out,
            "checking {name} against the rules of Linux {}",
            args.linux
        )?;
        out.flush()?;
    }
    let report = check_all(target.as_mut(), args.ready_timeout, args.linux);
    let (passed, failed, skipped) = (
        report.count(Verdict::Pass),
        report.count(Verdict::Fail),
        report.count(Verdict::Skip),
    );
    let note = report.version_note(args.linux);
    if args.json {
        let doc = serde_json::json!({
            "socket": args.device.socket,
            "vfio_device": args.device.vfio_device,
            "linux": args.linux.to_string(),
            "rules": report.outcomes.iter().map(Outcome::json).collect::<Vec<_>>(),
            "summary": { "passed": passed, "failed": failed, "skipped": skipped,
                         "total": report.outcomes.len() },
            "server": {
                "linux": report.fits.as_ref().map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>()),
                "max_data_xfer_size": caps.map(|c| c.max_data_xfer_size),
                "max_msg_fds": caps.map(|c| c.max_msg_fds),
            },
            "notes": note.iter().collect::<Vec<_>>(),
        });
        writeln!(out, "{doc:#}")?;
    } else {
        for o in &report.outcomes {
            writeln!(out, "{}  {:<60} {}", o.verdict.label(), o.rule, o.detail)?;
        }
        if let Some(note) = &note {
            writeln!(out, "note: {note}")?;
        }
        writeln!(out, "{passed} passed, {failed} failed, {skipped} skipped")?;
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Connects and negotiates, waiting at most `--timeout` for each answer (a peer that is not a
/// vfio-user server, such as a control socket, never answers VERSION); later requests may also
/// take the `--ready-timeout` a 6.19+ server spends waiting for readiness inside one.
fn connect(args: &CheckArgs, socket: &std::path::Path) -> Result<Client> {
    let name = socket.display();
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to {name}"))?;
    stream
        .set_read_timeout(Some(args.timeout))
        .and_then(|()| stream.set_write_timeout(Some(args.timeout)))
        .with_context(|| format!("cannot set a timeout on {name}"))?;
    let client = Client::from_stream(stream).map_err(|e| {
        let e = anyhow::Error::new(e);
        if timed_out(&e) {
            anyhow::anyhow!(
                "{name} did not answer VERSION within {} (is it a vfio-user server?)",
                humantime::format_duration(args.timeout)
            )
        } else {
            e.context(format!("cannot negotiate with {name}"))
        }
    })?;
    let per_request = args.timeout.saturating_add(args.ready_timeout);
    client
        .stream()
        .set_read_timeout(Some(per_request))
        .with_context(|| format!("cannot set a timeout on {name}"))?;
    Ok(client)
}

/// Whether `e` is a socket timeout.
fn timed_out(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        })
    })
}

/// What REGION_INFO showed at regions 2 and 4.
#[derive(Default)]
struct Regions {
    /// The variant's memory regions (each with its sparse area), by index.
    memory: Vec<(u32, RegionView)>,
    /// A region 2 of non-zero size without sparse areas: a core BAR (Blackwell's real BAR1).
    bar1: Option<RegionView>,
}

impl Regions {
    fn has_memory(&self, index: u32) -> bool {
        self.memory.iter().any(|(i, _)| *i == index)
    }
}

/// Runs every rule; a rule that cannot even be attempted is a FAIL, never an abort.
/// With memory decode off every BAR access answers EIO: the rules that access a BAR are
/// skipped (the decode rule already failed, once, naming the cause).
fn unless_off(
    decode_off: bool,
    rule: impl FnOnce() -> Result<String, String>,
) -> Result<String, String> {
    if decode_off {
        Ok(format!("{SKIPPED}memory decode is off"))
    } else {
        rule()
    }
}

/// The outcomes of the rules run so far, in order.
#[derive(Default)]
struct Outcomes(Vec<Outcome>);

impl Outcomes {
    fn push(&mut self, rule: &str, result: Result<String, String>) {
        self.0.push(Outcome::new(rule, result));
    }
}

/// What the first rules learn that the later ones need.
struct Basics {
    /// Memory decode is off: BAR accesses are skipped.
    decode_off: bool,
    /// The readiness registers never read ready.
    never_ready: bool,
    /// A Blackwell device id.
    blackwell: bool,
}

fn check_all(t: &mut dyn Target, ready_timeout: Duration, linux: LinuxVersion) -> Report {
    let mut out = Outcomes::default();
    let basics = basic_rules(t, ready_timeout, &mut out);
    let regions = find_regions(t, &mut out);
    if regions.memory.is_empty() {
        out.push(
            "core-only device: C2C link down or no memory properties (nvgrace_gpu_probe)",
            core_only_layout(&regions, basics.blackwell),
        );
    } else {
        let (rule, result) = layout(&regions, basics.blackwell, linux);
        out.push(&rule, result);
    }
    for (index, info) in &regions.memory {
        memory_region_rules(t, *index, info, basics.decode_off, &mut out);
    }
    if let Some(info) = &regions.bar1 {
        bar1_rules(t, info, basics.decode_off, &mut out);
    }
    let first_access_eio = reset_rules(t, &regions, &basics, linux, &mut out);
    Report {
        outcomes: out.0,
        fits: fitting_versions(&regions, basics.blackwell, first_access_eio),
    }
}

/// Identity, memory decode, readiness and BAR0's size.
fn basic_rules(t: &mut dyn Target, ready_timeout: Duration, out: &mut Outcomes) -> Basics {
    out.push(
        "identity: vendor 0x10de, known device id (nvgrace_gpu_vfio_pci_table)",
        identity(t),
    );
    out.push(
        "identity: class 3D controller 0x0302 (vfio_config_init)",
        class_code(t),
    );
    let (decode, decode_off) = memory_decode(t);
    out.push(
        "config: memory decode on (while off, vfio_pci_bar_rw answers EIO)",
        decode,
    );
    let ready = unless_off(decode_off, || readiness(t, ready_timeout));
    let never_ready = ready.is_err();
    out.push(
        "bar0: readiness registers read 0xff (nvgrace_gpu_probe_check_device_ready, nvgrace_gpu_wait_device_ready_legacy)",
        ready,
    );
    out.push(
        "region 0: BAR0 is 16 MiB (vfio_pci_ioctl_get_region_info)",
        bar0_size(t),
    );
    let blackwell = config_read32(t, 0)
        .map(|id| BLACKWELL_DEVICE_IDS.contains(&((id >> 16) as u16)))
        .unwrap_or(false);
    Basics {
        decode_off,
        never_ready,
        blackwell,
    }
}

/// Regions 2 and 4: the variant's memory regions, or Blackwell's real BAR1.
fn find_regions(t: &mut dyn Target, out: &mut Outcomes) -> Regions {
    let mut regions = Regions::default();
    for index in [2u32, 4] {
        match t.region_info(index) {
            Ok(info) if info.size == 0 => {}
            // A core BAR, no sparse area (the whole BAR is mappable): Blackwell's real BAR1 from
            // 6.14, or on a core-only Blackwell; not a memory region of the variant.
            Ok(info) if index == BAR1_REGION_INDEX && info.sparse.is_empty() => {
                regions.bar1 = Some(info);
            }
            Ok(info) => regions.memory.push((index, info)),
            Err(e) => out.push(
                &format!("region {index}: REGION_INFO answers (nvgrace_gpu_ioctl_get_region_info)"),
                Err(format!("{e:#}")),
            ),
        }
    }
    regions
}

/// The rules of one memory region of the variant (its BAR is its index).
fn memory_region_rules(
    t: &mut dyn Target,
    index: u32,
    info: &RegionView,
    decode_off: bool,
    out: &mut Outcomes,
) {
    let bar = index;
    let memlength = info.sparse.first().map(|a| a.size).unwrap_or(0);
    out.push(
        &format!("region {index}: size is a power of two (nvgrace_gpu_ioctl_get_region_info)"),
        pow2(info.size),
    );
    out.push(
        &format!("region {index}: flags READ|WRITE|MMAP (nvgrace_gpu_ioctl_get_region_info)"),
        flags(info.flags),
    );
    out.push(
        &format!(
            "region {index}: one sparse area [0, memlength) (nvgrace_gpu_ioctl_get_region_info)"
        ),
        sparse(info),
    );
    out.push(
        &format!("region {index}: one fd with the region (nvgrace_gpu_mmap)"),
        fd_present(info),
    );
    out.push(
        &format!("region {index}: mmap of the fd is coherent (nvgrace_gpu_mmap)"),
        unless_off(decode_off, || mmap_coherent(t, index, info)),
    );
    out.push(
        &format!("region {index}: memory reads back writes (nvgrace_gpu_read_mem, nvgrace_gpu_write_mem)"),
        unless_off(decode_off, || memory_rw(t, index, memlength)),
    );
    out.push(
        &format!("region {index}: reads past memory are all ones (nvgrace_gpu_read_mem)"),
        unless_off(decode_off, || {
            past_memory_read(t, index, memlength, info.size)
        }),
    );
    out.push(
        &format!("region {index}: writes past memory are dropped (nvgrace_gpu_write_mem)"),
        unless_off(decode_off, || {
            past_memory_write(t, index, memlength, info.size)
        }),
    );
    out.push(
        &format!("region {index}: access clipped at BAR end (nvgrace_gpu_read, nvgrace_gpu_write)"),
        unless_off(decode_off, || clipped(t, index, info.size)),
    );
    out.push(
        &format!(
            "region {index}: offset at BAR end is EINVAL (nvgrace_gpu_read, nvgrace_gpu_write)"
        ),
        unless_off(decode_off, || at_end_einval(t, index, info.size)),
    );
    out.push(
        &format!("BAR{bar}: sizing probe returns the size mask (nvgrace_gpu_read_config_emu)"),
        sizing_probe(t, bar, info.size),
    );
}

/// The rules of Blackwell's real BAR1 (region 2, a core BAR).
fn bar1_rules(t: &mut dyn Target, info: &RegionView, decode_off: bool, out: &mut Outcomes) {
    let index = BAR1_REGION_INDEX;
    out.push(
        "region 2: the real BAR1: power-of-two size, READ|WRITE|MMAP, no sparse area (vfio_pci_ioctl_get_region_info)",
        pow2(info.size).and_then(|_| flags(info.flags)),
    );
    out.push(
        "region 2 (BAR1): the whole BAR maps through its fd (vfio_pci_core_mmap)",
        unless_off(decode_off, || bar1_mmap(t, info)),
    );
    out.push(
        "region 2 (BAR1): memory to its end, no all-ones tail (vfio_pci_bar_rw)",
        unless_off(decode_off, || memory_rw(t, index, info.size)),
    );
    out.push(
        "region 2 (BAR1): access clipped at BAR end (vfio_pci_bar_rw)",
        unless_off(decode_off, || clipped(t, index, info.size)),
    );
    out.push(
        "region 2 (BAR1): offset at BAR end is EINVAL (vfio_pci_bar_rw)",
        unless_off(decode_off, || at_end_einval(t, index, info.size)),
    );
    out.push(
        "BAR2 (BAR1): sizing probe at 0x18 returns the size mask (vfio_bar_fixup)",
        sizing_probe(t, index, info.size),
    );
}

/// The reset rules; whether the first memory access after the reset answered EIO, when it
/// was tried.
fn reset_rules(
    t: &mut dyn Target,
    regions: &Regions,
    basics: &Basics,
    linux: LinuxVersion,
    out: &mut Outcomes,
) -> Option<bool> {
    let emulated: Vec<u32> = regions.memory.iter().map(|(index, _)| *index).collect();
    let core: Vec<u32> = regions.bar1.iter().map(|_| BAR1_REGION_INDEX).collect();
    out.push(
        "reset: emulated BARs read 0, core BARs keep their value (nvgrace_gpu_ioctl, vfio_pci_ioctl_reset)",
        reset_clears_bars(t, &emulated, &core),
    );
    let probe = regions.memory.iter().map(|(index, _)| *index).max();
    let (rule, checked) = if linux >= LinuxVersion::V6_19 {
        (
            "reset: first memory access with decode off is EIO (6.19+, nvgrace_gpu_check_device_ready)",
            true,
        )
    } else {
        (
            "reset: first memory access is not checked (before 6.19) (nvgrace_gpu_read_mem)",
            false,
        )
    };
    if basics.never_ready && checked {
        // With decode on, the access would wait for readiness as long as the server polls
        // (30 s upstream) and then fail ETIME: the readiness rule already failed.
        out.push(rule, Ok(format!("{SKIPPED}the device did not read ready")));
        return None;
    }
    let (result, eio) = reset_decode(t, probe, checked);
    out.push(rule, result);
    eio
}

/// The versions whose rules fit what the server did where versions differ: Blackwell's layout
/// (6.9 against 6.14+) and the first memory access after a reset with decode off (EIO from
/// 6.19). `None` when the server did nothing that tells versions apart (a Hopper's layout is
/// the same under all, a core-only device has no reset access).
fn fitting_versions(
    regions: &Regions,
    blackwell: bool,
    first_access_eio: Option<bool>,
) -> Option<Vec<LinuxVersion>> {
    let by_layout = (blackwell && !regions.memory.is_empty()).then_some(());
    if by_layout.is_none() && first_access_eio.is_none() {
        return None;
    }
    Some(
        LinuxVersion::ALL
            .into_iter()
            .filter(|v| by_layout.is_none() || layout(regions, true, *v).1.is_ok())
            .filter(|v| first_access_eio.is_none_or(|eio| eio == (*v >= LinuxVersion::V6_19)))
            .collect(),
    )
}

/// A device without memory regions is a plain vfio-pci function (all versions): config space,
/// BAR0, and on Blackwell its real BAR1 at region 2; regions 2 and 4 have no sparse area.
fn core_only_layout(regions: &Regions, blackwell: bool) -> Result<String, String> {
    match (&regions.bar1, blackwell) {
        (Some(bar1), _) => Ok(format!(
            "no memory regions; region 2 is the real BAR1 ({:#x} bytes), region 4 absent",
            bar1.size
        )),
        (None, true) => Err("a Blackwell shows its real BAR1 at region 2, found none".into()),
        (None, false) => Ok("no memory regions; regions 2 and 4 absent".into()),
    }
}

/// Which region holds what, by generation and version: Blackwell from 6.14 has no resmem (region
/// 2 is its real BAR1, all memory at region 4); 6.9 splits it the Hopper way (resmem at region 2,
/// usemem at region 4); a Hopper (and the seed's all-at-BAR2) always has memory at region 2.
fn layout(
    regions: &Regions,
    blackwell: bool,
    linux: LinuxVersion,
) -> (String, Result<String, String>) {
    let region2 = match (&regions.bar1, regions.memory.iter().find(|(i, _)| *i == 2)) {
        (Some(_), _) => "region 2 is a core BAR (no sparse area)".to_string(),
        (None, Some((_, info))) => format!("region 2 has {} sparse area(s)", info.sparse.len()),
        (None, None) => "region 2 is absent".to_string(),
    };
    let region4 = if regions.has_memory(4) {
        "region 4 is memory"
    } else {
        "region 4 is absent"
    };
    if blackwell && linux >= LinuxVersion::V6_14 {
        let ok = regions.bar1.is_some() && regions.has_memory(4) && !regions.has_memory(2);
        (
            format!("layout (Linux {linux}, Blackwell): BAR1 at 2, all memory at 4 (nvgrace_gpu_has_mig_hw_bug, nvgrace_gpu_memregion)"),
            if ok {
                Ok("no resmem".into())
            } else {
                Err(format!(
                    "{region2}, {region4}; expected the real BAR1 at region 2 and all memory at region 4"
                ))
            },
        )
    } else if blackwell {
        let resmem = regions
            .memory
            .iter()
            .any(|(i, info)| *i == 2 && info.sparse.len() == 1);
        let ok = resmem && regions.has_memory(4) && regions.bar1.is_none();
        (
            format!("layout (Linux {linux}, Blackwell): resmem at 2, usemem at 4 (nvgrace_gpu_init_nvdev_struct)"),
            if ok {
                Ok("split the Hopper way".into())
            } else {
                Err(format!(
                    "{region2}, {region4}; expected resmem (one sparse area) at region 2 and usemem at region 4"
                ))
            },
        )
    } else {
        let ok = regions.has_memory(2) && regions.bar1.is_none();
        (
            format!("layout (Linux {linux}, Hopper): memory at region 2 (nvgrace_gpu_init_nvdev_struct)"),
            if ok {
                Ok(format!("{region2}, {region4}"))
            } else {
                Err(format!(
                    "{region2}, {region4}; expected resmem (or the seed's memory) at region 2"
                ))
            },
        )
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use vfu::device::CONFIG_REGION_INDEX;

    fn view(size: u64, sparse: &[(u64, u64)]) -> RegionView {
        RegionView {
            flags: FLAG_READ | FLAG_WRITE | FLAG_MMAP,
            size,
            fd_offset: 0,
            sparse: sparse
                .iter()
                .map(|&(offset, size)| SparseArea { offset, size })
                .collect(),
            fd: None,
        }
    }

    fn hopper_split() -> Regions {
        Regions {
            memory: vec![
                (2, view(1 << 30, &[(0, 1 << 30)])),
                (4, view(4 << 30, &[(0, 3 << 30)])),
            ],
            bar1: None,
        }
    }

    fn blackwell_bar1() -> Regions {
        Regions {
            memory: vec![(4, view(4 << 30, &[(0, 3 << 30)]))],
            bar1: Some(view(256 << 20, &[])),
        }
    }

    #[test]
    fn blackwell_layout_follows_the_version() {
        use LinuxVersion::*;
        assert!(layout(&hopper_split(), true, V6_9).1.is_ok());
        assert!(layout(&blackwell_bar1(), true, V6_9).1.is_err());
        for linux in [V6_14, V6_19, V7_2] {
            assert!(layout(&blackwell_bar1(), true, linux).1.is_ok(), "{linux}");
            assert!(layout(&hopper_split(), true, linux).1.is_err(), "{linux}");
        }
        // A Hopper never shows a BAR1 at region 2.
        assert!(layout(&hopper_split(), false, V7_2).1.is_ok());
        assert!(layout(&blackwell_bar1(), false, V7_2).1.is_err());
    }

    #[test]
    fn rules_cite_the_kernel_functions_their_text_names() {
        assert_eq!(
            cites("reset: emulated BARs read 0 (nvgrace_gpu_ioctl, vfio_pci_ioctl_reset)"),
            ["nvgrace_gpu_ioctl", "vfio_pci_ioctl_reset"]
        );
        assert_eq!(
            cites("reset: first memory access is not checked (before 6.19) (nvgrace_gpu_read_mem)"),
            ["nvgrace_gpu_read_mem"]
        );
        assert_eq!(
            cites("region 2 (BAR1): access clipped at BAR end (vfio_pci_bar_rw)"),
            ["vfio_pci_bar_rw"]
        );
        assert!(cites("region 2 (BAR1): access clipped at BAR end").is_empty());
    }

    #[test]
    fn server_version_is_told_by_the_rules_that_differ() {
        use LinuxVersion::*;
        // A Hopper's layout is the same under every version: only the reset access tells.
        assert_eq!(fitting_versions(&hopper_split(), false, None), None);
        assert_eq!(
            fitting_versions(&hopper_split(), false, Some(true)),
            Some(vec![V6_19, V7_2])
        );
        assert_eq!(
            fitting_versions(&blackwell_bar1(), true, Some(false)),
            Some(vec![V6_14])
        );
        assert_eq!(
            fitting_versions(&hopper_split(), true, None),
            Some(vec![V6_9])
        );
        let report = Report {
            outcomes: Vec::new(),
            fits: Some(vec![V6_14]),
        };
        let note = report.version_note(V7_2).unwrap();
        assert!(note.contains("Linux 6.14, not 7.2"), "{note}");
        assert!(note.contains("--linux 6.14"), "{note}");
        assert_eq!(report.version_note(V6_14), None);
    }

    #[test]
    fn core_only_blackwell_needs_its_bar1() {
        let bar1 = Regions {
            memory: Vec::new(),
            bar1: Some(view(256 << 20, &[])),
        };
        assert!(core_only_layout(&bar1, true).is_ok());
        assert!(core_only_layout(&Regions::default(), true).is_err());
        assert!(core_only_layout(&Regions::default(), false).is_ok());
    }

    /// A server that never checks after a reset (6.14's behaviour), with a COMMAND register.
    struct Unchecked {
        command: u16,
        resets: usize,
    }

    impl Target for Unchecked {
        fn region_info(&mut self, _index: u32) -> Result<RegionView> {
            Ok(view(0, &[]))
        }
        fn read(&mut self, index: u32, offset: u64, count: u32) -> Result<Vec<u8>, CheckError> {
            if index == CONFIG_REGION_INDEX && offset == COMMAND_OFFSET {
                return Ok(self.command.to_le_bytes()[..count as usize].to_vec());
            }
            Ok(vec![0; count as usize])
        }
        fn write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), CheckError> {
            if index == CONFIG_REGION_INDEX && offset == COMMAND_OFFSET {
                self.command = u16::from_le_bytes(data.try_into().unwrap());
            }
            Ok(())
        }
        fn reset(&mut self) -> Result<()> {
            self.resets += 1;
            Ok(())
        }
    }

    #[test]
    fn reset_rule_follows_the_version_and_restores_command() {
        let mut t = Unchecked {
            command: 0x0406,
            resets: 0,
        };
        assert_eq!(reset_decode(&mut t, Some(4), false).1, Some(false));
        assert!(reset_decode(&mut t, Some(4), false).0.is_ok());
        let err = reset_decode(&mut t, Some(4), true).0.unwrap_err();
        assert!(err.contains("expected EIO"), "{err}");
        assert_eq!((t.command, t.resets), (0x0406, 3));
        assert!(reset_decode(&mut t, None, true)
            .0
            .unwrap()
            .starts_with(SKIPPED));
        assert_eq!(t.resets, 3);
    }
}
