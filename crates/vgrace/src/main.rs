//! The `vgrace` command: serve a software Grace GPU over vfio-user, show its layout, check a
//! server against the nvgrace ABI, print the QEMU arguments that attach it, and read the
//! protocol traces `serve --trace` writes.

mod check;
mod cli;
mod ctl;
mod dirs;
mod generate;
mod guest;
mod kvfio;
mod logging;
mod node_file;
mod out;
mod serve;
mod trace_cmd;
mod transcript;
mod units;
mod view;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use vgrace_device::{Backing, Cxl, GpuConfig};

use cli::{Cli, Command, DeviceArgs};

fn main() -> ExitCode {
    // First, while the process has one thread: changing the environment is not thread-safe.
    let activation = serve::activation::Activation::take_env();
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(e),
    };
    logging::init();
    let code = match run(cli, activation) {
        Ok(code) => code,
        // The reader of stdout went away (`vgrace layout | head`): nothing left to say, as cat
        // would. A socket that hangs up is not this (see `out`).
        Err(e) if out::is_stdout_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            logging::flush(EXIT_FLUSH);
            say(&format!("vgrace: {e:#}"));
            ExitCode::FAILURE
        }
    };
    logging::flush(EXIT_FLUSH);
    code
}

/// How long an exiting process waits for its last log lines to reach stderr.
pub const EXIT_FLUSH: Duration = Duration::from_millis(500);

/// Writes one line to stderr, ignoring a closed or failing stderr (eprintln! would panic).
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Whether `e` comes from writing to a pipe nobody reads any more (any pipe: only for
/// commands that write to no socket).
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli, activation: serve::activation::Activation) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(args, activation).map(|()| ExitCode::SUCCESS),
        Command::Layout(args) => guest::layout::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Check(args) => check::run(&args),
        Command::QemuArgs(args) => guest::qemu_args::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Ctl(args) => ctl::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Trace(args) => trace_cmd::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Acpi(args) => guest::acpi::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Transcript(args) => transcript::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Generate(args) => generate::run(&args).map(|()| ExitCode::SUCCESS),
    }
}

/// Parses the command line, refusing device flags next to `--config`.
fn parse_cli() -> Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().try_get_matches()?;
    cli::refuse_device_flags_with_config(&matches)?;
    Cli::from_arg_matches(&matches)
}

/// Help and version go to stdout with exit code 0, as clap does. Bare `vgrace` (no verb) is a
/// usage error, as clap has it: the help goes to stderr and the exit code is 2. Other usage
/// errors become one line on stderr that keeps what clap says (the missing argument, the bad
/// value and why, its tip, the usage line) and exit with 2.
fn clap_exit(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = write!(std::io::stderr(), "{}", e.render());
            ExitCode::from(2)
        }
        _ => {
            use clap::CommandFactory;
            let cli = Cli::command();
            let verb = std::env::args()
                .skip(1)
                .find(|a| cli.get_subcommands().any(|c| c.get_name() == a));
            say(&format!(
                "vgrace: {}",
                one_line(&e.render().to_string(), verb.as_deref())
            ));
            ExitCode::from(2)
        }
    }
}

/// Folds clap's rendered error into one line: the message with its continuation lines (the
/// missing arguments), the tips, and the usage line (or where to find it); drops the blank
/// lines and clap's "For more information" footer.
fn one_line(rendered: &str, verb: Option<&str>) -> String {
    let mut message = String::new();
    let mut tips = Vec::new();
    let mut usage = None;
    let mut in_message = true;
    for line in rendered.lines() {
        let t = line.trim();
        if t.is_empty() {
            in_message = false;
        } else if let Some(u) = t.strip_prefix("Usage:") {
            usage = Some(u.trim().to_string());
        } else if let Some(tip) = t.strip_prefix("tip:") {
            tips.push(tip.trim().to_string());
        } else if in_message && !t.starts_with("For more information") {
            let t = t.strip_prefix("error:").map_or(t, str::trim);
            if !message.is_empty() {
                message.push_str(if message.ends_with(':') { " " } else { ", " });
            }
            message.push_str(t);
        }
    }
    if message.is_empty() {
        message.push_str("invalid arguments");
    }
    for tip in tips {
        message.push_str(&format!("; tip: {tip}"));
    }
    match (usage, verb) {
        (Some(u), _) => format!("{message} (usage: {u})"),
        (None, Some(v)) => format!("{message} (see vgrace {v} --help)"),
        (None, None) => format!("{message} (see vgrace --help)"),
    }
}

/// The device model's configuration: the defaults ([`GpuConfig::default`], the one set of them)
/// with the device flags given over them.
pub fn device_config(args: &DeviceArgs) -> Result<GpuConfig> {
    let mut c = GpuConfig::default();
    c.profile = args.profile.unwrap_or(c.profile);
    c.device_id = args.device_id.or(c.device_id);
    c.mem_size = args.mem_size.unwrap_or(c.mem_size);
    c.mem_base = args.mem_base.unwrap_or(c.mem_base);
    if let Some(b) = &args.backing {
        c.backing = backing(b)?;
    }
    c.ready_delay = args.ready_delay.unwrap_or(c.ready_delay);
    c.fault = args.fault.or(c.fault);
    c.linux = args.linux.unwrap_or(c.linux);
    c.mem_properties &= !args.no_mem_properties;
    c.bar1_size = args.bar1_size.unwrap_or(c.bar1_size);
    c.reset_ready_delay = args.reset_ready_delay.unwrap_or(c.reset_ready_delay);
    c.ready_timeout = args.ready_timeout.unwrap_or(c.ready_timeout);
    if !args.poison.is_empty() {
        c.poison = args.poison.clone();
    }
    if args.cxl {
        let d = Cxl::default();
        c.cxl = Some(Cxl {
            valid_delay: args.cxl_valid_delay.unwrap_or(d.valid_delay),
            active_delay: args.cxl_active_delay.unwrap_or(d.active_delay),
            timeout_code: args.cxl_timeout_code.unwrap_or(d.timeout_code),
        });
    }
    Ok(c)
}

/// A backing as `--backing` (or a file's `backing`) names it.
pub fn backing(name: &str) -> Result<Backing> {
    Ok(match name {
        "memfd" => Backing::Memfd,
        "hugetlbfs" => Backing::Hugetlbfs,
        "" => anyhow::bail!("--backing needs memfd, hugetlbfs or a file path"),
        path => Backing::File(PathBuf::from(path)),
    })
}
