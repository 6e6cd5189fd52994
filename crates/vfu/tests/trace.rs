//! The protocol trace: what a server with a [`TraceWriter`] writes, rotation, back-pressure and
//! how the file is opened.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Harness, REGS};
use vfu::server::observe::{Event, Fields, Observer, Request};
use vfu::server::ServerConfig;
use vfu::trace::line::{self, Dir, Record};
use vfu::trace::{numbered, TraceError, TraceLimits, TraceWriter, MIN_MAX_BYTES};
use vfu::wire::{cmd, Header};

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until the file has a line containing `needle` (the writer batches for a few ms).
fn wait_for_line(path: &Path, needle: &str) -> Vec<String> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = lines_of(path);
        if lines.iter().any(|l| l.contains(needle)) || Instant::now() > until {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The line without its time, which varies from run to run.
fn untimed(text: &str) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
    v.as_object_mut().unwrap().remove("t");
    v
}

fn read_request(id: u16) -> Request {
    Request {
        header: Header {
            msg_id: id,
            cmd: cmd::REGION_READ,
            msg_size: 32,
            flags: 0,
            error: 0,
        },
        fds: 0,
        fields: Fields {
            region: Some(4),
            offset: Some(4096),
            count: Some(4),
            ..Fields::default()
        },
    }
}

#[test]
fn traced_server_writes_each_message_and_event_as_a_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.jsonl");
    // The header names the program the caller gave, not a name of the library's.
    let trace = TraceWriter::open(&path, "some-server", TraceLimits::default()).unwrap();
    let h = Harness::build(ServerConfig::default(), move |s| s.with_observer(trace));
    let mut c = h.client();
    c.region_read(REGS, 0x10, 4).unwrap();
    assert!(c.region_read(99, 0, 4).is_err());
    drop(c);
    let lines = wait_for_line(&path, "disconnected");

    let header: line::Header = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!((header.trace.as_str(), header.v), ("some-server", 1));
    assert!(matches!(
        line::parse(&lines[0]),
        Some(line::Record::Header(_))
    ));
    assert!(header.start.ends_with('Z'), "{}", header.start);
    let me = std::process::id();
    let uid = nix::unistd::getuid().as_raw();
    assert_eq!(
        untimed(&lines[1]),
        serde_json::json!({"dir":"event","event":"connected","pid":me,"uid":uid}),
        "{lines:#?}"
    );
    let version = untimed(&lines[2]);
    assert_eq!(
        (&version["dir"], &version["cmd"]),
        (&"in".into(), &"VERSION".into())
    );
    // The client's own version, as major.minor.
    assert!(
        version["version"].as_str().unwrap().starts_with("0."),
        "{version}"
    );
    let out_version = untimed(&lines[3]);
    assert_eq!(out_version["dir"], "out");
    assert_eq!(out_version["cmd"], "VERSION");
    assert!(out_version.get("errno").is_none(), "{out_version}");
    assert!(out_version.get("sent").is_none(), "{out_version}");
    let id = untimed(&lines[4])["id"].clone();
    assert_eq!(
        untimed(&lines[4]),
        serde_json::json!({"dir":"in","id":id,"cmd":"REGION_READ","size":32,"fds":0,"region":0,"offset":16,"count":4})
    );
    let mut out = untimed(&lines[5]);
    assert!(out["us"].is_u64(), "{out}");
    out.as_object_mut().unwrap().remove("us");
    assert_eq!(
        out,
        serde_json::json!({"dir":"out","id":id,"cmd":"REGION_READ","size":36,"fds":0})
    );
    assert_eq!(untimed(&lines[6])["region"], 99);
    let mut err = untimed(&lines[7]);
    err.as_object_mut().unwrap().remove("us");
    assert_eq!(err["errno"], "EINVAL", "{err}");
    assert_eq!(err["size"], 16);
    assert_eq!(
        untimed(&lines[8]),
        serde_json::json!({"dir":"event","event":"disconnected","pid":me,"uid":uid,"end":"Closed"})
    );
    // Times count up from the header, and every line reads back.
    let mut last = 0.0;
    for l in &lines[1..] {
        match line::parse(l) {
            Some(Record::Line(line)) => {
                assert!(line.t >= last, "{lines:#?}");
                last = line.t;
            }
            other => panic!("{l}: {other:?}"),
        }
    }
}

#[test]
fn trace_rotates_at_the_limit_and_keeps_only_keep_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl");
    let limits = TraceLimits {
        max_bytes: MIN_MAX_BYTES,
        keep: 2,
    };
    let trace = TraceWriter::open(&path, "vgrace", limits).unwrap();
    for id in 0..300 {
        trace.observe(&Event::Request(&read_request(id)));
    }
    drop(trace);
    for p in [path.clone(), numbered(&path, 1), numbered(&path, 2)] {
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.len() as u64 <= MIN_MAX_BYTES,
            "{} is {} bytes",
            p.display(),
            text.len()
        );
        assert!(text.starts_with("{\"trace\":\"vgrace\""), "{text}");
        assert!(text.lines().count() > 1, "{text}");
    }
    assert!(!numbered(&path, 3).exists());
    // The newest lines are in FILE; the last message traced is its last line.
    let last = lines_of(&path).pop().unwrap();
    assert_eq!(untimed(&last)["id"], 299, "{last}");
}

#[test]
fn full_channel_drops_and_counts_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl");
    let trace =
        TraceWriter::open_with_capacity(&path, "vgrace", TraceLimits::default(), 1).unwrap();
    let total = 20_000u64;
    let start = Instant::now();
    for id in 0..total {
        trace.observe(&Event::Request(&read_request(id as u16)));
    }
    // 20 000 sends into a one-entry channel that blocked would take at least a batch (5 ms)
    // per entry.
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let counted = trace.dropped_total();
    drop(trace);
    let mut traced = 0;
    let mut dropped = 0;
    for l in lines_of(&path).iter().skip(1) {
        match line::parse(l) {
            Some(Record::Line(line)) if line.dir == Dir::In => traced += 1,
            Some(Record::Line(line)) if line.dir == Dir::Note => dropped += line.dropped.unwrap(),
            other => panic!("{l}: {other:?}"),
        }
    }
    assert!(dropped > 0, "nothing was dropped: {traced} traced");
    assert_eq!(traced + dropped, total);
    assert_eq!(counted, dropped);
}

#[test]
fn symlink_at_the_trace_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("precious");
    std::fs::write(&target, "keep me\n").unwrap();
    let path = dir.path().join("trace.jsonl");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let err = TraceWriter::open(&path, "vgrace", TraceLimits::default()).unwrap_err();
    assert!(matches!(err, TraceError::Symlink(_)), "{err:?}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
}

#[test]
fn new_trace_file_is_private_and_an_existing_one_is_appended() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.jsonl");
    drop(TraceWriter::open(&path, "vgrace", TraceLimits::default()).unwrap());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let trace = TraceWriter::open(&path, "vgrace", TraceLimits::default()).unwrap();
    trace.observe(&Event::Request(&read_request(7)));
    drop(trace);
    let lines = lines_of(&path);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines[0].starts_with("{\"trace\"") && lines[1].starts_with("{\"trace\""));
}

#[test]
fn a_directory_at_the_trace_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = TraceWriter::open(dir.path(), "vgrace", TraceLimits::default()).unwrap_err();
    assert!(
        matches!(err, TraceError::NotAFile(_) | TraceError::Open { .. }),
        "{err:?}"
    );
}

#[test]
fn hard_link_at_the_trace_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("precious");
    std::fs::write(&target, "keep me\n").unwrap();
    let path = dir.path().join("trace.jsonl");
    std::fs::hard_link(&target, &path).unwrap();
    let err = TraceWriter::open(&path, "vgrace", TraceLimits::default()).unwrap_err();
    assert!(
        matches!(err, TraceError::HardLink { links: 2, .. }),
        "{err:?}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
}

#[test]
fn trace_limit_below_one_header_and_line_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.jsonl");
    for max_bytes in [0, MIN_MAX_BYTES - 1] {
        let limits = TraceLimits { max_bytes, keep: 1 };
        let err = TraceWriter::open(&path, "vgrace", limits).unwrap_err();
        assert!(
            matches!(err, TraceError::TooSmall(n) if n == max_bytes),
            "{err:?}"
        );
    }
    assert!(!path.exists());
}
