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

/// `vgrace serve` with `args`, expected to refuse to start: its stderr, after checking the exit
/// status, that the refusal is one line, and that no socket in `sockets` was left behind.
fn refused(args: &[&str], sockets: &[&Path]) -> String {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: a server that starts instead of refusing is killed, and the test fails.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = child.try_wait().unwrap().is_none();
    if started {
        child.kill().unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!started, "served instead of refusing: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for s in sockets {
        assert!(!s.exists(), "{} left behind", s.display());
    }
    err
}

/// A trace path with a second name could be a device's memory (or any file the server may
/// write) under another name: refused at start, the other file untouched.
#[test]
fn serve_refuses_a_hard_linked_trace_file() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("precious");
    std::fs::write(&precious, "keep\n").unwrap();
    let trace = dir.path().join("t");
    std::fs::hard_link(&precious, &trace).unwrap();
    let socket = dir.path().join("s.sock");
    let err = refused(
        &[
            "--socket",
            socket.to_str().unwrap(),
            "--mem-size",
            "2G",
            "--trace",
            trace.to_str().unwrap(),
        ],
        &[&socket],
    );
    assert!(err.contains("hard links"), "{err}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep\n");
}

/// A trace whose file or rotated names (FILE.1) are another device's backing file, socket or
/// trace, or the control socket, is refused at start with one line: appending would corrupt
/// the memory, rotating would rename it away and later overwrite it. Spelled differently
/// (`dir/./name`) or not, existing or not.
#[test]
fn serve_refuses_a_trace_meeting_another_devices_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let control = dir.path().join("c.sock");
    std::fs::create_dir(dir.path().join("x")).unwrap();
    // (the second device's trace, the first's backing, what the line names)
    let cases = [
        (format!("{d}/a.mem"), "a.mem", "the backing file of gpu0"),
        (
            format!("{d}/./b.trace"),
            "b.trace.1",
            "the backing file of gpu0",
        ),
        (format!("{d}/a.sock"), "a.mem", "the socket of gpu0"),
        (format!("{d}/c.sock"), "a.mem", "the control socket"),
        (
            format!("{d}/a.trace.1"),
            "a.mem",
            "the trace of gpu0 (rotated)",
        ),
        (format!("{d}/x/../a.trace"), "a.mem", "the trace of gpu0"),
    ];
    for (trace, backing, what) in cases {
        // The first device's memory exists and holds data.
        std::fs::write(dir.path().join(backing), vec![7u8; 4 << 20]).unwrap();
        let config = dir.path().join("node.toml");
        std::fs::write(
            &config,
            format!(
                "control = \"{d}/c.sock\"\n\
                 [[device]]\nsocket = \"{d}/a.sock\"\nmem_size = \"4M\"\nbacking = \"{d}/{backing}\"\n\
                 trace = \"{d}/a.trace\"\n\
                 [[device]]\nsocket = \"{d}/b.sock\"\nmem_size = \"4M\"\ntrace = \"{trace}\"\n"
            ),
        )
        .unwrap();
        let err = refused(&["--config", config.to_str().unwrap()], &[&a, &b, &control]);
        assert!(err.contains(what), "{trace}: {err}");
        assert!(err.contains("gpu1: trace file"), "{trace}: {err}");
        assert_eq!(
            std::fs::read(dir.path().join(backing)).unwrap(),
            vec![7u8; 4 << 20]
        );
        assert!(!dir.path().join("a.mem.1").exists());
        std::fs::remove_file(dir.path().join(backing)).unwrap();
    }
}

/// `--trace-max-size 0`, and any size that cannot hold the header and a line (below 4 KiB),
/// is refused at start with one line; 4K is served.
#[test]
fn serve_refuses_a_trace_max_size_below_4k() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let trace = dir.path().join("t");
    for size in ["0", "4095", "1K"] {
        let err = refused(
            &[
                "--socket",
                socket.to_str().unwrap(),
                "--mem-size",
                "2G",
                "--trace",
                trace.to_str().unwrap(),
                "--trace-max-size",
                size,
            ],
            &[&socket],
        );
        assert!(err.contains("too small"), "{size}: {err}");
        assert!(!trace.exists());
    }
    let mut server = ServeChild::serve(
        BIN,
        [
            "--socket",
            socket.to_str().unwrap(),
            "--mem-size",
            "2G",
            "--trace",
            trace.to_str().unwrap(),
            "--trace-max-size",
            "4K",
        ],
    )
    .wait_listening(&[&socket]);
    let mut c = Client::connect(&socket).unwrap();
    for _ in 0..100 {
        c.region_read(7, 0, 4).unwrap();
    }
    drop(c);
    let (status, log) = server.signal(Signal::SIGTERM);
    assert!(status.success(), "{log}");
    assert!(std::fs::metadata(&trace).unwrap().len() <= 4096);
    assert!(vfu::trace::numbered(&trace, 1).exists(), "rotated");
}

/// Every line of `path`, each checked to be whole JSON.
fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// A trace on a file system that fills up pauses (one log line) instead of stopping for good;
/// once there is room again it resumes with a note counting the lines it lost, and no line in
/// the file is cut. Needs root for the small tmpfs; skipped otherwise.
#[test]
fn trace_resumes_after_the_file_system_has_room_again() {
    let Some(fs) = common::Tmpfs::mount("256k") else {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gpu.sock");
    let trace = fs.0.path().join("gpu.trace");
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
    // Fill the file system.
    let filler = fs.0.path().join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    while f.write_all(&[0u8; 4096]).is_ok() {}
    drop(f);
    let mut c = Client::connect(&socket).unwrap();
    let wait_log = |server: &ServeChild, needle: &str, c: &mut Client| {
        for _ in 0..1000 {
            for _ in 0..50 {
                c.region_read(7, 0, 4).unwrap();
            }
            if server.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no {needle:?} in {}", server.log());
    };
    wait_log(&server, "trace paused", &mut c);
    assert!(server.alive());
    std::fs::remove_file(&filler).unwrap();
    wait_log(&server, "trace resumed", &mut c);
    // A marker read after the resume reaches the file.
    c.region_read(7, 0x10, 4).unwrap();
    drop(c);
    let (status, log) = server.signal(Signal::SIGTERM);
    assert!(status.success(), "{log}");
    assert_eq!(log.matches("trace paused").count(), 1, "{log}");
    let lines = json_lines(&trace);
    let lost: u64 = lines
        .iter()
        .filter_map(|l| l.get("dropped").and_then(serde_json::Value::as_u64))
        .sum();
    assert!(lost > 0, "a note counts the lost lines");
    assert!(
        lines
            .iter()
            .any(|l| l.get("offset").and_then(serde_json::Value::as_u64) == Some(0x10)),
        "the trace goes on after the resume"
    );
}

/// Two rotations between two polls of `--follow` (FILE -> FILE.1 twice, one rotated file
/// kept): the file in the middle, now FILE.1, is read too, in order. Before: it was skipped.
#[test]
fn follow_reads_every_file_when_two_rotations_fall_in_one_poll() {
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
    let outcome = (|| {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) if l.contains("following") => {}
            other => return Err(format!("{other:?}")),
        }
        let line = |cmd: &str, t: f64| {
            format!("{{\"t\":{t},\"dir\":\"in\",\"id\":1,\"cmd\":\"{cmd}\",\"region\":0}}\n")
        };
        let rotated = dir.path().join("t.1");
        // All of it well inside one 100 ms poll.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&trace)
            .unwrap();
        f.write_all(line("REGION_WRITE", 1.0).as_bytes()).unwrap();
        drop(f);
        std::fs::rename(&trace, &rotated).unwrap();
        std::fs::write(&trace, format!("{header}{}", line("DMA_MAP", 2.0))).unwrap();
        std::fs::rename(&trace, &rotated).unwrap();
        std::fs::write(&trace, format!("{header}{}", line("DMA_UNMAP", 3.0))).unwrap();
        let mut seen = Vec::new();
        while seen.len() < 3 {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        let want = ["-> REGION_WRITE", "-> DMA_MAP", "-> DMA_UNMAP"];
        let in_order = seen.len() == 3 && seen.iter().zip(want).all(|(l, w)| l.contains(w));
        if in_order {
            Ok(())
        } else {
            Err(format!("listed {seen:?}"))
        }
    })();
    child.kill().unwrap();
    child.wait().unwrap();
    outcome.unwrap();
}
