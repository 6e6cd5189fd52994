//! The TOML configuration file: several devices in one process, one socket each.
//!
//! ```toml
//! control = "/run/vgrace/control.sock"   # optional: the control socket (`vgrace ctl`)
//! socket_mode = "0660"       # optional: mode of the device sockets (default 0600)
//! socket_group = "kvm"       # optional: their group (a name or a number)
//!
//! [[device]]
//! id = "gpu0"                # optional: the name `vgrace ctl` uses (default gpu<index>)
//! socket = "/run/vgrace/gpu0.sock"
//! profile = "gh100"          # gh100 | gb200 | seed
//! mem_size = "96G"           # bytes (integer) or a string: K/M/G/T or KiB/MiB/GiB/TiB (binary)
//! mem_base = "0x400000000000"
//! backing = "memfd"          # memfd | hugetlbfs | a file path
//! device_id = "0x2342"       # optional
//! ready_delay = "2s"         # optional
//! fault = "never-ready"      # optional: never-ready | link-down
//! linux = "6.19"             # optional: 6.9 | 6.14 | 6.19 | 7.2 (default: the newest)
//! mem_properties = false     # optional: the firmware has no memory properties (core device)
//! bar1_size = "128G"         # optional: Blackwell's real BAR1 (sizes as mem_size)
//! reset_ready_delay = "3s"   # optional: training time after a reset
//! ready_timeout = "30s"      # optional: readiness polling limit
//! poison = ["4:0x1000"]      # optional: poisoned pages (REGION:OFFSET), Linux 6.19+
//! cxl = true                 # optional (gb200): a CXL Device DVSEC, read for readiness by 7.2
//! cxl_valid_delay = "0s"     # optional: time until "memory info valid"
//! cxl_active_delay = "2s"    # optional: time until "memory active"
//! cxl_timeout_code = 1       # optional: active timeout 1 s x 4^code (capped at 256 s)
//! trace = "/var/log/vgrace/gpu0.trace"  # optional: protocol trace (see `vgrace trace`)
//! trace_max_size = "64M"     # optional: rotate the trace at this size (FILE.1 kept; 4K least)
//! view = "host"              # optional: vfio (default) | host (the bare function, for an L1 guest)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use vgrace_device::{Cxl, Fault, GpuConfig, Profile};

use crate::units::{parse_duration, parse_u16, parse_u64};
use crate::view::View;

/// A number given either as a TOML integer or as a string (hex, or a size with suffix).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum NumOrString {
    Num(u64),
    Str(String),
}

/// One `[[device]]` table, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceTable {
    #[serde(default)]
    id: Option<String>,
    socket: PathBuf,
    #[serde(default)]
    profile: Option<Profile>,
    #[serde(default)]
    device_id: Option<NumOrString>,
    #[serde(default)]
    mem_size: Option<NumOrString>,
    #[serde(default)]
    mem_base: Option<NumOrString>,
    #[serde(default)]
    backing: Option<String>,
    #[serde(default)]
    ready_delay: Option<String>,
    #[serde(default)]
    fault: Option<Fault>,
    #[serde(default)]
    linux: Option<String>,
    #[serde(default)]
    mem_properties: Option<bool>,
    #[serde(default)]
    bar1_size: Option<NumOrString>,
    #[serde(default)]
    reset_ready_delay: Option<String>,
    #[serde(default)]
    ready_timeout: Option<String>,
    #[serde(default)]
    poison: Vec<String>,
    #[serde(default)]
    cxl: Option<bool>,
    #[serde(default)]
    cxl_valid_delay: Option<String>,
    #[serde(default)]
    cxl_active_delay: Option<String>,
    #[serde(default)]
    cxl_timeout_code: Option<u8>,
    #[serde(default)]
    trace: Option<PathBuf>,
    #[serde(default)]
    trace_max_size: Option<NumOrString>,
    #[serde(default)]
    view: Option<View>,
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    control: Option<PathBuf>,
    #[serde(default)]
    socket_mode: Option<String>,
    #[serde(default)]
    socket_group: Option<String>,
    #[serde(default)]
    device: Vec<DeviceTable>,
}

/// Who may reach the device sockets, as written (`--socket-mode`/`--socket-group` or the file).
#[derive(Debug, Default, Clone)]
pub struct SocketSettings {
    /// The mode, checked by [`crate::units::parse_socket_mode`].
    pub mode: Option<u32>,
    /// The group's name or number.
    pub group: Option<String>,
}

impl SocketSettings {
    /// The mode and the group's id; an unknown group is refused.
    pub fn resolve(&self) -> Result<vfu::server::SocketAccess> {
        let gid = match &self.group {
            None => None,
            Some(g) => Some(match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => nix::unistd::Group::from_name(g)
                    .with_context(|| format!("cannot look up group {g:?}"))?
                    .with_context(|| format!("socket group {g:?} does not exist"))?
                    .gid
                    .as_raw(),
            }),
        };
        Ok(vfu::server::SocketAccess {
            mode: self.mode.unwrap_or(0o600),
            gid,
        })
    }
}

/// A whole file: the devices and the process-wide settings.
#[derive(Debug)]
pub struct Node {
    /// The devices, in file order.
    pub devices: Vec<DeviceEntry>,
    /// The control socket, when the file names one.
    pub control: Option<PathBuf>,
    /// The device sockets' mode and group, when the file sets them.
    pub socket_access: SocketSettings,
}

/// One device to serve, resolved from the file.
#[derive(Debug)]
pub struct DeviceEntry {
    /// The name control clients use (`gpu0` unless the file says otherwise).
    pub id: String,
    /// Where to listen.
    pub socket: PathBuf,
    /// The device.
    pub config: GpuConfig,
    /// Where to write its protocol trace, if anywhere.
    pub trace: Option<PathBuf>,
    /// The size at which the trace file is rotated.
    pub trace_max_size: u64,
    /// Which function the device shows (`view`, default vfio).
    pub view: View,
}

/// Reads and validates a configuration file's devices.
pub fn load(path: &Path) -> Result<Vec<DeviceEntry>> {
    Ok(load_node(path)?.devices)
}

/// Reads and validates a whole configuration file.
pub fn load_node(path: &Path) -> Result<Node> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse_node(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// Parses configuration text's devices; separate from [`load`] so it can be tested without files.
#[cfg(test)]
pub fn parse(text: &str) -> Result<Vec<DeviceEntry>> {
    Ok(parse_node(text)?.devices)
}

/// Parses configuration text.
pub fn parse_node(text: &str) -> Result<Node> {
    let file: ConfigFile = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    if file.device.is_empty() {
        bail!("no [[device]] table");
    }
    let socket_access = SocketSettings {
        mode: file
            .socket_mode
            .as_deref()
            .map(crate::units::parse_socket_mode)
            .transpose()
            .map_err(|e| anyhow::anyhow!("socket_mode: {e}"))?,
        group: file.socket_group.clone(),
    };
    let mut entries: Vec<DeviceEntry> = Vec::with_capacity(file.device.len());
    for (i, table) in file.device.into_iter().enumerate() {
        let socket = table.socket.clone();
        if entries.iter().any(|e| e.socket == socket) {
            bail!("device {i}: socket {} is used twice", socket.display());
        }
        let id = table.id.clone().unwrap_or_else(|| format!("gpu{i}"));
        check_id(&id).with_context(|| format!("device {i}"))?;
        if entries.iter().any(|e| e.id == id) {
            bail!("device {i}: id {id:?} is used twice");
        }
        let (trace, trace_max_size) = table.trace().with_context(|| format!("device {i}"))?;
        // Two writers on one file would interleave and rotate each other's lines away.
        if let Some(t) = &trace {
            if entries.iter().any(|e| e.trace.as_ref() == Some(t)) {
                bail!("device {i}: trace file {} is used twice", t.display());
            }
        }
        let view = table.view.unwrap_or_default();
        let config = table.into_config().with_context(|| format!("device {i}"))?;
        entries.push(DeviceEntry {
            id,
            socket,
            config,
            trace,
            trace_max_size,
            view,
        });
    }
    Ok(Node {
        devices: entries,
        control: file.control,
        socket_access,
    })
}

/// Ids are short names a shell can pass unquoted.
fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!("id {id:?}: use 1 to 64 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

impl DeviceTable {
    /// The trace file and its size limit (default 64 MiB).
    fn trace(&self) -> Result<(Option<PathBuf>, u64)> {
        let max = match &self.trace_max_size {
            None => vfu::trace::DEFAULT_MAX_BYTES,
            Some(_) if self.trace.is_none() => bail!("trace_max_size needs trace"),
            Some(NumOrString::Num(n)) => *n,
            Some(NumOrString::Str(s)) => {
                vgrace_device::parse_size(s).map_err(|e| anyhow::anyhow!("trace_max_size: {e}"))?
            }
        };
        check_max_size(max).context("trace_max_size")?;
        Ok((self.trace.clone(), max))
    }

    /// The device: [`GpuConfig::default`] with the table's keys over it.
    fn into_config(self) -> Result<GpuConfig> {
        let mut c = GpuConfig::default();
        c.profile = self.profile.unwrap_or(c.profile);
        c.mem_size = size(&self.mem_size, "mem_size")?.unwrap_or(c.mem_size);
        if let Some(v) = &self.mem_base {
            c.mem_base = num(v, parse_u64).context("mem_base")?;
        }
        c.device_id = self.device_id()?;
        c.ready_delay = duration(&self.ready_delay, "ready_delay", c.ready_delay)?;
        c.fault = self.fault;
        if let Some(v) = &self.linux {
            c.linux = v
                .parse()
                .map_err(|e: vgrace_device::DeviceError| anyhow::anyhow!("linux: {e}"))?;
        }
        c.mem_properties = self.mem_properties.unwrap_or(c.mem_properties);
        c.bar1_size = size(&self.bar1_size, "bar1_size")?.unwrap_or(c.bar1_size);
        c.reset_ready_delay = duration(
            &self.reset_ready_delay,
            "reset_ready_delay",
            c.reset_ready_delay,
        )?;
        c.ready_timeout = duration(&self.ready_timeout, "ready_timeout", c.ready_timeout)?;
        c.poison = self.poison()?;
        // Checked even without `cxl`, as they always were.
        let d = Cxl::default();
        let cxl = Cxl {
            valid_delay: duration(&self.cxl_valid_delay, "cxl_valid_delay", d.valid_delay)?,
            active_delay: duration(&self.cxl_active_delay, "cxl_active_delay", d.active_delay)?,
            timeout_code: self.cxl_timeout_code.unwrap_or(d.timeout_code),
        };
        c.cxl = self.cxl.unwrap_or(false).then_some(cxl);
        if let Some(b) = &self.backing {
            c.backing = crate::backing(b)?;
        }
        Ok(c)
    }

    /// `device_id`: 16 bits, as a number or a string (hex).
    fn device_id(&self) -> Result<Option<u16>> {
        Ok(match &self.device_id {
            Some(NumOrString::Num(n)) => Some(
                u16::try_from(*n)
                    .map_err(|_| anyhow::anyhow!("device_id: {n} does not fit in 16 bits"))?,
            ),
            Some(NumOrString::Str(s)) => {
                Some(parse_u16(s).map_err(|e| anyhow::anyhow!("device_id: {e}"))?)
            }
            None => None,
        })
    }

    /// `poison`: each REGION:OFFSET.
    fn poison(&self) -> Result<Vec<vgrace_device::Poison>> {
        self.poison
            .iter()
            .map(|p| {
                p.parse()
                    .map_err(|e: vgrace_device::DeviceError| anyhow::anyhow!("poison: {e}"))
            })
            .collect()
    }
}

/// A number as written: an integer as is, a string through `f`.
fn num(v: &NumOrString, f: fn(&str) -> Result<u64, String>) -> Result<u64> {
    match v {
        NumOrString::Num(n) => Ok(*n),
        NumOrString::Str(s) => f(s).map_err(|e| anyhow::anyhow!(e)),
    }
}

/// A size key (`mem_size`, `bar1_size`), if given: bytes or a size with a binary suffix.
fn size(v: &Option<NumOrString>, name: &str) -> Result<Option<u64>> {
    v.as_ref()
        .map(|v| {
            num(v, |s| {
                vgrace_device::parse_size(s).map_err(|e| e.to_string())
            })
            .context(name.to_string())
        })
        .transpose()
}

/// A duration key (`2s`, `250ms`), or `default` when absent.
fn duration(v: &Option<String>, name: &str, default: Duration) -> Result<Duration> {
    match v {
        Some(s) => parse_duration(s).map_err(|e| anyhow::anyhow!("{name}: {e}")),
        None => Ok(default),
    }
}

/// Refuses a trace size limit that cannot hold the header and a line (0 included).
pub fn check_max_size(max: u64) -> Result<()> {
    if max < vfu::trace::MIN_MAX_BYTES {
        bail!(
            "trace max size {max} bytes is too small: at least {} bytes (4K)",
            vfu::trace::MIN_MAX_BYTES
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn two_devices_parse_with_defaults() {
        let text = "[[device]]\nsocket = \"/tmp/a.sock\"\n[[device]]\nsocket = \"/tmp/b.sock\"\nprofile = \"gb200\"\nmem_size = \"4G\"\n";
        let entries = parse(text).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].config.mem_size, 4 << 30);
        assert_eq!(entries[0].config.mem_size, 96 << 30);
    }

    /// One set of defaults: a `[[device]]` table with only its socket, the device flags left
    /// out, and `GpuConfig::default()` describe the same device.
    #[test]
    fn a_bare_table_and_no_flags_give_the_default_device() {
        use clap::Parser;
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            device: crate::cli::DeviceArgs,
        }
        let from_file = parse("[[device]]\nsocket = \"/tmp/a.sock\"\n").unwrap();
        let from_flags = crate::device_config(&Flags::try_parse_from(["vgrace"]).unwrap().device);
        let default = format!("{:?}", GpuConfig::default());
        assert_eq!(format!("{:?}", from_file[0].config), default);
        assert_eq!(format!("{:?}", from_flags.unwrap()), default);
        // And a flag given overrides just its own field.
        let flags = Flags::try_parse_from(["vgrace", "--mem-size", "4G"]).unwrap();
        let c = crate::device_config(&flags.device).unwrap();
        assert_eq!(
            (c.mem_size, c.mem_base),
            (4 << 30, GpuConfig::default().mem_base)
        );
    }

    #[test]
    fn unknown_key_is_refused() {
        let err = parse("[[device]]\nsocket = \"/tmp/a.sock\"\nsize = 3\n").unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
    }

    #[test]
    fn view_host_is_read_per_device_and_defaults_to_vfio() {
        use crate::view::View;
        let e = parse("[[device]]\nsocket = \"/tmp/a.sock\"\nview = \"host\"\n[[device]]\nsocket = \"/tmp/b.sock\"\n").unwrap();
        assert_eq!((e[0].view, e[1].view), (View::Host, View::Vfio));
        assert!(parse("[[device]]\nsocket = \"/tmp/a.sock\"\nview = \"guest\"\n").is_err());
    }

    #[test]
    fn duplicate_socket_is_refused() {
        let err =
            parse("[[device]]\nsocket = \"/tmp/a.sock\"\n[[device]]\nsocket = \"/tmp/a.sock\"\n")
                .unwrap_err();
        assert!(format!("{err:#}").contains("used twice"));
    }

    #[test]
    fn ids_default_to_gpu_index_and_must_be_unique() {
        let node = parse_node(
            "control = \"/tmp/c.sock\"\n[[device]]\nsocket = \"/tmp/a.sock\"\n[[device]]\nid = \"left\"\nsocket = \"/tmp/b.sock\"\n",
        )
        .unwrap();
        assert_eq!(node.devices[0].id, "gpu0");
        assert_eq!(node.devices[1].id, "left");
        assert_eq!(node.control.as_deref(), Some(Path::new("/tmp/c.sock")));
        let err = parse("[[device]]\nid = \"x\"\nsocket = \"/tmp/a.sock\"\n[[device]]\nid = \"x\"\nsocket = \"/tmp/b.sock\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("used twice"), "{err:#}");
        let err = parse("[[device]]\nid = \"a b\"\nsocket = \"/tmp/a.sock\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("letters"), "{err:#}");
    }

    #[test]
    fn empty_file_is_refused() {
        assert!(parse("").is_err());
    }

    /// The file takes the command line's size rule (binary suffixes in any case,
    /// `GB` refused) for both sizes.
    #[test]
    fn file_sizes_follow_the_command_line_rule() {
        let e = parse("[[device]]\nsocket = \"/tmp/a.sock\"\nprofile = \"gb200\"\nmem_size = \"4gib\"\nbar1_size = \"256m\"\n").unwrap();
        assert_eq!(e[0].config.mem_size, 4 << 30);
        assert_eq!(e[0].config.bar1_size, 256 << 20);
        for field in ["mem_size", "bar1_size"] {
            let err = parse(&format!(
                "[[device]]\nsocket = \"/tmp/a.sock\"\n{field} = \"96GB\"\n"
            ))
            .unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(field), "{msg}");
            assert!(msg.contains("write 96G or 96GiB"), "{msg}");
        }
    }

    #[test]
    fn trace_and_its_size_are_read_per_device() {
        let text = "[[device]]\nsocket = \"/tmp/a.sock\"\ntrace = \"/tmp/a.trace\"\ntrace_max_size = \"1M\"\n[[device]]\nsocket = \"/tmp/b.sock\"\n";
        let entries = parse(text).unwrap();
        assert_eq!(entries[0].trace.as_deref(), Some(Path::new("/tmp/a.trace")));
        assert_eq!(entries[0].trace_max_size, 1 << 20);
        assert_eq!(entries[1].trace, None);
    }

    #[test]
    fn one_trace_file_for_two_devices_is_refused() {
        let text = "[[device]]\nsocket = \"/tmp/a.sock\"\ntrace = \"/tmp/t\"\n[[device]]\nsocket = \"/tmp/b.sock\"\ntrace = \"/tmp/t\"\n";
        let err = parse(text).unwrap_err();
        assert!(format!("{err:#}").contains("trace file"), "{err:#}");
    }

    #[test]
    fn trace_max_size_below_4k_is_refused() {
        for size in ["0", "4095", "\"1K\""] {
            let err = parse(&format!(
                "[[device]]\nsocket = \"/tmp/a.sock\"\ntrace = \"/tmp/t\"\ntrace_max_size = {size}\n"
            ))
            .unwrap_err();
            assert!(format!("{err:#}").contains("too small"), "{size}: {err:#}");
        }
    }

    #[test]
    fn trace_max_size_without_trace_is_refused() {
        let err =
            parse("[[device]]\nsocket = \"/tmp/a.sock\"\ntrace_max_size = \"1M\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("needs trace"), "{err:#}");
    }

    #[test]
    fn bad_size_names_the_field() {
        let err = parse("[[device]]\nsocket = \"/tmp/a.sock\"\nmem_size = \"lots\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("mem_size"), "{err:#}");
    }
}
