//! The `vgrace` command: serve a software Grace GPU over vfio-user, show its layout, check a
//! server against the nvgrace ABI, print the QEMU arguments that attach it, and read the
//! protocol traces `serve --trace` writes.

mod check;
mod cli;
mod config;
mod layout;
mod mapping;
mod node;
mod qemu_args;
mod serve;
mod trace_cmd;
mod trace_setup;
mod units;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use vgrace_device::{Backing, GpuConfig};

use cli::{Cli, Command, DeviceArgs};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(e),
    };
    init_tracing();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vgrace: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(args).map(|()| ExitCode::SUCCESS),
        Command::Layout(args) => layout::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Check(args) => check::run(&args),
        Command::QemuArgs(args) => qemu_args::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Trace(args) => trace_cmd::run(&args).map(|()| ExitCode::SUCCESS),
    }
}

/// Help and version go to stdout as clap writes them; usage errors become one line on stderr.
fn clap_exit(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        _ => {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("vgrace: {first} (see vgrace --help)");
            ExitCode::from(2)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Turns the device flags into the device model's configuration.
pub fn device_config(args: &DeviceArgs) -> Result<GpuConfig> {
    let backing = match args.backing.as_str() {
        "memfd" => Backing::Memfd,
        "hugetlbfs" => Backing::Hugetlbfs,
        "" => anyhow::bail!("--backing needs memfd, hugetlbfs or a file path"),
        path => Backing::File(PathBuf::from(path)),
    };
    Ok(GpuConfig {
        profile: args.profile,
        device_id: args.device_id,
        mem_size: args.mem_size,
        mem_base: args.mem_base,
        backing,
        ready_delay: args.ready_delay,
        fault: args.fault,
        linux: args.linux,
        mem_properties: !args.no_mem_properties,
        bar1_size: args.bar1_size,
        reset_ready_delay: args.reset_ready_delay,
        ready_timeout: args.ready_timeout,
        poison: args.poison.clone(),
        cxl: args.cxl.then_some(vgrace_device::Cxl {
            valid_delay: args.cxl_valid_delay,
            active_delay: args.cxl_active_delay,
            timeout_code: args.cxl_timeout_code,
        }),
    })
}
