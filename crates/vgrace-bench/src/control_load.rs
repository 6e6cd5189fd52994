//! Round trips against a real `vgrace serve --control` process while a control client works it:
//! the control plane must not slow the device down beyond its own share of the CPU. Pinned:
//! client, server process and control client share CPU 0.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use test_support::ServeChild;
use vfu::client::Client;

use crate::workloads::{place, read_rate, BenchError, Placement};

/// What the control client asks, in turn: the whole status, the counters, a BAR0 register
/// (takes the device lock) and a 4 KiB page of device memory.
const REQUESTS: [&str; 4] = [
    r#"{"v":1,"op":"status"}"#,
    r#"{"v":1,"op":"stats"}"#,
    r#"{"v":1,"op":"peek","region":0,"offset":5272,"count":4}"#,
    r#"{"v":1,"op":"peek","region":4,"offset":0,"count":4096}"#,
];

/// 4-byte BAR0 REGION_READ round trips per second against `vgrace serve --control`, while a
/// control client sends `rate` requests per second (0: none). Also returns how many control
/// requests were answered.
pub fn roundtrip_with_control(
    vgrace: &Path,
    iters: u64,
    rate: u32,
) -> Result<(f64, u64), BenchError> {
    // Everything on one CPU (the server process and the control thread inherit the mask): the
    // control plane's work is then counted in full, and the figure is steadier than unpinned.
    place(Placement::Pinned);
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("gpu.sock");
    let control = dir.path().join("control.sock");
    let mut cmd = std::process::Command::new(vgrace);
    cmd.arg("serve")
        .arg("--socket")
        .arg(&sock)
        .arg("--control")
        .arg(&control)
        .args(["--mem-size", "2660M"])
        .env("RUST_LOG", "warn");
    let _server = ServeChild::spawn(cmd)?.wait_listening(&[&sock, &control]);
    let mut client = Client::connect(&sock)?;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let load = (rate > 0).then(|| {
        let (stop, answered) = (stop.clone(), answered.clone());
        let stream = UnixStream::connect(&control);
        thread::spawn(move || -> Result<(), String> {
            let stream = stream.map_err(|e| e.to_string())?;
            let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
            let mut out = stream;
            let every = Duration::from_secs(1) / rate;
            let mut next = Instant::now();
            let mut line = String::new();
            for request in REQUESTS.iter().cycle() {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                writeln!(out, "{request}").map_err(|e| e.to_string())?;
                line.clear();
                reader.read_line(&mut line).map_err(|e| e.to_string())?;
                if !line.contains("\"ok\":true") {
                    return Err(format!("control request failed: {line}"));
                }
                answered.fetch_add(1, Ordering::Relaxed);
                next += every;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
            }
            Ok(())
        })
    });
    // Let the control client get going before the clock starts.
    thread::sleep(Duration::from_millis(20));
    let rate_out = read_rate(&mut client, iters)?;
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = load {
        t.join()
            .map_err(|_| "the control client panicked")?
            .map_err(BenchError::from)?;
    }
    Ok((rate_out, answered.load(Ordering::Relaxed)))
}
