//! `vgrace trace FILE`: reads a protocol trace written by `serve --trace` and prints a summary
//! per command, a listing of the messages (`--list`), or follows a live trace (`--follow`).

mod follow;
mod summary;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::cli::TraceArgs;
use summary::Summary;

/// Runs the command. A closed stdout (`vgrace trace --list FILE | head`) ends it quietly.
pub fn run(args: &TraceArgs) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let outcome = if args.follow {
        follow::run(&args.file, &mut out)
    } else {
        summarise(args, &mut out)
    };
    match outcome {
        Err(e) if crate::is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn summarise(args: &TraceArgs, out: &mut impl Write) -> Result<()> {
    let mut summary = Summary::default();
    for path in files(&args.file, args.all)? {
        let file = File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut printed = Ok(());
        read_lines(BufReader::new(file), |text| {
            if let Some(listed) = summary.feed(text) {
                if args.list && printed.is_ok() {
                    printed = writeln!(out, "{listed}");
                }
            }
        })
        .with_context(|| format!("cannot read {}", path.display()))?;
        printed?;
    }
    summary.finish();
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&as_json(&mut summary))?
        )?;
    } else {
        if args.list {
            writeln!(out)?;
        }
        print_table(&mut summary, out)?;
    }
    Ok(())
}

/// The files to read, oldest first: FILE alone, or with `all` the rotated FILE.N .. FILE.1 first.
fn files(file: &Path, all: bool) -> Result<Vec<PathBuf>> {
    if !file.exists() {
        bail!("no trace file {}", file.display());
    }
    let mut paths = Vec::new();
    if all {
        let mut k = 1;
        while vfu::trace::numbered(file, k).exists() {
            paths.push(vfu::trace::numbered(file, k));
            k += 1;
        }
        paths.reverse();
    }
    paths.push(file.to_path_buf());
    Ok(paths)
}

/// Calls `each` with every complete line (without its newline); a line that is not UTF-8 is
/// passed lossily, so it counts as malformed rather than stopping the reading.
fn read_lines(mut input: impl BufRead, mut each: impl FnMut(&str)) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        each(String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']));
    }
}

fn print_table(s: &mut Summary, out: &mut impl Write) -> std::io::Result<()> {
    if let Some(start) = &s.start {
        writeln!(out, "trace started {start}")?;
    }
    writeln!(
        out,
        "{:<26} {:>8} {:>12} {:>12} {:>8} {:>8} {:>8} {:>8}  errors",
        "command", "count", "bytes in", "bytes out", "p50 us", "p90 us", "p99 us", "max us"
    )?;
    for (name, st) in &mut s.commands {
        let p = st.percentiles();
        let cell = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let errors = if st.errors.is_empty() {
            "-".to_string()
        } else {
            st.errors
                .iter()
                .map(|(e, n)| format!("{e} x{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            out,
            "{name:<26} {:>8} {:>12} {:>12} {:>8} {:>8} {:>8} {:>8}  {errors}",
            st.count,
            st.bytes_in,
            st.bytes_out,
            cell(p.map(|p| p.p50)),
            cell(p.map(|p| p.p90)),
            cell(p.map(|p| p.p99)),
            cell(p.map(|p| p.max)),
        )?;
    }
    writeln!(
        out,
        "{} connection(s), {} refused",
        s.connections, s.refused
    )?;
    if s.unanswered > 0 {
        writeln!(out, "{} request(s) without a reply", s.unanswered)?;
    }
    if s.orphan_replies > 0 {
        writeln!(
            out,
            "{} reply(ies) without their request in the trace",
            s.orphan_replies
        )?;
    }
    if s.dropped > 0 {
        writeln!(
            out,
            "{} line(s) dropped by the writer (it fell behind the device)",
            s.dropped
        )?;
    }
    if s.malformed > 0 {
        writeln!(out, "{} malformed line(s) skipped", s.malformed)?;
    }
    Ok(())
}

fn as_json(s: &mut Summary) -> serde_json::Value {
    let commands: Vec<_> = s
        .commands
        .iter_mut()
        .map(|(name, st)| {
            json!({
                "cmd": name,
                "count": st.count,
                "errors": st.errors,
                "bytes_in": st.bytes_in,
                "bytes_out": st.bytes_out,
                "latency_us": st.percentiles(),
            })
        })
        .collect();
    json!({
        "start": s.start,
        "commands": commands,
        "connections": s.connections,
        "refused": s.refused,
        "unanswered": s.unanswered,
        "orphan_replies": s.orphan_replies,
        "dropped": s.dropped,
        "malformed": s.malformed,
    })
}
