//! No client can wedge a device: a real `vgrace serve --control` child, a client that does what
//! a hostile VMM would to make the server block (a full blocking eventfd, replies it never
//! reads), and the proof that the device answers, `vgrace ctl` is not "busy", and the next
//! client is served.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::eventfd::{EfdFlags, EventFd};
use test_support::irq_flags::{
    ACTION_MASK, ACTION_TRIGGER, ACTION_UNMASK, DATA_EVENTFD, DATA_NONE,
};
use test_support::{IrqSet, ServeChild};
use vfu::client::Client;
use vfu::device::MSIX_IRQ_INDEX;
use vfu::wire::{cmd, RegionAccess};
use vfu::Errno;

const BIN: &str = env!("CARGO_BIN_EXE_vgrace");
/// gh100 with usemem 512 MiB at BAR4.
const MEM_ARG: &str = "1610616832";
const USEMEM: u32 = 4;
/// How long any client or `ctl` call may take before the test calls it a hang.
const BOUND: Duration = Duration::from_secs(10);

/// `vgrace serve --control` of the small device.
struct Served {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    control: PathBuf,
    child: ServeChild,
}

fn serve() -> Served {
    serve_with(&[])
}

fn serve_with(extra: &[&str]) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gpu.sock");
    let control = dir.path().join("control.sock");
    let mut args = vec![
        "--socket",
        socket.to_str().unwrap(),
        "--control",
        control.to_str().unwrap(),
        "--mem-size",
        MEM_ARG,
    ];
    args.extend_from_slice(extra);
    let child = ServeChild::serve(BIN, &args).wait_listening(&[&socket, &control]);
    Served {
        _dir: dir,
        socket,
        control,
        child,
    }
}

impl Served {
    /// A negotiated client whose replies time out at [`BOUND`] instead of hanging the test.
    fn client(&self) -> Client {
        let stream = UnixStream::connect(&self.socket).unwrap();
        stream.set_read_timeout(Some(BOUND)).unwrap();
        stream.set_write_timeout(Some(BOUND)).unwrap();
        Client::from_stream(stream).unwrap()
    }

    /// `vgrace ctl ARGS` must succeed (not "busy") within the bound.
    fn ctl_ok(&self, args: &[&str]) -> String {
        let started = Instant::now();
        let mut all = vec!["ctl", "--control", self.control.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = common::vgrace(&all);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success() && !stderr.contains("busy") && !stdout.is_empty(),
            "ctl {args:?} failed after {:?}: {stdout} {stderr}\nserver log: {}",
            started.elapsed(),
            self.child.log()
        );
        stdout
    }

    /// ctl status and peek work, and a client after `holder` leaves is served.
    fn assert_usable(&self, holder: Client) {
        self.ctl_ok(&["status"]);
        let peek = self.ctl_ok(&[
            "peek", "--region", "4", "--offset", "0x100", "--count", "4", "--raw",
        ]);
        assert_eq!(peek.len(), 4);
        drop(holder);
        let mut next = self.client();
        next.region_write(USEMEM, 0x100, b"next").unwrap();
        assert_eq!(next.region_read(USEMEM, 0x100, 4).unwrap(), b"next");
    }
}

/// A blocking eventfd (no EFD_NONBLOCK) whose counter is one short of overflowing: the next
/// write(1) to it would block until someone reads it.
fn full_blocking_eventfd() -> EventFd {
    let efd = EventFd::from_flags(EfdFlags::empty()).unwrap();
    efd.write(0xffff_ffff_ffff_fffe).unwrap();
    efd
}

fn set_irqs(
    c: &mut Client,
    flags: u32,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<(), vfu::Error> {
    set_irqs_at(c, MSIX_IRQ_INDEX, flags, fds)
}

fn set_irqs_at(
    c: &mut Client,
    index: u32,
    flags: u32,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<(), vfu::Error> {
    IrqSet {
        flags,
        index,
        start: 0,
        count: 1,
        data: &[],
    }
    .send(c, fds)
}

/// Registers a full blocking eventfd for MSI-X vector 0, closes the client's copy (nobody can
/// ever read it again), then runs `then`.
fn wedge_attempt(then: impl FnOnce(&mut Client)) {
    let s = serve();
    let mut c = s.client();
    let efd = full_blocking_eventfd();
    set_irqs(&mut c, DATA_EVENTFD | ACTION_TRIGGER, &[efd.as_fd()]).unwrap();
    drop(efd);
    then(&mut c);
    // The device still answers this client, then the control plane and the next client.
    c.region_write(USEMEM, 0x200, b"alive").unwrap();
    s.assert_usable(c);
}

#[test]
fn trigger_on_a_full_blocking_eventfd_does_not_wedge_the_device() {
    wedge_attempt(|c| {
        for _ in 0..3 {
            set_irqs(c, DATA_NONE | ACTION_TRIGGER, &[]).unwrap();
        }
    });
}

/// INTx, the maskable index: mask, trigger and unmask on a full blocking eventfd.
#[test]
fn mask_trigger_unmask_of_intx_on_a_full_blocking_eventfd_does_not_wedge_the_device() {
    let s = serve();
    let mut c = s.client();
    let efd = full_blocking_eventfd();
    set_irqs_at(&mut c, 0, DATA_EVENTFD | ACTION_TRIGGER, &[efd.as_fd()]).unwrap();
    drop(efd);
    for action in [ACTION_MASK, ACTION_TRIGGER, ACTION_UNMASK, ACTION_TRIGGER] {
        set_irqs_at(&mut c, 0, DATA_NONE | action, &[]).unwrap();
    }
    c.region_write(USEMEM, 0x200, b"alive").unwrap();
    s.assert_usable(c);
}

/// O_NONBLOCK lives in the open file, which the client shares: a client that clears it again
/// through its own copy after SET_IRQS still cannot make the server's write wait.
#[test]
fn eventfd_made_blocking_again_by_the_client_does_not_wedge_the_device() {
    let s = serve();
    let mut c = s.client();
    let efd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap();
    set_irqs(&mut c, DATA_EVENTFD | ACTION_TRIGGER, &[efd.as_fd()]).unwrap();
    fcntl(efd.as_fd(), FcntlArg::F_SETFL(OFlag::empty())).unwrap();
    efd.write(0xffff_ffff_ffff_fffe).unwrap();
    drop(efd);
    set_irqs(&mut c, DATA_NONE | ACTION_TRIGGER, &[]).unwrap();
    s.assert_usable(c);
}

/// The server sets O_NONBLOCK on every eventfd it is given (the open file is shared, so the
/// client sees it on its own copy).
#[test]
fn eventfds_are_made_non_blocking_on_arrival() {
    let s = serve();
    let mut c = s.client();
    let efd = EventFd::from_flags(EfdFlags::empty()).unwrap();
    set_irqs(&mut c, DATA_EVENTFD | ACTION_TRIGGER, &[efd.as_fd()]).unwrap();
    let flags = OFlag::from_bits_truncate(fcntl(efd.as_fd(), FcntlArg::F_GETFL).unwrap());
    assert!(flags.contains(OFlag::O_NONBLOCK), "{flags:?}");
    set_irqs(&mut c, DATA_NONE | ACTION_TRIGGER, &[]).unwrap();
    assert_eq!(efd.read().unwrap(), 1);
}

/// Only an eventfd is an eventfd: a pipe (either end), a socket, a memfd or a regular file is
/// EINVAL at SET_IRQS, as the kernel's `eventfd_ctx_fdget` refuses them, and is never written.
#[test]
fn set_irqs_with_anything_but_an_eventfd_is_einval() {
    let s = serve();
    let mut c = s.client();
    let (pipe_r, pipe_w) = nix::unistd::pipe().unwrap();
    let (sock, _peer) = UnixStream::pair().unwrap();
    let memfd: OwnedFd =
        nix::sys::memfd::memfd_create("not-an-eventfd", nix::sys::memfd::MFdFlags::empty())
            .unwrap();
    let file: OwnedFd = tempfile::tempfile().unwrap().into();
    let dir = std::fs::File::open(s._dir.path()).unwrap();
    for (what, fd) in [
        ("pipe read end", pipe_r.as_fd()),
        ("pipe write end", pipe_w.as_fd()),
        ("socket", sock.as_fd()),
        ("memfd", memfd.as_fd()),
        ("regular file", file.as_fd()),
        ("directory", dir.as_fd()),
    ] {
        match set_irqs(&mut c, DATA_EVENTFD | ACTION_TRIGGER, &[fd]) {
            Err(vfu::Error::Remote { errno, .. }) => assert_eq!(errno, Errno::EINVAL, "{what}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    // Nothing was written to the pipe.
    let mut buf = [0u8; 8];
    nix::fcntl::fcntl(pipe_r.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    assert_eq!(
        nix::unistd::read(&pipe_r, &mut buf),
        Err(nix::errno::Errno::EAGAIN)
    );
    s.assert_usable(c);
}

/// REGION_READ requests sent `n` at a time, of `count` bytes, never reading the replies.
fn reads_never_read(c: &mut Client, n: u16, count: u32) {
    for i in 0..n {
        let req = RegionAccess {
            offset: 0,
            region: USEMEM,
            count,
        }
        .to_bytes();
        c.send_raw(
            &test_support::msg(0x100 + i, cmd::REGION_READ, 0, &req),
            &[],
        )
        .unwrap();
    }
    // Let the server fill the socket buffer and block in its send.
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn a_client_that_stops_reading_large_read_replies_does_not_make_ctl_busy() {
    let s = serve();
    let mut c = s.client();
    reads_never_read(&mut c, 32, 1 << 20);
    s.ctl_ok(&["peek", "--region", "4", "--offset", "0", "--count", "16"]);
    s.ctl_ok(&["poke", "--region", "4", "--offset", "0x10", "--hex", "01"]);
    s.ctl_ok(&["reset"]);
}

#[test]
fn a_client_that_stops_reading_small_read_replies_does_not_make_ctl_busy() {
    let s = serve();
    let mut c = s.client();
    // 1 MiB of replies fills the client's receive buffer several times over; 128 requests
    // stay well inside the client's own send buffer (each small message is accounted at
    // about 1 KiB), so the client's sends never block behind a server that stopped reading.
    reads_never_read(&mut c, 128, 8192);
    s.ctl_ok(&["peek", "--region", "4", "--offset", "0", "--count", "16"]);
    s.ctl_ok(&["reset"]);
}

/// A reply the client stops reading is bounded like a request it stops sending: after the stall
/// timeout the session ends and the next client is served instead of refused with EBUSY.
#[test]
fn a_client_that_stops_reading_replies_is_dropped_after_the_stall_timeout() {
    let s = serve_with(&["--stall-timeout", "1s"]);
    let mut c = s.client();
    reads_never_read(&mut c, 32, 1 << 20);
    let until = Instant::now() + BOUND;
    loop {
        let stream = UnixStream::connect(&s.socket).unwrap();
        stream.set_read_timeout(Some(BOUND)).unwrap();
        match Client::from_stream(stream) {
            Ok(mut next) => {
                assert_eq!(next.region_read(USEMEM, 0, 4).unwrap().len(), 4);
                break;
            }
            Err(e) => assert!(
                Instant::now() < until,
                "still refused ({e}) with a client that reads nothing: {}",
                s.child.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(c);
}

/// A node of two devices and a control socket, started under `ulimit -n 1024` (the default
/// soft limit) as `sh` would start it.
struct Node {
    _dir: tempfile::TempDir,
    a: PathBuf,
    b: PathBuf,
    control: PathBuf,
    child: ServeChild,
}

fn node_with_1024_fds() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let control = dir.path().join("ctl.sock");
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "control = \"{}\"\n[[device]]\nsocket = \"{}\"\nmem_size = \"{MEM_ARG}\"\n[[device]]\nsocket = \"{}\"\nmem_size = \"{MEM_ARG}\"\n",
            control.display(),
            a.display(),
            b.display()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        "ulimit -n 1024 && exec \"$0\" serve --config \"$1\"",
        BIN,
        cfg.to_str().unwrap(),
    ]);
    let child = ServeChild::spawn(cmd)
        .unwrap()
        .wait_listening(&[&a, &b, &control]);
    Node {
        _dir: dir,
        a,
        b,
        control,
        child,
    }
}

/// A memfd of `size` bytes (sparse) sealed against shrinking and growing, as QEMU's guest RAM.
fn sealed_memfd(size: u64) -> OwnedFd {
    use nix::fcntl::SealFlag;
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create("guest-ram", MFdFlags::MFD_ALLOW_SEALING).unwrap();
    nix::unistd::ftruncate(&fd, size as i64).unwrap();
    fcntl(
        fd.as_fd(),
        FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW),
    )
    .unwrap();
    fd
}

fn client_at(path: &std::path::Path) -> Client {
    let stream = UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(BOUND)).unwrap();
    Client::from_stream(stream).unwrap()
}

fn errno_of(r: Result<(), vfu::Error>) -> Option<Errno> {
    match r {
        Ok(()) => None,
        Err(vfu::Error::Remote { errno, .. }) => Some(errno),
        Err(e) => panic!("{e}"),
    }
}

/// What the server holds: (fds, VmSize KiB, VmRSS KiB).
fn held(child: &ServeChild) -> (usize, u64, u64) {
    let kib = |f| {
        test_support::procfs::status_kib(child.process(), f)
            .unwrap()
            .unwrap()
    };
    (child.fd_count(), kib("VmSize"), kib("VmRSS"))
}

/// The other device and the control socket keep working while one client holds all it may.
fn assert_rest_of_node_works(node: &Node) {
    let mut other = client_at(&node.b);
    other.region_write(USEMEM, 0x40, b"other").unwrap();
    assert_eq!(other.region_read(USEMEM, 0x40, 5).unwrap(), b"other");
    let out = common::vgrace(&["ctl", "--control", node.control.to_str().unwrap(), "status"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.child.log()
    );
}

/// 1,100 DMA_MAPs of one sealed memfd hold one fd, and distinct memfds stop at the per-client
/// bound with ENOSPC: the server stays far from its 1,024 fds, and the second device and the
/// control socket keep accepting.
#[test]
fn dma_maps_cannot_take_the_fds_of_other_devices_and_the_control_socket() {
    let node = node_with_1024_fds();
    let before = held(&node.child);
    let mut c = client_at(&node.a);
    let ram = sealed_memfd(1 << 20);
    let rw = vfu::wire::DMA_FLAG_READ | vfu::wire::DMA_FLAG_WRITE;
    let mut refused = None;
    for i in 0..1100u64 {
        let r = c.dma_map(rw, 0, i << 12, 0x1000, Some(ram.as_fd()));
        if let Some(e) = errno_of(r) {
            refused = Some((i, e));
            break;
        }
    }
    let same_file = held(&node.child);
    let mut distinct_ok = 0;
    let mut distinct_refused = None;
    for i in 0..1100u64 {
        let fd = sealed_memfd(0x1000);
        match errno_of(c.dma_map(rw, 0, (1 << 32) + (i << 12), 0x1000, Some(fd.as_fd()))) {
            None => distinct_ok += 1,
            Some(e) => {
                distinct_refused = Some(e);
                break;
            }
        }
    }
    let after = held(&node.child);
    eprintln!(
        "server (fds, VmSize KiB, VmRSS KiB): before {before:?}, 1,100 maps of one memfd \
         {same_file:?} (first refusal {refused:?}), then {distinct_ok} distinct memfds \
         {after:?} (refusal {distinct_refused:?})"
    );
    assert_eq!(refused, None, "every map of one file is one fd");
    assert!(same_file.0 <= before.0 + 4, "{before:?} -> {same_file:?}");
    assert_eq!(distinct_refused, Some(Errno::ENOSPC));
    assert!(after.0 < 1024 / 2, "{after:?}");
    assert_rest_of_node_works(&node);
    // The device still answers the hoarding client, and gives everything back when it goes.
    c.region_write(USEMEM, 0x80, b"still").unwrap();
    drop(c);
    assert!(node.child.wait_fd_count(before.0) <= before.0 + 2);
}

/// A sparse 64 TiB sealed memfd mapped 1 TiB at a time stops at the per-client bound (4 TiB):
/// the server's address space stays bounded and the node keeps working. An fd offset at or
/// past 2^63 is EINVAL.
#[test]
fn dma_mapped_bytes_are_bounded_and_offsets_past_2_63_are_einval() {
    let node = node_with_1024_fds();
    let before = held(&node.child);
    let mut c = client_at(&node.a);
    let ram = sealed_memfd(64 << 40);
    let rw = vfu::wire::DMA_FLAG_READ | vfu::wire::DMA_FLAG_WRITE;
    let tib = 1u64 << 40;
    let mut mapped = 0;
    let mut refusal = None;
    for i in 0..128u64 {
        match errno_of(c.dma_map(rw, (i % 64) * tib, i * tib, tib, Some(ram.as_fd()))) {
            None => mapped += 1,
            Some(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let after = held(&node.child);
    eprintln!(
        "server (fds, VmSize KiB, VmRSS KiB): before {before:?}, after {mapped} TiB mapped \
         {after:?} (refusal {refusal:?})"
    );
    assert_eq!((mapped, refusal), (4, Some(Errno::ENOSPC)));
    assert!(
        after.1 < before.1 + (5 << 30),
        "VmSize {before:?} -> {after:?}"
    );
    for (offset, size) in [(1u64 << 63, 0x1000u64), ((1 << 63) - 0x1000, 0x2000)] {
        assert_eq!(
            errno_of(c.dma_map(rw, offset, 1 << 60, size, Some(ram.as_fd()))),
            Some(Errno::EINVAL),
            "offset {offset:#x} size {size:#x}"
        );
    }
    assert_rest_of_node_works(&node);
}
