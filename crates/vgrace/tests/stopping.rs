//! A `vgrace serve` child whose log reader goes away or stops reading, and one stopped while a
//! client request is stuck inside its device: logging never costs service, and a stop always
//! finishes within a bound, sockets removed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use test_support::ServeChild;
use vfu::client::Client;
use vfu::device::CONFIG_REGION_INDEX;
use vfu::wire::cmd;

const BIN: &str = env!("CARGO_BIN_EXE_vgrace");
/// gh100 with usemem 512 MiB at BAR4 (and resmem 1 GiB at BAR2).
const MEM_ARG: &str = "1610616832";
const USEMEM: u32 = 4;
/// The server's own bound is 3 s; this one only proves "does not hang".
const STOP_LIMIT: Duration = Duration::from_secs(10);

struct Paths {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    control: PathBuf,
}

fn paths() -> Paths {
    let dir = tempfile::tempdir().unwrap();
    Paths {
        socket: dir.path().join("gpu.sock"),
        control: dir.path().join("control.sock"),
        _dir: dir,
    }
}

fn serve_cmd(p: &Paths, extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(["--socket", p.socket.to_str().unwrap()])
        .args(["--control", p.control.to_str().unwrap()])
        .args(["--mem-size", MEM_ARG])
        .args(extra);
    cmd
}

/// One control request that must succeed.
fn control(path: &Path, request: Value) -> Value {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = request.to_string();
    line.push('\n');
    (&s).write_all(line.as_bytes()).unwrap();
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).unwrap();
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    v
}

/// A client whose every answer must come within 10 s (a server blocked on its log would
/// never answer).
fn client(socket: &Path) -> Client {
    let c = Client::connect(socket).unwrap();
    c.stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    c
}

#[test]
fn a_closed_stderr_costs_log_lines_not_service_and_sigterm_still_stops() {
    let p = paths();
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut child = ServeChild::spawn_with_stderr(serve_cmd(&p, &[]), Stdio::from(write_end))
        .unwrap()
        .wait_listening(&[&p.socket, &p.control]);
    // As `2>&1 | head -1` does: read a line, then go away.
    let mut reader = BufReader::new(std::fs::File::from(read_end));
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.contains("serving"), "{first}");
    drop(reader);
    // Every connect and disconnect now logs into a closed pipe.
    for _ in 0..5 {
        let mut c = client(&p.socket);
        assert_eq!(
            c.region_read(CONFIG_REGION_INDEX, 0, 2).unwrap(),
            [0xde, 0x10]
        );
    }
    let status = control(&p.control, json!({"v": 1, "op": "status"}));
    assert!(
        status["log_lines_dropped"].as_u64().unwrap() > 0,
        "{status}"
    );
    let (status, _, _) = child
        .signal_within(Signal::SIGTERM, STOP_LIMIT)
        .expect("SIGTERM did not stop a server whose stderr is closed");
    assert!(status.success(), "{status}");
    assert!(!p.socket.exists() && !p.control.exists());
}

#[test]
fn a_stderr_nobody_reads_never_blocks_a_client() {
    let p = paths();
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut child = ServeChild::spawn_with_stderr(serve_cmd(&p, &[]), Stdio::from(write_end))
        .unwrap()
        .wait_listening(&[&p.socket, &p.control]);
    // Each refused connection logs a line: far more than the pipe and the log queue hold. The
    // acceptor that logs them is the one that must accept the client afterwards.
    const REFUSED: u64 = 8000;
    control(
        &p.control,
        json!({"v": 1, "op": "fault", "fault": "refuse-next", "count": REFUSED}),
    );
    // On a thread: a connect blocks while the acceptor is stuck (its backlog full), and this
    // test must fail, not hang, then.
    let (done, finished) = std::sync::mpsc::channel();
    let socket = p.socket.clone();
    std::thread::spawn(move || {
        for _ in 0..REFUSED {
            let s = UnixStream::connect(&socket).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            // Refused: closed without a word (read returns at once).
            let _ = (&s).read(&mut [0u8; 16]);
        }
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(120))
        .expect("the acceptor stopped accepting: blocked on its log?");
    let mut c = client(&p.socket);
    assert_eq!(
        c.region_read(CONFIG_REGION_INDEX, 0, 2).unwrap(),
        [0xde, 0x10]
    );
    drop(c);
    let status = control(&p.control, json!({"v": 1, "op": "status"}));
    assert!(
        status["log_lines_dropped"].as_u64().unwrap() > 0,
        "{status}"
    );
    let (status, _, _) = child
        .signal_within(Signal::SIGTERM, STOP_LIMIT)
        .expect("SIGTERM did not stop a server whose stderr is full");
    assert!(status.success(), "{status}");
    // Still unread, so the pipe stayed full the whole time.
    drop(read_end);
}

/// A client request stuck inside the device: on Linux 6.19 the first memory access after a
/// reset waits (holding the device) until readiness returns, here an hour away.
fn stuck_client(p: &Paths) -> Client {
    let mut c = client(&p.socket);
    c.reset().unwrap();
    // Memory decode on, or the access would answer EIO at once.
    c.region_write(CONFIG_REGION_INDEX, 4, &[0x06, 0x00])
        .unwrap();
    let read = test_support::msg(
        0x77,
        cmd::REGION_READ,
        0,
        &[
            0u64.to_le_bytes().as_slice(),
            &USEMEM.to_le_bytes(),
            &4u32.to_le_bytes(),
        ]
        .concat(),
    );
    c.send_raw(&read, &[]).unwrap();
    // The control plane sees the device held: the request is in.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let status = control(&p.control, json!({"v": 1, "op": "status"}));
        if status["devices"][0]["readiness"]
            .as_str()
            .unwrap()
            .contains("holds the device")
        {
            return c;
        }
        assert!(
            Instant::now() < until,
            "the request never got stuck: {status}"
        );
    }
}

const STUCK_FLAGS: [&str; 6] = [
    "--linux",
    "6.19",
    "--reset-ready-delay",
    "1h",
    "--ready-timeout",
    "2h",
];

#[test]
fn every_stop_signal_ends_the_process_within_a_bound_despite_a_stuck_client() {
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        let p = paths();
        let backing = p._dir.path().join("gpu.mem");
        let mut flags = STUCK_FLAGS.to_vec();
        flags.extend(["--backing", backing.to_str().unwrap()]);
        let mut child = ServeChild::spawn(serve_cmd(&p, &flags))
            .unwrap()
            .wait_listening(&[&p.socket, &p.control]);
        // Written through the control plane: a client's own first memory access would wait
        // for the hour-long training its open started (the open is a function reset).
        let poke = control(
            &p.control,
            json!({"v": 1, "op": "poke", "region": USEMEM, "offset": 0x2000, "data": "6b657074"}),
        );
        assert_eq!(poke["ok"], true, "{poke}");
        let at = client(&p.socket).region_info(USEMEM).unwrap().info.offset + 0x2000;
        let _stuck = stuck_client(&p);
        let (status, took, log) = child
            .signal_within(sig, STOP_LIMIT)
            .unwrap_or_else(|| panic!("{sig} did not stop a server with a stuck client"));
        assert!(
            log.contains("exiting without them"),
            "{sig}: {status} after {took:?}: {log}"
        );
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(!p.socket.exists() && !p.control.exists(), "{log}");
        // What the client wrote is in the file (flushed at exit, the device lock still held).
        let mut mem = vec![0u8; 4];
        let f = std::fs::File::open(&backing).unwrap();
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut mem, at).unwrap();
        assert_eq!(&mem, b"kept");
    }
}

#[test]
fn a_second_signal_while_stopping_exits_at_once() {
    let p = paths();
    let mut child = ServeChild::spawn(serve_cmd(&p, &STUCK_FLAGS))
        .unwrap()
        .wait_listening(&[&p.socket, &p.control]);
    let _stuck = stuck_client(&p);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.pid()).unwrap());
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    // Wait until the first one is taken, so the second is not merged with it.
    let until = Instant::now() + Duration::from_secs(5);
    while UnixStream::connect(&p.control).is_ok() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, _, log) = child.signal_within(Signal::SIGINT, STOP_LIMIT).unwrap();
    assert!(log.contains("signal 2 while stopping"), "{status}: {log}");
    assert!(!p.socket.exists() && !p.control.exists(), "{log}");
}

#[test]
fn stuck_control_clients_never_hold_up_a_stop() {
    let p = paths();
    let mut child = ServeChild::spawn(serve_cmd(&p, &[]))
        .unwrap()
        .wait_listening(&[&p.socket, &p.control]);
    let mut held = Vec::new();
    // Silent, halfway through a line, following without reading, and asking for megabytes of
    // peeks it never reads (its thread blocks in the write).
    held.push(UnixStream::connect(&p.control).unwrap());
    let mut half = UnixStream::connect(&p.control).unwrap();
    half.write_all(b"{\"v\":1,\"op\":").unwrap();
    held.push(half);
    let mut follower = UnixStream::connect(&p.control).unwrap();
    follower
        .write_all(b"{\"v\":1,\"op\":\"events\",\"follow\":true}\n")
        .unwrap();
    held.push(follower);
    let mut greedy = UnixStream::connect(&p.control).unwrap();
    let peek = json!({"v": 1, "op": "peek", "region": 4, "offset": 0, "count": 1 << 20});
    for _ in 0..8 {
        writeln!(greedy, "{peek}").unwrap();
    }
    held.push(greedy);
    std::thread::sleep(Duration::from_millis(300));
    let (status, took, log) = child
        .signal_within(Signal::SIGTERM, STOP_LIMIT)
        .expect("stuck control clients held up the stop");
    // A clean stop, not the watchdog's.
    assert!(status.success(), "{status} after {took:?}: {log}");
    assert!(!log.contains("exiting without them"), "{log}");
    assert!(!p.socket.exists() && !p.control.exists());
}

/// A stop asks the client to release the device through its request interrupt (as the
/// kernel's `vfio_pci_core_request` does when a device is removed); a client that lets go at
/// once is not cut off, and the stop is clean.
#[test]
fn a_stop_signals_the_request_interrupt_and_waits_for_the_client_to_let_go() {
    use nix::sys::eventfd::{EfdFlags, EventFd};
    use std::os::fd::AsFd;
    const REQ: u32 = 4;
    const DATA_EVENTFD_TRIGGER: u32 = (1 << 2) | (1 << 5);
    let p = paths();
    let mut child = ServeChild::spawn(serve_cmd(&p, &[]))
        .unwrap()
        .wait_listening(&[&p.socket, &p.control]);
    let mut c = client(&p.socket);
    let req = EventFd::from_flags(EfdFlags::empty()).unwrap();
    c.set_irqs(DATA_EVENTFD_TRIGGER, REQ, 0, 1, &[], &[req.as_fd()])
        .unwrap();
    // The client: waits for the request, then leaves (as QEMU does once the guest let go).
    // (The server made the eventfd non-blocking: the flag is the shared file's.)
    let released = std::thread::spawn(move || {
        let until = Instant::now() + STOP_LIMIT;
        let n = loop {
            match req.read() {
                Ok(n) => break n,
                Err(_) if Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("no request within {STOP_LIMIT:?}: {e}"),
            }
        };
        drop(c);
        n
    });
    let (status, took, log) = child
        .signal_within(Signal::SIGTERM, STOP_LIMIT)
        .expect("SIGTERM did not stop the server");
    assert_eq!(released.join().unwrap(), 1);
    assert!(log.contains("request interrupt"), "{log}");
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(took < Duration::from_secs(3), "{took:?}: {log}");
}
