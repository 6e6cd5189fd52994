//! Command-line definitions (clap). Parsing of values lives here; what the verbs do lives in
//! their own modules.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::out::EXIT_CODES;
use crate::units::{parse_duration, parse_socket_mode, parse_u16, parse_u64, qemu_size};
use vgrace_device::{Backing, Cxl, Fault, GpuConfig, LinuxVersion, Poison, Profile};

/// vgrace: a software NVIDIA Grace GPU (nvgrace-gpu-vfio-pci) served over vfio-user.
#[derive(Debug, Parser)]
#[command(name = "vgrace", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve one device (or several, from --config) over vfio-user until SIGTERM/SIGINT.
    Serve(ServeArgs),
    /// Print the device's regions and memory split, as a table and a diagram (or --json).
    Layout(LayoutArgs),
    /// Connect to a vfio-user server that claims to be an nvgrace device and check the ABI rules.
    Check(CheckArgs),
    /// Print the QEMU command-line pieces that attach this device to a guest (or a libvirt
    /// domain XML, --format libvirt).
    QemuArgs(QemuArgsArgs),
    /// Drive a running server through its control socket: status, stats, faults, peek/poke,
    /// reset, events.
    Ctl(crate::ctl::CtlArgs),
    /// Summarise a protocol trace written by `serve --trace` (per command: count, errors,
    /// bytes, latency), list its messages, or follow a live one.
    Trace(TraceArgs),
    /// Write the SSDT a Grace host's firmware has: per GPU, the `_DSD` memory properties the
    /// real nvgrace-gpu-vfio-pci reads (for an L1 guest on `serve --view host`).
    Acpi(AcpiArgs),
    /// Run a fixed sequence of VFIO operations against a vfio-user server or a device under
    /// kernel VFIO and print each with its result and errno, one canonical line each (to diff
    /// vgrace against the real nvgrace-gpu-vfio-pci).
    Transcript(TranscriptArgs),
    /// Write the man pages or shell completions (for packagers; hidden).
    #[command(hide = true, subcommand)]
    Generate(GenerateArgs),
}

/// `vgrace generate`: files made from this very command-line definition.
#[derive(Debug, Subcommand)]
pub enum GenerateArgs {
    /// Man pages (section 1): vgrace.1 and one per verb (vgrace-serve.1, ...) into DIR.
    Man {
        /// The directory to write them to (created if missing).
        dir: PathBuf,
    },
    /// The completion script for SHELL into DIR.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
        /// The directory to write it to (created if missing).
        dir: PathBuf,
    },
}

/// The device, as the firmware properties and profile describe it: each flag overrides
/// [`GpuConfig::default`] (see `crate::device_config`); the defaults the help shows come from
/// there too.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// Device profile: gh100 (resmem at BAR2 + usemem at BAR4), gb200 (all memory at BAR4),
    /// seed (the original patch: all memory at BAR2).
    #[arg(long, default_value = shown(|c| c.profile.to_string()))]
    pub profile: Option<Profile>,
    /// PCI device id from the upstream table, of the profile's generation: gh100 0x2342,
    /// 0x2345, 0x2348; gb200 0x2941, 0x31c2 (GB300); seed 0x2342, 0x2343. Default: the
    /// profile's first.
    #[arg(long, value_parser = parse_u16)]
    pub device_id: Option<u16>,
    /// Device memory size (`nvidia,gpu-mem-size`): a byte count or a binary suffix K, M, G, T
    /// or KiB, MiB, GiB, TiB, any case (96G = 96GiB = 96 x 2^30); 96GB is refused as ambiguous.
    #[arg(long, default_value = shown(|c| qemu_size(c.mem_size)), value_parser = parse_size_arg)]
    pub mem_size: Option<u64>,
    /// Host physical base of device memory (`nvidia,gpu-mem-base-pa`), e.g. 0x400000000000.
    #[arg(long, default_value = shown(|c| format!("{:#x}", c.mem_base)), value_parser = parse_u64)]
    pub mem_base: Option<u64>,
    /// Memory backing: `memfd` (sparse, default), `hugetlbfs`, or a file path (persistent).
    #[arg(long, default_value = shown(|c| backing_word(&c.backing)))]
    pub backing: Option<String>,
    /// Time until the BAR0 readiness registers (C2C link, HBM training) read ready, e.g. 2s.
    #[arg(long, default_value = shown(|c| duration_word(c.ready_delay)), value_parser = parse_duration)]
    pub ready_delay: Option<Duration>,
    /// Inject a fault: never-ready (HBM never trains) or link-down (C2C link never up).
    #[arg(long)]
    pub fault: Option<Fault>,
    /// Behave as nvgrace-gpu-vfio-pci of this Linux version: 6.9, 6.14, 6.19 or 7.2.
    #[arg(long, default_value = shown(|c| c.linux.to_string()))]
    pub linux: Option<LinuxVersion>,
    /// The firmware has no nvidia,gpu-mem-* properties: like --mem-size 0 (C2C link down), the
    /// device is served as a plain vfio-pci function without memory regions.
    #[arg(long)]
    pub no_mem_properties: bool,
    /// Size of Blackwell's real BAR1 (region 2 from 6.14), a power of two (our choice of default:
    /// no public source gives the GB200 value). Sizes as for --mem-size.
    #[arg(long, default_value = shown(|c| qemu_size(c.bar1_size)), value_parser = parse_size_arg)]
    pub bar1_size: Option<u64>,
    /// Time until the readiness registers read ready again after a reset (6.19+: the first
    /// memory access after a reset waits for it).
    #[arg(long, default_value = shown(|c| duration_word(c.reset_ready_delay)), value_parser = parse_duration)]
    pub reset_ready_delay: Option<Duration>,
    /// How long readiness is polled (1 s steps) at start and after a reset before ETIME
    /// (upstream: 30 s).
    #[arg(long, default_value = shown(|c| duration_word(c.ready_timeout)), value_parser = parse_duration)]
    pub ready_timeout: Option<Duration>,
    /// Give the part a CXL Device DVSEC (Blackwell-Next, gb200 only): Linux 7.2 reads readiness
    /// from its Range 1 Size Low register instead of the BAR0 pair.
    #[arg(long)]
    pub cxl: bool,
    /// With --cxl: time until "memory info valid" (the 7.2 driver waits 1 s for it).
    #[arg(long, default_value = shown_cxl(|c| duration_word(c.valid_delay)), value_parser = parse_duration, requires = "cxl")]
    pub cxl_valid_delay: Option<Duration>,
    /// With --cxl: time until "memory active".
    #[arg(long, default_value = shown_cxl(|c| duration_word(c.active_delay)), value_parser = parse_duration, requires = "cxl")]
    pub cxl_active_delay: Option<Duration>,
    /// With --cxl: Memory_Active_Timeout code (0-7): the driver waits 1 s x 4^code for
    /// "memory active", capped at 256 s.
    #[arg(long, default_value = shown_cxl(|c| c.timeout_code.to_string()), requires = "cxl")]
    pub cxl_timeout_code: Option<u8>,
    /// Poison a 4 KiB page of device memory (uncorrectable ECC error, Linux 6.19+):
    /// REGION:OFFSET, e.g. 4:0x1000; repeatable. Reads that touch it answer EFAULT.
    #[arg(long)]
    pub poison: Vec<Poison>,
}

/// A device flag's default as its help shows it, from [`GpuConfig::default`].
fn shown(f: fn(&GpuConfig) -> String) -> String {
    f(&GpuConfig::default())
}

/// A CXL flag's default as its help shows it, from [`Cxl::default`].
fn shown_cxl(f: fn(&Cxl) -> String) -> String {
    f(&Cxl::default())
}

/// A duration as `--ready-delay` takes it (`0s`, `30s`).
fn duration_word(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A backing as `--backing` takes it.
fn backing_word(b: &Backing) -> String {
    match b {
        Backing::Memfd => "memfd".into(),
        Backing::Hugetlbfs => "hugetlbfs".into(),
        Backing::File(p) => p.display().to_string(),
    }
}

/// `vgrace serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Socket path to listen on (created 0600, a missing directory 0755; a stale socket is
    /// replaced, a live one refused).
    #[arg(long, default_value = "vgrace.sock", conflicts_with_all = ["fd", "config"])]
    pub socket: PathBuf,
    /// Serve on an inherited, already listening socket fd instead of --socket.
    #[arg(long)]
    pub fd: Option<i32>,
    /// TOML file with one `[[device]]` table per device (each with its own `socket`); replaces
    /// the device flags (giving both is refused). Under systemd socket activation (LISTEN_FDS)
    /// each device serves on the passed socket bound to its `socket` path, or else the one
    /// named (LISTEN_FDNAMES) as its `id` or its socket's file name.
    #[arg(long, conflicts_with_all = ["fd"])]
    pub config: Option<PathBuf>,
    /// Accept clients only from these uids (checked with SO_PEERCRED); repeatable.
    #[arg(long = "allow-uid")]
    pub allow_uid: Vec<u32>,
    /// Mode of the device sockets, octal (default 0600), e.g. 0660 with --socket-group so a
    /// VMM running as another user (libvirt-qemu) can connect; others never get access. The
    /// control socket stays 0600.
    #[arg(long, value_name = "MODE", value_parser = parse_socket_mode)]
    pub socket_mode: Option<u32>,
    /// Group of the device sockets (a name or a number); the server's user must be in it.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// From Linux 6.14 a device whose readiness registers never read ready is not offered
    /// (serve waits --ready-timeout, then exits); serve it anyway, for guest-side testing.
    #[arg(long)]
    pub serve_unready: bool,
    /// Drop a client whose message stays incomplete this long after it began (it would hold
    /// the device forever); waiting between messages is never limited. E.g. 5s, 500ms.
    #[arg(long, default_value = "5s", value_parser = parse_stall_timeout)]
    pub stall_timeout: Duration,
    /// Also serve a control socket here (`vgrace ctl`: faults, inspection, statistics), created
    /// 0600 like the device sockets; overrides the config file's `control`.
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// A control connection that sends no request this long (silent, or stopped halfway
    /// through a line) is closed, so a few stuck clients cannot take every slot. Hidden: for
    /// tests; the default suits operators.
    #[arg(long, hide = true, default_value = "60s", value_parser = parse_timeout)]
    pub control_idle_timeout: Duration,
    /// Write a protocol trace to FILE: every message in and out, and every connection, as one
    /// JSON line (created 0600; a symlink is refused). Read it with `vgrace trace FILE`. With
    /// --config, use `trace = "FILE"` in each `[[device]]` instead.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub trace: Option<PathBuf>,
    /// Rotate the trace before it would exceed this size (FILE -> FILE.1, one previous file
    /// kept), e.g. 64M, 1G; at least 4K.
    #[arg(long, default_value = "64M", value_parser = parse_size_arg, requires = "trace")]
    pub trace_max_size: u64,
    /// What the client sees: vfio (nvgrace-gpu-vfio-pci's device, the default) or host (the
    /// function before a VFIO driver binds: no memory BARs; needs a file backing, which QEMU
    /// maps at the base address; see `vgrace qemu-args --view host`). With --config, use
    /// `view = "host"` in each `[[device]]`.
    #[arg(long, value_enum, default_value = "vfio", conflicts_with = "config")]
    pub view: crate::view::View,
    /// The device.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// `vgrace layout`. Its `--help` lists only the device flags that change a layout; the
/// others (readiness timing, faults, backing) are still taken, hidden, so the flags of a
/// `serve` command line work here too.
#[derive(Debug, Args)]
#[command(mut_args(hide_in_layout))]
pub struct LayoutArgs {
    /// Print JSON instead of the table and diagram.
    #[arg(long)]
    pub json: bool,
    /// A node: the TOML file `vgrace serve --config` takes; shows every GPU and the guest
    /// aperture the node needs (instead of the device flags: giving both is refused).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// With --config: the machine the aperture is for (virt or q35; default: the host's).
    #[arg(long, requires = "config")]
    pub machine: Option<crate::guest::node::Machine>,
    /// The device.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// `vgrace check`'s exit codes, for its `--help`.
pub const CHECK_EXIT_CODES: &str = "Exit codes:
  0  every rule passed (skipped rules do not count)
  1  a rule failed, or the check could not run (no server at --socket, no answer within
     --timeout: one line on stderr, nothing on stdout)
  2  usage: bad flags or values";

/// The device a client verb (`check`, `transcript`) talks to: one of the two flags.
#[derive(Debug, Args)]
pub struct DeviceTarget {
    /// A vfio-user server's socket.
    #[arg(
        long,
        required_unless_present = "vfio_device",
        conflicts_with = "vfio_device"
    )]
    pub socket: Option<PathBuf>,
    /// A PCI device bound to a VFIO driver instead (e.g. the real nvgrace_gpu_vfio_pci on a
    /// Grace host, or in the oracle's L1 guest), opened through its VFIO group
    /// (/dev/vfio/noiommu-N under `vfio.enable_unsafe_noiommu_mode=1`, else /dev/vfio/N).
    #[arg(long, value_name = "BDF")]
    pub vfio_device: Option<String>,
}

/// `vgrace transcript`.
#[derive(Debug, Args)]
pub struct TranscriptArgs {
    #[command(flatten)]
    pub device: DeviceTarget,
}

/// `vgrace check`.
#[derive(Debug, Args)]
#[command(after_help = CHECK_EXIT_CODES)]
pub struct CheckArgs {
    #[command(flatten)]
    pub device: DeviceTarget,
    /// How long to wait for the BAR0 readiness registers (upstream waits 30 s).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub ready_timeout: Duration,
    /// How long to wait for the server's answer to VERSION and to each request (a request may
    /// also take the --ready-timeout, as a 6.19+ server waits for readiness inside it). A peer
    /// that does not answer in time fails the check.
    #[arg(long, default_value = "10s", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Judge the server by the rules of this Linux version's nvgrace-gpu-vfio-pci: 6.9, 6.14,
    /// 6.19 or 7.2 (Blackwell's layout from 6.14, the reset check from 6.19). A server does not
    /// announce its version, so this must match the server's --linux; where a rule that
    /// differs between versions shows another one, check says which.
    #[arg(long, default_value = "7.2")]
    pub linux: LinuxVersion,
    /// Print one JSON document instead of the lines: `rules` (name, result PASS/FAIL/SKIP,
    /// detail, the Linux functions the rule cites), `summary` (counts), `server` (the versions
    /// its behaviour fits, when it shows; its vfio-user limits) and `notes`.
    #[arg(long)]
    pub json: bool,
}

/// `vgrace qemu-args`. Its `--help` lists only the device flags that change the arguments
/// (what sizes the BARs and NUMA nodes); the others are still taken, hidden, so the flags of a
/// `serve` command line (as its log line "attach with" prints them) work here too.
#[derive(Debug, Args)]
#[command(mut_args(hide_in_qemu_args))]
pub struct QemuArgsArgs {
    /// Socket path the device is (or will be) served on.
    #[arg(long, default_value = "vgrace.sock", conflicts_with = "config")]
    pub socket: PathBuf,
    /// A node: the TOML file `vgrace serve --config` takes (one GPU per `[[device]]`), instead of
    /// the device flags (giving both is refused).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Machine type: virt (arm64, the Grace shape) or q35 (x86); default: the host's.
    #[arg(long)]
    pub machine: Option<crate::guest::node::Machine>,
    /// Guest RAM size for the shared memory backend, above zero: a byte count or a binary suffix
    /// K, M, G, T or KiB, MiB, GiB, TiB, any case (8G = 8GiB); 8GB is refused as ambiguous.
    /// Printed in QEMU's form (8G).
    #[arg(long, default_value = "8G", value_parser = parse_guest_mem)]
    pub guest_mem: u64,
    /// Print JSON for integrators: `args`, one argv token per element (as QEMU's execve gets
    /// them), and `node` (the GPUs, their BARs, windows and NUMA nodes, the aperture).
    #[arg(long)]
    pub json: bool,
    /// vfio (a guest that sees nvgrace-gpu-vfio-pci's device, the default) or host (an arm64
    /// L1 Grace host whose kernel runs the real driver on `serve --view host`).
    #[arg(long, value_enum, default_value = "vfio")]
    pub view: crate::view::View,
    /// text (QEMU arguments, a comment before each group) or libvirt (a domain XML for `virsh
    /// define`: native elements where libvirt has them, `<qemu:commandline>` for the rest;
    /// docs/libvirt.md).
    #[arg(long, value_enum, default_value = "text")]
    pub format: QemuArgsFormat,
    /// The device.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// The domain's settings (with --format libvirt; last, as their help heading holds for
    /// what follows).
    #[command(flatten)]
    pub libvirt: LibvirtArgs,
}

/// What `qemu-args` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QemuArgsFormat {
    /// QEMU arguments, a one-line comment before each group.
    Text,
    /// A libvirt domain XML.
    Libvirt,
}

/// `qemu-args --format libvirt`: what a domain needs beyond the GPUs. Refused with the text
/// format, which has no place for them.
#[derive(Debug, Args)]
#[command(next_help_heading = "Domain (--format libvirt)")]
pub struct LibvirtArgs {
    /// The domain's name [default: vgrace].
    #[arg(long)]
    pub name: Option<String>,
    /// kvm, or qemu (TCG, no /dev/kvm needed) [default: kvm].
    #[arg(long, value_enum)]
    pub domain_type: Option<DomainType>,
    /// Virtual CPUs, all in NUMA node 0 [default: 2].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub vcpus: Option<u32>,
    /// Boot this kernel directly (`<os><kernel>`); else add a boot disk to `<devices>`.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Its initramfs.
    #[arg(long, value_name = "PATH", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Its command line.
    #[arg(long, value_name = "ARGS", requires = "kernel")]
    pub cmdline: Option<String>,
    /// The serial console goes to this file (else to a pty, `virsh console`).
    #[arg(long, value_name = "PATH")]
    pub serial_log: Option<PathBuf>,
}

/// libvirt's domain type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DomainType {
    /// Hardware virtualization (/dev/kvm).
    Kvm,
    /// QEMU's TCG emulation.
    Qemu,
}

/// Device flags that change neither a layout nor the QEMU arguments: readiness timing, faults,
/// where the memory lives.
const NO_LAYOUT_CHANGE: [&str; 5] = [
    "backing",
    "ready_delay",
    "fault",
    "reset_ready_delay",
    "ready_timeout",
];

/// Device flags a layout shows but the QEMU arguments do not depend on.
const NO_QEMU_ARGS_CHANGE: [&str; 6] = [
    "mem_base",
    "cxl",
    "cxl_valid_delay",
    "cxl_active_delay",
    "cxl_timeout_code",
    "poison",
];

/// Hides from `layout --help` the device flags that do not change a layout.
fn hide_in_layout(arg: clap::Arg) -> clap::Arg {
    if NO_LAYOUT_CHANGE.contains(&arg.get_id().as_str()) {
        arg.hide(true)
    } else {
        arg
    }
}

/// Hides from `qemu-args --help` the device flags that do not change its arguments.
fn hide_in_qemu_args(arg: clap::Arg) -> clap::Arg {
    let id = arg.get_id().as_str();
    if NO_LAYOUT_CHANGE.contains(&id) || NO_QEMU_ARGS_CHANGE.contains(&id) {
        arg.hide(true)
    } else {
        arg
    }
}

/// With `--config` the file describes the devices, so a device flag given too would be silently
/// ignored: refuses it, naming the flag (the first one given, in the order `--help` lists them).
pub fn refuse_device_flags_with_config(matches: &clap::ArgMatches) -> Result<(), clap::Error> {
    use clap::parser::ValueSource;
    use clap::CommandFactory;
    let Some((verb, sub)) = matches.subcommand() else {
        return Ok(());
    };
    let mut cli = Cli::command();
    cli.build();
    let Some(cmd) = cli.find_subcommand_mut(verb) else {
        return Ok(());
    };
    let has = |id: &str| cmd.get_arguments().any(|a| a.get_id() == id);
    if !has("config") || sub.value_source("config") != Some(ValueSource::CommandLine) {
        return Ok(());
    }
    let device = DeviceArgs::augment_args(clap::Command::new("device"));
    let given = device.get_arguments().find(|a| {
        has(a.get_id().as_str())
            && sub.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine)
    });
    match given {
        None => Ok(()),
        Some(arg) => {
            let flag = arg.get_long().unwrap_or(arg.get_id().as_str());
            Err(cmd.error(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "--{flag} cannot be used with --config: the file's [[device]] tables \
                     describe the devices"
                ),
            ))
        }
    }
}

/// `vgrace trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The trace file (`serve --trace FILE`).
    pub file: PathBuf,
    /// Also list every message, one line each (time, direction, command, key fields, errno,
    /// latency).
    #[arg(long)]
    pub list: bool,
    /// Print the summary as JSON.
    #[arg(long, conflicts_with_all = ["list", "follow"])]
    pub json: bool,
    /// Keep reading as the file grows (following it across rotations) and list new messages as
    /// they arrive, until interrupted.
    #[arg(long)]
    pub follow: bool,
    /// Read the rotated files too (FILE.N .. FILE.1, then FILE).
    #[arg(long, conflicts_with = "follow")]
    pub all: bool,
}

/// Parses a size: a byte count or a binary suffix (K, M, G, T, KiB, MiB, GiB, TiB, any case).
fn parse_size_arg(s: &str) -> Result<u64, String> {
    vgrace_device::parse_size(s).map_err(|e| e.to_string())
}

/// Guest RAM: a size above zero (QEMU refuses a memory backend of size 0).
fn parse_guest_mem(s: &str) -> Result<u64, String> {
    match parse_size_arg(s)? {
        0 => Err("guest RAM must be above zero".into()),
        n => Ok(n),
    }
}

/// A timeout: a duration above zero (a zero socket timeout would mean "wait forever").
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("the timeout must be above zero".into());
    }
    Ok(d)
}

/// A stall timeout: a duration above zero (zero would drop every message split across reads).
fn parse_stall_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("the stall timeout must be above zero".into());
    }
    Ok(d)
}

/// `vgrace acpi`.
#[derive(Debug, Args)]
pub struct AcpiArgs {
    /// A node: the TOML file `vgrace serve --config` takes (GPU i sits behind root port i, at
    /// 00:(i+1).0), instead of the device flags (giving both is refused).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where to write the SSDT (binary AML).
    #[arg(short, long)]
    pub output: PathBuf,
    /// The device.
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
