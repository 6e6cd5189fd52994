//! `vgrace ctl`: a client of the control socket (see `control::protocol` for the wire format),
//! with human output or `--json` (the server's response objects, one per line).

mod show;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::serve::control::protocol::{
    from_hex, to_hex, At, Fault, FaultRequest, Request, MAX_BYTES,
};
use crate::units::{parse_duration, parse_u64};

/// `vgrace ctl`.
#[derive(Debug, Args)]
#[command(after_help = crate::out::EXIT_CODES)]
pub struct CtlArgs {
    /// The control socket (`vgrace serve --control PATH`); default: $VGRACE_CONTROL.
    #[arg(long, env = "VGRACE_CONTROL")]
    pub control: PathBuf,
    /// Print the server's JSON responses instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub verb: Verb,
}

/// The device a verb is about: its id (gpu0) or socket path; may be left out when the process
/// serves one device.
#[derive(Debug, Args)]
pub struct Target {
    /// Device id (gpu0, ...) or socket path.
    #[arg(long)]
    pub device: Option<String>,
}

/// Where peek and poke act.
#[derive(Debug, Args)]
pub struct Place {
    /// Region: bar0..bar5, config, rom, or a VFIO region index.
    #[arg(long, value_parser = parse_region)]
    pub region: u32,
    /// Offset in the region.
    #[arg(long, value_parser = parse_u64)]
    pub offset: u64,
}

/// `vgrace ctl` verbs.
#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Devices, profile, behaviour version, memory, readiness, faults, the attached client.
    Status(Target),
    /// Per device and command: count, errors by errno, bytes in/out; resets, clients.
    Stats {
        #[command(flatten)]
        target: Target,
        /// Refresh until interrupted.
        #[arg(long)]
        watch: bool,
        /// With --watch: time between refreshes.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
    },
    /// Apply (or --clear) a fault while the device runs.
    Fault {
        #[command(flatten)]
        target: Target,
        /// link-down, hbm-lost, never-ready (from the next reset), ready-delay (next reset,
        /// --delay), poison (--region --offset, Linux 6.19+), delay-replies (--delay, optional
        /// --count), drop-client, refuse-next (--count, default 1); `all` with --clear.
        #[arg(value_enum, hide_possible_values = true)]
        kind: Fault,
        /// Clear the fault instead of applying it.
        #[arg(long)]
        clear: bool,
        /// link-down: do not signal the client's error interrupt (a real link going down is a
        /// fatal PCIe error, reported to the client; QEMU stops the guest on it).
        #[arg(long)]
        quiet: bool,
        /// ready-delay / delay-replies: how long, e.g. 6s or 250ms.
        #[arg(long, value_parser = parse_duration)]
        delay: Option<Duration>,
        /// delay-replies: how many replies (default: until cleared); refuse-next: how many
        /// connections.
        #[arg(long)]
        count: Option<u64>,
        /// poison: memory region (2 or 4, or bar2/bar4).
        #[arg(long, value_parser = parse_region)]
        region: Option<u32>,
        /// poison: offset in the region.
        #[arg(long, value_parser = parse_u64)]
        offset: Option<u64>,
    },
    /// Read device memory, BAR0 registers or config space (hex dump, or --raw bytes).
    Peek {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        at: Place,
        /// How many bytes.
        #[arg(long, value_parser = parse_u64)]
        count: u64,
        /// Write the bytes themselves to stdout.
        #[arg(long)]
        raw: bool,
    },
    /// Write device memory, BAR0 registers or config space.
    Poke {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        at: Place,
        /// A number to write, little-endian, --width bytes wide.
        #[arg(long, value_parser = parse_u64, conflicts_with_all = ["hex", "file"])]
        value: Option<u64>,
        /// With --value: 1, 2, 4 or 8 bytes.
        #[arg(long, default_value = "4", requires = "value")]
        width: u8,
        /// Bytes as hex, e.g. deadbeef.
        #[arg(long, conflicts_with = "file")]
        hex: Option<String>,
        /// Bytes from a file ("-": stdin).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Reset the device, as VFIO_DEVICE_RESET does.
    Reset(Target),
    /// Recent events (connects, disconnects, resets, faults, error replies); --follow streams.
    Events {
        #[command(flatten)]
        target: Target,
        /// Keep streaming new events.
        #[arg(long)]
        follow: bool,
    },
}

/// `bar0`..`bar5`, `rom`, `config`, `vga` or a number.
pub fn parse_region(s: &str) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    let named = match lower.as_str() {
        "config" | "cfg" => Some(vfu::device::CONFIG_REGION_INDEX),
        "rom" => Some(vfu::device::ROM_REGION_INDEX),
        "vga" => Some(vfu::device::VGA_REGION_INDEX),
        _ => lower
            .strip_prefix("bar")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n <= 5),
    };
    match named {
        Some(r) => Ok(r),
        None => match parse_u64(s).ok().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if n < vfu::device::PCI_NUM_REGIONS => Ok(n),
            _ => Err(format!(
                "{s:?} is not a region: bar0..bar5, config, rom, vga or 0-8"
            )),
        },
    }
}

/// The request fields `ctl` fills from its flags, those flags, and the unit of the field's
/// value: the control plane's errors name the JSON fields (`"ms"`), which a `ctl` user never
/// typed.
const FIELD_FLAGS: [(&str, &str, &str); 5] = [
    ("ms", "--delay", "ms"),
    ("count", "--count", ""),
    ("region", "--region", ""),
    ("offset", "--offset", ""),
    ("device", "--device", ""),
];

/// `message` with the quoted request fields (`needs "ms"`) and a leading field value
/// (`ms 90000000: at most ...`) named by their `ctl` flags (`--delay 90000000ms: ...`).
fn flag_names(message: &str) -> String {
    let mut out = message.to_string();
    for (field, flag, unit) in FIELD_FLAGS {
        out = out.replace(&format!("\"{field}\""), flag);
        if let Some(rest) = out.strip_prefix(&format!("{field} ")) {
            out = match rest.split_once(':') {
                Some((value, tail)) => format!("{flag} {value}{unit}:{tail}"),
                None => format!("{flag} {rest}"),
            };
        }
    }
    out
}

/// A connection to the control socket.
pub struct Control {
    stream: BufReader<UnixStream>,
}

impl Control {
    /// Connects to `path`.
    pub fn connect(path: &std::path::Path) -> Result<Self> {
        let stream = UnixStream::connect(path).with_context(|| {
            format!(
                "cannot reach the control socket {} (is `vgrace serve --control` running?)",
                path.display()
            )
        })?;
        Ok(Self {
            stream: BufReader::new(stream),
        })
    }

    /// Sends one request and returns the response, or its error message.
    pub fn call(&mut self, request: &Request) -> Result<Value> {
        self.send(&request.to_line())?;
        let response = self.read()?;
        if response["ok"] != json!(true) {
            let message = response["error"]["message"]
                .as_str()
                .unwrap_or("the server answered without a message");
            bail!("{}", flag_names(message));
        }
        Ok(response)
    }

    /// Sends one request line. A server that refused the connection (too many connections,
    /// uid not allowed) wrote why and hung up: its message is the error, not the EPIPE.
    fn send(&mut self, line: &str) -> Result<()> {
        let mut line = line.to_string();
        line.push('\n');
        let sent = self.stream.get_mut().write_all(line.as_bytes());
        if let Err(e) = sent {
            if let Ok(answer) = self.read() {
                if let Some(message) = answer["error"]["message"].as_str() {
                    bail!("the control socket refused the request: {message}");
                }
            }
            return Err(anyhow::Error::new(e)
                .context("control socket: the request was not sent (the server hung up)"));
        }
        Ok(())
    }

    /// Reads one line and parses it.
    pub fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.stream.read_line(&mut line).context("control socket")? == 0 {
            bail!("the control socket closed the connection");
        }
        serde_json::from_str(&line).context("control socket: not a JSON line")
    }
}

/// Prints responses: the JSON line with `--json`, else the text a verb makes of it. Flushed per
/// response: `events --follow` and `stats --watch` feed pipes as they go.
struct Printer {
    json: bool,
}

impl Printer {
    fn print(&self, v: &Value, human: &dyn Fn(&Value) -> String) -> Result<()> {
        let mut out = crate::out::stdout();
        if self.json {
            writeln!(out, "{v}")?;
        } else {
            write!(out, "{}", human(v))?;
        }
        out.flush()?;
        Ok(())
    }

    /// Text only (nothing with `--json`).
    fn say(&self, text: &str) -> Result<()> {
        if self.json {
            return Ok(());
        }
        self.print(&Value::Null, &|_| text.to_string())
    }
}

/// Runs `vgrace ctl`.
pub fn run(args: &CtlArgs) -> Result<()> {
    let mut c = Control::connect(&args.control)?;
    let out = Printer { json: args.json };
    match &args.verb {
        Verb::Status(t) => {
            let v = c.call(&Request::Status {
                device: t.device.clone(),
            })?;
            out.print(&v, &show::status)
        }
        Verb::Stats {
            target,
            watch,
            interval,
        } => stats(&mut c, &out, target, *watch, *interval),
        Verb::Fault {
            target,
            kind,
            clear,
            quiet,
            delay,
            count,
            region,
            offset,
        } => {
            let fault = FaultRequest {
                fault: Some(kind.name().to_string()),
                clear: *clear,
                quiet: *quiet,
                ms: delay.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                count: *count,
                region: *region,
                offset: *offset,
            };
            let device = target.device.clone();
            let v = c.call(&Request::Fault { device, fault })?;
            out.print(&v, &show::faults)
        }
        Verb::Peek {
            target,
            at,
            count,
            raw,
        } => peek(&mut c, target, at, *count, *raw, out.json),
        Verb::Poke {
            target,
            at,
            value,
            width,
            hex,
            file,
        } => {
            let data = poke_bytes(*value, *width, hex.as_deref(), file.as_deref())?;
            poke(&mut c, &out, target, at, &data)
        }
        Verb::Reset(t) => {
            let v = c.call(&Request::Reset {
                device: t.device.clone(),
            })?;
            out.print(&v, &|_| "reset\n".to_string())
        }
        Verb::Events { target, follow } => events(&mut c, &out, target, *follow),
    }
}

/// `ctl stats`, once or (`--watch`) every `interval` until interrupted.
fn stats(
    c: &mut Control,
    out: &Printer,
    target: &Target,
    watch: bool,
    interval: Duration,
) -> Result<()> {
    loop {
        let v = c.call(&Request::Stats {
            device: target.device.clone(),
        })?;
        if watch {
            // Clear the screen and home the cursor, as watch(1) does.
            out.say("\x1b[2J\x1b[H")?;
        }
        out.print(&v, &show::stats)?;
        if !watch {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

/// `ctl poke`: the bytes in requests of at most [`MAX_BYTES`].
fn poke(
    c: &mut Control,
    out: &Printer,
    target: &Target,
    &Place { region, offset }: &Place,
    data: &[u8],
) -> Result<()> {
    let mut written = 0u64;
    for (i, chunk) in data.chunks(MAX_BYTES as usize).enumerate() {
        let at = offset
            .checked_add(i as u64 * MAX_BYTES)
            .context("offset overflows")?;
        let v = c.call(&Request::Poke {
            device: target.device.clone(),
            at: At {
                region: Some(region),
                offset: Some(at),
            },
            data: Some(to_hex(chunk)),
        })?;
        written += v["written"].as_u64().unwrap_or(0);
        if out.json {
            out.print(&v, &|_| String::new())?;
        }
    }
    out.say(&format!(
        "wrote {written} bytes at region {region} offset {offset:#x}\n"
    ))
}

/// `ctl events`: the recent ones, or (`--follow`) each new one until the server goes.
fn events(c: &mut Control, out: &Printer, target: &Target, follow: bool) -> Result<()> {
    let v = c.call(&Request::Events {
        device: target.device.clone(),
        follow,
    })?;
    if !follow {
        for e in v["events"].as_array().into_iter().flatten() {
            out.print(e, &show::event)?;
        }
        return Ok(());
    }
    loop {
        let line = c.read()?;
        out.print(&line["event"], &show::event)?;
    }
}

fn peek(
    c: &mut Control,
    target: &Target,
    &Place { region, offset }: &Place,
    count: u64,
    raw: bool,
    json_out: bool,
) -> Result<()> {
    if count == 0 {
        bail!("--count must be at least 1");
    }
    offset
        .checked_add(count)
        .context("offset + count overflows")?;
    let mut out = crate::out::stdout();
    let mut done = 0u64;
    while done < count {
        let n = (count - done).min(MAX_BYTES);
        let v = c.call(&Request::Peek {
            device: target.device.clone(),
            at: At {
                region: Some(region),
                offset: Some(offset + done),
            },
            count: Some(n),
        })?;
        let bytes =
            from_hex(v["data"].as_str().unwrap_or("")).map_err(|f| anyhow::anyhow!("{}", f.0))?;
        if json_out {
            writeln!(out, "{v}")?;
        } else if raw {
            out.write_all(&bytes)?;
        } else {
            write!(out, "{}", show::hexdump(offset + done, &bytes))?;
        }
        if bytes.is_empty() {
            break;
        }
        done += bytes.len() as u64;
    }
    Ok(())
}

fn poke_bytes(
    value: Option<u64>,
    width: u8,
    hex: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Vec<u8>> {
    let data = match (value, hex, file) {
        (Some(v), _, _) => {
            if !matches!(width, 1 | 2 | 4 | 8) {
                bail!("--width must be 1, 2, 4 or 8");
            }
            if width < 8 && v >> (u32::from(width) * 8) != 0 {
                bail!("--value {v:#x} does not fit in {width} bytes");
            }
            v.to_le_bytes()[..usize::from(width)].to_vec()
        }
        (None, Some(h), _) => from_hex(h.trim()).map_err(|f| anyhow::anyhow!("--hex: {}", f.0))?,
        (None, None, Some(p)) if p.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
            buf
        }
        (None, None, Some(p)) => {
            std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?
        }
        (None, None, None) => bail!("poke needs --value, --hex or --file"),
    };
    if data.is_empty() {
        bail!("nothing to write");
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_errors_name_ctl_flags() {
        assert_eq!(
            flag_names("fault ready-delay needs \"ms\""),
            "fault ready-delay needs --delay"
        );
        assert_eq!(
            flag_names("ms 90000000: at most 86400000 (a day)"),
            "--delay 90000000ms: at most 86400000 (a day)"
        );
        assert_eq!(
            flag_names("this process serves several devices: name one with \"device\" (a, b)"),
            "this process serves several devices: name one with --device (a, b)"
        );
        // A value the user gave is named by its flag too.
        assert_eq!(
            flag_names("offset 0x10 is past region 4's memory"),
            "--offset 0x10 is past region 4's memory"
        );
    }
}
