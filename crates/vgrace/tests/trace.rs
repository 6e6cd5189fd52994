//! `vgrace serve --trace` and `vgrace trace`, end to end: a real server writes the trace, the
//! real command reads it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::Signal;
use test_support::ServeChild;
use vfu::client::Client;

use common::vgrace;

const BIN: &str = env!("CARGO_BIN_EXE_vgrace");

/// The table row of `cmd` in `vgrace trace` output, split into cells.
fn row<'a>(out: &'a str, cmd: &str) -> Vec<&'a str> {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(cmd))
        .unwrap_or_else(|| panic!("no {cmd} row in:\n{out}"))
        .split_whitespace()
        .collect()
}

/// Serves with `--trace`, talks to the server, stops it; returns the trace's path.
fn traced_session(dir: &Path) -> std::path::PathBuf {
    let socket = dir.join("gpu.sock");
    let trace = dir.join("gpu.trace");
    let mut server = ServeChild::serve(
        BIN,
        [
            "--socket",
            socket.to_str().unwrap(),
            "--mem-size",
            "2G",
            "--trace",
            trace.to_str().unwrap(),
        ],
    )
    .wait_listening(&[&socket]);
    let mut c = Client::connect(&socket).unwrap();
    for region in [0, 2, 4, 7] {
        c.region_info(region).unwrap();
    }
    // Config space: vendor and device id, then the command register.
    c.region_read(7, 0, 4).unwrap();
    c.region_read(7, 4, 2).unwrap();
    // Past the end of BAR0: EINVAL.
    assert!(c.region_read(0, 1 << 40, 4).is_err());
    drop(c);
    let (status, log) = server.signal(Signal::SIGTERM);
    assert!(status.success(), "{log}");
    trace
}

#[test]
fn trace_summary_counts_each_command_and_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let trace = traced_session(dir.path());
    let out = vgrace(&["trace", trace.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(row(&text, "VERSION")[1], "1", "{text}");
    // Four regions; BAR0 and BAR2/BAR4 carry a sparse capability, which the client's first,
    // short query does not fit, so it asks again for those it needs whole: 5 in all.
    assert_eq!(row(&text, "DEVICE_GET_REGION_INFO")[1], "5", "{text}");
    let reads = row(&text, "REGION_READ");
    assert_eq!(reads[1], "3", "{text}");
    // Errors are the last column: "EINVAL x1".
    assert_eq!(&reads[reads.len() - 2..], ["EINVAL", "x1"], "{text}");
    assert!(!text.contains("malformed"), "{text}");
    assert!(!text.contains("without a reply"), "{text}");

    let json = vgrace(&["trace", "--json", trace.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let read = v["commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cmd"] == "REGION_READ")
        .unwrap();
    assert_eq!(read["errors"]["EINVAL"], 1, "{v}");
    // The readiness probe connection and the client.
    assert!(v["connections"].as_u64().unwrap() >= 1, "{v}");
}

#[test]
fn trace_list_shows_one_line_per_message_with_its_fields() {
    let dir = tempfile::tempdir().unwrap();
    let trace = traced_session(dir.path());
    let out = vgrace(&["trace", "--list", trace.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("-> REGION_READ") && l.contains("region=7 offset=0x4 count=2")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("<- REGION_READ") && l.contains("EINVAL") && l.ends_with(" us")),
        "{text}"
    );
}

#[test]
fn malformed_lines_are_counted_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t");
    std::fs::write(
        &trace,
        b"{\"trace\":\"vgrace\",\"v\":1,\"start\":\"x\"}\n{oops\n\xff\xfe\n{\"t\":0.1,\"dir\":\"in\",\"id\":1,\"cmd\":\"DEVICE_RESET\",\"size\":16}\n",
    )
    .unwrap();
    let out = vgrace(&["trace", trace.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("2 malformed line(s)"), "{text}");
    assert_eq!(row(&text, "DEVICE_RESET")[1], "1", "{text}");
}

#[test]
fn missing_trace_file_is_an_error() {
    let out = vgrace(&["trace", "/nonexistent/trace"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no trace file"));
}

#[test]
fn follow_lists_lines_written_after_it_started_and_survives_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t");
    let header = "{\"trace\":\"vgrace\",\"v\":1,\"start\":\"x\"}\n";
    std::fs::write(&trace, header).unwrap();
    let mut child = Command::new(BIN)
        .args(["trace", "--follow", trace.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let wait_for = |needle: &str| -> Result<(), String> {
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(l) if l.contains(needle) => return Ok(()),
                Ok(l) => seen.push(l),
                Err(_) => return Err(format!("no {needle} in {seen:?}")),
            }
        }
    };
    let outcome = (|| {
        wait_for("following")?;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&trace)
            .unwrap();
        f.write_all(b"{\"t\":1.5,\"dir\":\"in\",\"id\":9,\"cmd\":\"REGION_WRITE\",\"region\":0,\"offset\":8,\"count\":4}\n")
            .unwrap();
        wait_for("-> REGION_WRITE")?;
        // Rotation: the server renames the file and starts a new one.
        std::fs::rename(&trace, dir.path().join("t.1")).unwrap();
        std::fs::write(
            &trace,
            format!("{header}{{\"t\":2.0,\"dir\":\"event\",\"event\":\"connected\",\"pid\":1}}\n"),
        )
        .unwrap();
        wait_for("== connected")
    })();
    child.kill().unwrap();
    child.wait().unwrap();
    outcome.unwrap();
}

#[test]
fn serve_refuses_a_symlinked_trace_file_and_leaves_no_socket() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("precious");
    std::fs::write(&target, "keep\n").unwrap();
    let trace = dir.path().join("t");
    std::os::unix::fs::symlink(&target, &trace).unwrap();
    let socket = dir.path().join("s.sock");
    let out = vgrace(&[
        "serve",
        "--socket",
        socket.to_str().unwrap(),
        "--mem-size",
        "2G",
        "--trace",
        trace.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("symlink"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!socket.exists());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep\n");
}

#[test]
fn trace_max_size_needs_trace() {
    let out = vgrace(&["serve", "--trace-max-size", "1M"]);
    assert_eq!(out.status.code(), Some(2));
}
