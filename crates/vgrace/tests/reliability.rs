//! Crashes, disconnects and load: no fd, mapping or memory left behind by clients that die
//! mid-message; no acknowledged byte lost when the server is SIGKILLed; SIGTERM during traffic
//! exits cleanly; a soak of mixed operations matches a reference model.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use test_support::ServeChild;
use vfu::client::Client;
use vfu::server::ServerConfig;
use vgrace_device::{GpuConfig, Profile};

const BIN: &str = env!("CARGO_BIN_EXE_vgrace");

fn spawn_serve(socket: &Path, backing: &Path) -> ServeChild {
    let args: [&OsStr; 8] = [
        OsStr::new("--socket"),
        socket.as_os_str(),
        OsStr::new("--profile"),
        OsStr::new("gb200"),
        OsStr::new("--mem-size"),
        OsStr::new("64M"),
        OsStr::new("--backing"),
        backing.as_os_str(),
    ];
    ServeChild::serve(BIN, args).wait_listening(&[socket])
}

/// Every REGION_WRITE the server acknowledged is in the backing file after SIGKILL + restart.
#[test]
fn sigkill_and_restart_on_the_same_file_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gpu.sock");
    let backing = dir.path().join("gpu.mem");
    let mut child = spawn_serve(&socket, &backing);
    let mut c = Client::connect(&socket).unwrap();
    let mut written = Vec::new();
    for i in 0..2000u64 {
        let off = (i * 7919 * 64) % (64 << 20);
        let data = (i as u32 ^ 0xa5a5_0000).to_le_bytes();
        c.region_write(4, off, &data).unwrap();
        written.push((off, data));
    }
    child.kill();
    drop(c);
    let _ = std::fs::remove_file(&socket);
    let mut child = spawn_serve(&socket, &backing);
    let mut c = Client::connect(&socket).unwrap();
    let mut last: HashMap<u64, [u8; 4]> = HashMap::new();
    for (off, data) in &written {
        last.insert(*off, *data);
    }
    let lost = last
        .iter()
        .filter(|(off, data)| c.region_read(4, **off, 4).unwrap() != data.to_vec())
        .count();
    child.kill();
    assert_eq!(lost, 0);
}

/// SIGTERM while a client is busy: the server exits 0, removes its socket, and the client gets
/// an error instead of hanging.
#[test]
fn sigterm_during_traffic_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gpu.sock");
    let backing = dir.path().join("gpu.mem");
    let mut child = spawn_serve(&socket, &backing);
    let sock2 = socket.clone();
    let traffic = std::thread::spawn(move || {
        let mut c = Client::connect(&sock2).unwrap();
        let start = Instant::now();
        loop {
            if c.region_read(4, 0, 64).is_err() {
                return true;
            }
            if start.elapsed() > Duration::from_secs(20) {
                return false;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let (status, _) = child.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(traffic.join().unwrap(), "client never saw the server go");
    assert!(status.success());
    assert!(!socket.exists());
}

/// Mixed operations from two clients in sequence (reads, writes, posted writes, config BAR
/// writes, resets) checked against a reference model. `VGRACE_SOAK_OPS` sets the count (CI runs
/// a million in release mode; the default keeps `cargo test` fast).
#[test]
fn soak_mixed_operations_match_the_model() {
    let ops: u64 = std::env::var("VGRACE_SOAK_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    // gb200 with 64 MiB + 4 KiB: BAR4 is 128 MiB with a tail.
    let mem = (64 << 20) + 4096;
    let server = common::serve(
        &GpuConfig::memfd(Profile::Gb200, mem),
        ServerConfig::default(),
    );
    let path = server.path.clone();
    let bar = 128u64 << 20;
    let mut model: HashMap<u64, u8> = HashMap::new();
    let mut bar_val: u64 = 0;
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut divergences = 0u64;
    // Memory decode on, as a guest sets it: from Linux 6.19 the first memory access after a
    // reset with decode off is EIO (COMMAND survives resets).
    Client::connect(&path)
        .unwrap()
        .region_write(7, 4, &[0x06, 0x00])
        .unwrap();
    for half in 0..2 {
        let mut c = Client::connect(&path).unwrap();
        for _ in 0..ops / 2 {
            let r = next();
            // Offsets cluster around the start, the memory end and the BAR end.
            let offset = match r % 3 {
                0 => (r >> 8) % 4096,
                1 => mem - 64 + (r >> 8) % 128,
                _ => bar - 64 + (r >> 8) % 60,
            };
            let len = 1 + ((r >> 32) % 8) as usize;
            match (r >> 40) % 10 {
                0..=3 => {
                    let got = c.region_read(4, offset, len as u32).unwrap();
                    let n = len.min((bar - offset) as usize);
                    let want: Vec<u8> = (offset..offset + n as u64)
                        .map(|o| {
                            if o < mem {
                                *model.get(&o).unwrap_or(&0)
                            } else {
                                0xff
                            }
                        })
                        .collect();
                    divergences += u64::from(got != want);
                }
                4..=5 => {
                    let data: Vec<u8> = (0..len).map(|i| (r >> (i * 3)) as u8).collect();
                    c.region_write(4, offset, &data).unwrap();
                    for (i, b) in data.iter().enumerate() {
                        let o = offset + i as u64;
                        if o < mem && o < bar {
                            model.insert(o, *b);
                        }
                    }
                }
                6..=7 => {
                    let data = [(r >> 48) as u8; 4];
                    c.region_write_posted(4, offset & !3, &data).unwrap();
                    for i in 0..4 {
                        let o = (offset & !3) + i;
                        if o < mem {
                            model.insert(o, data[0]);
                        }
                    }
                }
                8 => {
                    let v = (r >> 16) as u32;
                    let hi = r & 1 == 1;
                    c.region_write(7, if hi { 0x24 } else { 0x20 }, &v.to_le_bytes())
                        .unwrap();
                    bar_val = if hi {
                        (bar_val & 0xffff_ffff) | (u64::from(v) << 32)
                    } else {
                        (bar_val & !0xffff_ffff) | u64::from(v)
                    };
                    let lo =
                        u32::from_le_bytes(c.region_read(7, 0x20, 4).unwrap().try_into().unwrap());
                    let want = ((bar_val & !(bar - 1)) | 0xc) as u32;
                    divergences += u64::from(lo != want);
                }
                _ => {
                    if r % 97 == 0 {
                        c.reset().unwrap();
                        bar_val = 0;
                    } else {
                        c.device_info().unwrap();
                    }
                }
            }
        }
        drop(c);
        let _ = half;
    }
    drop(server);
    assert_eq!(divergences, 0);
}
