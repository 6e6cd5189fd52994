//! Attacks on a running server by a hostile client, a hostile co-tenant of the host and a careless
//! operator: each test states the attack, then checks that the server lives, answers with an
//! errno instead of a signal, keeps its fd count, and keeps device memory intact.
//!
//! Tests that count a server's fds or CPU time run `vgrace serve` as a child process, so nothing
//! else in this binary disturbs the figures.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vfu::wire::{Decode, Encode};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use test_support::irq_flags::{ACTION_TRIGGER, DATA_EVENTFD};
use test_support::{msg, IrqSet, ServeChild};
use vfu::client::Client;
use vfu::device::MSIX_IRQ_INDEX;
use vfu::server::ServerConfig;
use vfu::wire::{cmd, Header, RegionAccess, Version, HEADER_SIZE};
use vfu::Errno;
use vgrace_device::{Backing, GpuConfig, NvGraceGpu, Profile};

const BIN: &str = env!("CARGO_BIN_EXE_vgrace");
/// gh100 with usemem 512 MiB at BAR4 (and resmem 1 GiB at BAR2): small, both BARs present.
const MEM: u64 = (3 << 29) + 4096;
const MEM_ARG: &str = "1610616832";
const SENTINEL: &[u8] = b"device-memory-intact";

/// `vgrace serve ARGS...`, once it listens on every socket.
fn serve(args: &[&str], sockets: &[&Path]) -> ServeChild {
    ServeChild::serve(BIN, args).wait_listening(sockets)
}

/// `vgrace serve` of the small device backed by `mem.bin` in `dir`: (server, socket, file).
fn file_backed(dir: &tempfile::TempDir) -> (ServeChild, PathBuf, PathBuf) {
    let s = sock(dir, "gpu.sock");
    let file = dir.path().join("mem.bin");
    let srv = serve(
        &[
            "--socket",
            s.to_str().unwrap(),
            "--mem-size",
            MEM_ARG,
            "--backing",
            file.to_str().unwrap(),
        ],
        &[&s],
    );
    (srv, s, file)
}

fn sock(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

fn version_msg() -> Vec<u8> {
    let payload = Version {
        major: 0,
        minor: 0,
        json: String::new(),
    }
    .encode();
    msg(7, cmd::VERSION, 0, &payload)
}

fn send_with_fds(s: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> nix::Result<usize> {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    sendmsg::<()>(
        s.as_raw_fd(),
        &[IoSlice::new(bytes)],
        &cmsg,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
}

/// Reads until the server closes the connection; false if it is still open after 10 s.
fn closed_by_server(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Writes [`SENTINEL`] at 0x1000 of BAR4, to be found again by [`sentinel`].
fn write_sentinel(c: &mut Client) {
    c.region_write(4, 0x1000, SENTINEL).unwrap();
}

/// What BAR4 holds where [`write_sentinel`] wrote (panics if the read fails).
fn sentinel(c: &mut Client) -> Vec<u8> {
    c.region_read(4, 0x1000, SENTINEL.len() as u32).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Memory a client or another process could pull away.

/// A client takes the BAR4 fd and tries to shrink and grow it: the memfd is sealed, so both fail
/// for everyone, and the next REGION_READ is served (before: SIGBUS killed the server).
#[test]
fn client_cannot_resize_the_memfd_it_was_given() {
    let srv = common::serve(
        &GpuConfig::memfd(Profile::Gh100, MEM),
        ServerConfig::default(),
    );
    let mut c = srv.client();
    write_sentinel(&mut c);
    let fd = c.region_info(4).unwrap().fd.unwrap();
    assert_eq!(nix::unistd::ftruncate(&fd, 0), Err(Errno::EPERM));
    assert_eq!(nix::unistd::ftruncate(&fd, 1 << 40), Err(Errno::EPERM));
    assert_eq!(sentinel(&mut c), SENTINEL);
    // The bulk path (sendfile from the fd) too.
    assert_eq!(c.region_read(4, 0, 1 << 20).unwrap().len(), 1 << 20);
}

/// A client shrinks a file backing through its fd (it must be writable for the shared mapping):
/// the server grows it back to its size when it sees the shrink, the lost range reads as zeros
/// (as if the client had written them), one line is logged, and serving goes on (small and bulk
/// reads, writes). After SIGTERM the next server starts on the same file. Before: EIO for every
/// access past the new end, and the next start refused the file as too short.
#[test]
fn backing_file_shrunk_by_its_client_is_grown_back_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut srv, s, file) = file_backed(&dir);
    let mut c = Client::connect(&s).unwrap();
    write_sentinel(&mut c);
    let fd = c.region_info(4).unwrap().fd.unwrap();
    let len = std::fs::metadata(&file).unwrap().len();
    // Not to 0: an empty file is taken for a new one at start, a short one is refused.
    nix::unistd::ftruncate(&fd, 4096).unwrap();

    // A small read sees the short file at once: grown back, the lost range reads as zeros.
    assert_eq!(sentinel(&mut c), vec![0; SENTINEL.len()]);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), len);
    write_sentinel(&mut c);
    assert_eq!(sentinel(&mut c), SENTINEL);

    // Again, then a bulk read (sendfile) and a write.
    nix::unistd::ftruncate(&fd, 4096).unwrap();
    let bulk = c.region_read(4, 0, 1 << 20).unwrap();
    assert_eq!(bulk.len(), 1 << 20);
    assert!(
        bulk.iter().all(|&b| b == 0),
        "the lost range reads as zeros"
    );
    assert_eq!(std::fs::metadata(&file).unwrap().len(), len);
    nix::unistd::ftruncate(&fd, 4096).unwrap();
    c.region_write(4, 0x2000, b"x").unwrap();
    write_sentinel(&mut c);
    assert_eq!(c.region_read(0, 0x1498, 4).unwrap().len(), 4);
    assert!(srv.alive());
    assert_eq!(
        srv.log().matches("the backing file was shrunk").count(),
        1,
        "one log line however often: {}",
        srv.log()
    );

    // Shrunk once more and only written to before the stop: the stop grows it back.
    nix::unistd::ftruncate(&fd, 4096).unwrap();
    c.region_write(4, 0x1000, SENTINEL).unwrap();
    drop(fd);
    drop(c);
    let (status, log) = srv.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{status}: {log}");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), len);

    let (mut again, s, _) = file_backed(&dir);
    assert!(again.alive());
    let mut c = Client::connect(&s).unwrap();
    assert_eq!(sentinel(&mut c), SENTINEL);
}

/// What vfio-user cannot do (SECURITY.md, "A client's mapping cannot be revoked"): a client
/// that mapped the BAR4 fd and was then dropped still reaches the memory through its mapping
/// (it sees the next client's write). What the operator can do works: a restarted server on
/// a fresh memfd serves memory the old mapping cannot reach.
#[test]
fn dropped_clients_mapping_outlives_it_and_a_fresh_memfd_server_is_out_of_its_reach() {
    let dir = tempfile::tempdir().unwrap();
    let s = sock(&dir, "gpu.sock");
    let args = ["--socket", s.to_str().unwrap(), "--mem-size", MEM_ARG];
    let mut srv = serve(&args, &[&s]);
    let mut old = Client::connect(&s).unwrap();
    let fd = old.region_info(4).unwrap().fd.unwrap();
    let mapping = test_support::SharedMapping::new(fd.as_fd(), 0, 1 << 20).unwrap();
    drop(fd);
    drop(old);
    let mut next = Client::connect(&s).unwrap();
    write_sentinel(&mut next);
    let mut seen = vec![0u8; SENTINEL.len()];
    mapping.read(0x1000, &mut seen);
    assert_eq!(
        seen, SENTINEL,
        "the dropped client's mapping still reaches the memory"
    );
    drop(next);
    let (status, log) = srv.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{log}");

    let _fresh = serve(&args, &[&s]);
    let mut next = Client::connect(&s).unwrap();
    next.region_write(4, 0x1000, b"new-tenant-secret").unwrap();
    mapping.read(0x1000, &mut seen);
    assert_eq!(seen, SENTINEL, "the old mapping keeps only the old memfd");
}

/// A sparse backing file on a file system too small for the memory: writes past what fits answer
/// ENOSPC, what was written stays readable, the server lives. Before: the ninth 1 MiB write
/// killed it with SIGBUS.
#[test]
fn full_filesystem_is_an_errno_not_a_signal() {
    let Some(fs) = common::Tmpfs::mount("8m") else {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    };
    let file = fs.0.path().join("mem.bin");
    let srv = common::serve(
        &GpuConfig {
            backing: Backing::File(file),
            ..GpuConfig::memfd(Profile::Gh100, 3_543_348_019)
        },
        ServerConfig::default(),
    );
    let mut c = srv.client();
    let chunk = vec![0x5au8; 1 << 20];
    let mut written = 0u64;
    let mut refused = None;
    for i in 0..16u64 {
        match c.region_write(4, i << 20, &chunk) {
            Ok(_) => written += 1,
            Err(e) => {
                refused = e.remote_errno();
                break;
            }
        }
    }
    assert_eq!(refused, Some(Errno::ENOSPC));
    assert!((1..16).contains(&written), "{written} MiB written");
    assert_eq!(c.region_read(4, 0, 1 << 20).unwrap(), chunk);
    assert_eq!(c.region_read(0, 0x1498, 4).unwrap().len(), 4);
}

/// An operator's file-size limit (`ulimit -f`) below the device memory: writes past it answer
/// EFBIG instead of SIGXFSZ killing the server.
#[test]
fn file_size_limit_is_an_errno_not_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let (mut srv, s, _file) = file_backed(&dir);
    let st = Command::new("prlimit")
        .arg(format!("--pid={}", srv.pid()))
        .arg("--fsize=8388608:8388608")
        .status()
        .unwrap();
    assert!(st.success());
    let mut c = Client::connect(&s).unwrap();
    write_sentinel(&mut c);
    assert_eq!(
        c.region_write(4, 64 << 20, SENTINEL)
            .unwrap_err()
            .remote_errno(),
        Some(Errno::EFBIG)
    );
    assert!(srv.alive());
    assert_eq!(sentinel(&mut c), SENTINEL);
}

/// A client may grow the file it was given; the extra bytes are not device memory, so the next
/// server on that file starts (with a warning) and serves the memory as it was.
#[test]
fn grown_backing_file_does_not_stop_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = GpuConfig {
        backing: Backing::File(dir.path().join("mem.bin")),
        ..GpuConfig::memfd(Profile::Gh100, MEM)
    };
    {
        let srv = common::serve(&cfg, ServerConfig::default());
        let mut c = srv.client();
        write_sentinel(&mut c);
        let fd = c.region_info(4).unwrap().fd.unwrap();
        nix::unistd::ftruncate(&fd, (MEM + (64 << 20)) as i64).unwrap();
    }
    let srv = common::serve(&cfg, ServerConfig::default());
    assert_eq!(sentinel(&mut srv.client()), SENTINEL);
}

/// Two servers on one backing file would be two VMs sharing one GPU memory: the second is
/// refused, by the device model and by `vgrace serve` with one clear line.
#[test]
fn second_server_on_one_backing_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mem.bin");
    let cfg = GpuConfig {
        backing: Backing::File(file.clone()),
        ..GpuConfig::memfd(Profile::Gh100, MEM)
    };
    let first = NvGraceGpu::new(&cfg).unwrap();
    let err = NvGraceGpu::new(&cfg).unwrap_err();
    assert!(
        matches!(err, vgrace_device::DeviceError::BackingInUse(_)),
        "{err}"
    );

    let s = sock(&dir, "second.sock");
    let out = Command::new(BIN)
        .args([
            "serve",
            "--socket",
            s.to_str().unwrap(),
            "--mem-size",
            MEM_ARG,
        ])
        .args(["--backing", file.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("in use by another vgrace server"), "{err}");
    assert!(!s.exists());
    drop(first);
    assert!(
        NvGraceGpu::new(&cfg).is_ok(),
        "the lock goes with the server"
    );
}

// ---------------------------------------------------------------------------------------------
// File descriptors.

/// 1,000 hostile clients each send 40 fds with one message: each is closed, and every fd the
/// kernel installed is closed with it (before: 32 leaked per client until accept hit EMFILE).
#[test]
fn fd_flood_leaves_the_server_fd_count_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let s = sock(&dir, "gpu.sock");
    let srv = serve(
        &["--socket", s.to_str().unwrap(), "--mem-size", MEM_ARG],
        &[&s],
    );
    // Let the probe connection's session end.
    std::thread::sleep(Duration::from_millis(100));
    let before = srv.fd_count();
    let efd = nix::sys::eventfd::EventFd::new().unwrap();
    let fds: Vec<BorrowedFd<'_>> = (0..40).map(|_| efd.as_fd()).collect();
    let version = version_msg();
    for i in 0..1000 {
        let mut c = UnixStream::connect(&s).unwrap();
        send_with_fds(&c, &version, &fds).unwrap();
        assert!(closed_by_server(&mut c), "client {i} was not closed");
    }
    let after = srv.wait_fd_count(before);
    eprintln!("server fds: {before} before, {after} after 1,000 clients x 40 fds");
    assert_eq!(after, before);
    let mut c = Client::connect(&s).unwrap();
    assert_eq!(c.region_read(0, 0x1498, 4).unwrap().len(), 4);
}

/// One unfinished message may not pile up fds: they are counted as they arrive and the client is
/// closed once the message's fds pass the limit (before: 800 fds held for one message).
#[test]
fn unfinished_message_cannot_pile_up_fds() {
    let dir = tempfile::tempdir().unwrap();
    let s = sock(&dir, "gpu.sock");
    let srv = serve(
        &["--socket", s.to_str().unwrap(), "--mem-size", MEM_ARG],
        &[&s],
    );
    std::thread::sleep(Duration::from_millis(100));
    let before = srv.fd_count();
    let mut c = Client::connect(&s).unwrap();
    let during = srv.fd_count();
    // A REGION_WRITE header announcing 64 KiB, then one byte at a time, 8 fds with each.
    let h = Header {
        msg_id: 1,
        cmd: cmd::REGION_WRITE,
        msg_size: (HEADER_SIZE + RegionAccess::SIZE + (64 << 10)) as u32,
        flags: 0,
        error: 0,
    };
    c.send_raw(&h.encode(), &[]).unwrap();
    let efd = nix::sys::eventfd::EventFd::new().unwrap();
    let fds: Vec<BorrowedFd<'_>> = (0..8).map(|_| efd.as_fd()).collect();
    let mut peak = 0;
    let mut refused_after = None;
    for i in 0..100 {
        if send_with_fds(c.stream(), &[0], &fds).is_err() {
            refused_after = Some(i);
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
        peak = peak.max(srv.fd_count().saturating_sub(during));
    }
    let mut stream = c.stream().try_clone().unwrap();
    assert!(refused_after.is_some() || closed_by_server(&mut stream));
    assert!(peak <= 32, "server held {peak} of the client's fds");
    drop(stream);
    drop(c);
    assert_eq!(srv.wait_fd_count(before), before);
}

/// With two devices in one process, device A's client fills the process's fd table; device B's
/// accept fails with EMFILE. The loop backs off and logs once instead of spinning (before: a
/// core at 100% and 70 MB/s of log), and B's client is served once A's fds are gone.
#[test]
fn full_fd_table_backs_off_and_serves_later() {
    let dir = tempfile::tempdir().unwrap();
    let a = sock(&dir, "a.sock");
    let b = sock(&dir, "b.sock");
    let cfg = dir.path().join("two.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[device]]\nsocket = \"{}\"\nmem_size = \"{MEM_ARG}\"\n[[device]]\nsocket = \"{}\"\nmem_size = \"{MEM_ARG}\"\n",
            a.display(),
            b.display()
        ),
    )
    .unwrap();
    let srv = serve(&["--config", cfg.to_str().unwrap()], &[&a, &b]);
    std::thread::sleep(Duration::from_millis(100));
    let mut ca = Client::connect(&a).unwrap();
    // Room for exactly 4 more fds: A's 4 eventfds fill the table.
    let limit = srv.fd_count() + 4;
    let st = Command::new("prlimit")
        .arg(format!("--pid={}", srv.pid()))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .unwrap();
    assert!(st.success());
    let efds: Vec<OwnedFd> = (0..4)
        .map(|_| nix::sys::eventfd::EventFd::new().unwrap().into())
        .collect();
    let borrowed: Vec<BorrowedFd<'_>> = efds.iter().map(|f| f.as_fd()).collect();
    IrqSet {
        flags: DATA_EVENTFD | ACTION_TRIGGER,
        index: MSIX_IRQ_INDEX,
        start: 0,
        count: 4,
        data: &[],
    }
    .send(&mut ca, &borrowed)
    .unwrap();
    assert_eq!(srv.fd_count(), limit, "the fd table is full");

    let b2 = b.clone();
    let waiting = std::thread::spawn(move || {
        let s = UnixStream::connect(&b2).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Client::from_stream(s).unwrap();
        c.region_read(0, 0x1498, 4).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let t0 = srv.cpu_ticks();
    std::thread::sleep(Duration::from_secs(2));
    let spent = srv.cpu_ticks() - t0;
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64;
    assert!(
        spent < tick / 2,
        "the server used {spent} ticks of CPU in 2 s while it could not accept"
    );
    let lines = srv.log().matches("cannot accept a client").count();
    assert!((1..=2).contains(&lines), "{lines} log lines: {}", srv.log());

    drop(ca);
    assert_eq!(waiting.join().unwrap().len(), 4, "B is served once A left");
}

// ---------------------------------------------------------------------------------------------
// One client at a time, said out loud.

/// A second client while one is attached gets an immediate EBUSY error reply to its VERSION and
/// is closed (before: it heard nothing until QEMU's 5 s timeout); the first keeps the device.
#[test]
fn second_client_is_refused_with_ebusy_at_once() {
    let srv = common::serve(
        &GpuConfig::memfd(Profile::Gh100, MEM),
        ServerConfig::default(),
    );
    let mut first = srv.client();
    write_sentinel(&mut first);

    let mut second = UnixStream::connect(&srv.path).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    second.write_all(&version_msg()).unwrap();
    let mut head = [0u8; HEADER_SIZE];
    second.read_exact(&mut head).unwrap();
    let reply = Header::decode(&head).unwrap();
    assert_eq!((reply.msg_id, reply.cmd), (7, cmd::VERSION));
    assert!(reply.is_error());
    assert_eq!(reply.error, Errno::EBUSY as u32);
    assert!(closed_by_server(&mut second));

    assert_eq!(sentinel(&mut first), SENTINEL);
}

/// A client that sends half a header while the device is held neither spins the accept loop
/// (its bytes are only peeked at, so its socket stays readable) nor waits forever: it is closed
/// after the waiting limit, and the holder keeps the device.
#[test]
fn half_a_header_while_busy_does_not_spin_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let s = sock(&dir, "gpu.sock");
    let srv = serve(
        &["--socket", s.to_str().unwrap(), "--mem-size", MEM_ARG],
        &[&s],
    );
    let mut holder = Client::connect(&s).unwrap();
    let mut waiter = UnixStream::connect(&s).unwrap();
    waiter.write_all(&version_msg()[..8]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = srv.cpu_ticks();
    std::thread::sleep(Duration::from_millis(1500));
    let spent = srv.cpu_ticks() - t0;
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64;
    assert!(spent < tick / 4, "{spent} ticks of CPU in 1.5 s");
    assert!(closed_by_server(&mut waiter));
    assert_eq!(holder.region_read(0, 0x1498, 4).unwrap().len(), 4);
}

/// A VMM that disconnects and reconnects at once is served, not refused: the old session is
/// still ending when the new client's VERSION arrives.
#[test]
fn reconnect_right_after_disconnect_is_served() {
    let srv = common::serve(
        &GpuConfig::memfd(Profile::Gh100, MEM),
        ServerConfig::default(),
    );
    for _ in 0..50 {
        let mut c = srv.client();
        write_sentinel(&mut c);
    }
    assert_eq!(sentinel(&mut srv.client()), SENTINEL);
}

fn stall_config() -> ServerConfig {
    ServerConfig {
        stall_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    }
}

/// A client that stops in the middle of a message (half a header, or half a payload) is dropped
/// after the stall timeout, and the next client gets the device (before: held forever).
#[test]
fn client_stalled_mid_message_is_dropped() {
    let srv = common::serve(&GpuConfig::memfd(Profile::Gh100, MEM), stall_config());
    let c = srv.client();
    let mut s = c.stream().try_clone().unwrap();
    s.write_all(&version_msg()[..8]).unwrap();
    assert!(closed_by_server(&mut s));
    drop(c);

    let mut c = srv.client();
    let h = Header {
        msg_id: 2,
        cmd: cmd::REGION_WRITE,
        msg_size: (HEADER_SIZE + RegionAccess::SIZE + 4) as u32,
        flags: 0,
        error: 0,
    };
    c.send_raw(&h.encode(), &[]).unwrap();
    let mut s = c.stream().try_clone().unwrap();
    assert!(closed_by_server(&mut s));
    drop(c);
    assert_eq!(srv.client().region_read(0, 0x1498, 4).unwrap().len(), 4);
}

/// A client that trickles a message one byte at a time slower than the stall timeout allows is
/// dropped too: the clock runs from the message's first byte, not from the last one.
#[test]
fn trickling_client_is_dropped_at_the_stall_timeout() {
    let srv = common::serve(&GpuConfig::memfd(Profile::Gh100, MEM), stall_config());
    let c = srv.client();
    let mut s = c.stream().try_clone().unwrap();
    let started = Instant::now();
    let msg = version_msg();
    let mut sent_all = true;
    for b in &msg {
        if s.write_all(&[*b]).is_err() {
            sent_all = false;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    assert!(!sent_all || closed_by_server(&mut s));
}

/// Waiting between messages is legitimate: an idle client keeps the device.
#[test]
fn idle_client_between_messages_keeps_the_device() {
    let srv = common::serve(&GpuConfig::memfd(Profile::Gh100, MEM), stall_config());
    let mut c = srv.client();
    write_sentinel(&mut c);
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(sentinel(&mut c), SENTINEL);
}
