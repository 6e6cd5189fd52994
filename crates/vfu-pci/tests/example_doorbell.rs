//! The `doorbell` example (a second device on vfu and the PCI core) served over a real socket to
//! the vfu client: identity from config space, its register file, its memory BAR, and the
//! doorbell raising INTx through the eventfd the client wired.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../examples/doorbell.rs"]
mod doorbell;

use std::os::fd::AsFd;

use nix::sys::eventfd::EventFd;
use vfio_bindings::bindings::vfio::{VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD};
use vfu::client::Client;
use vfu::server::{bind_socket, Server, ServerConfig, Shutdown};

struct Served {
    _dir: tempfile::TempDir,
    client: Client,
    shutdown: Shutdown,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    /// Closes the client (the device's `close`), then connects a new one (its `open`).
    fn reconnect(&mut self) -> &mut Client {
        // One client at a time: the old one must be gone before the new one connects.
        let (placeholder, _) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(std::mem::replace(
            &mut self.client,
            Client::unnegotiated(placeholder),
        ));
        self.client = Client::connect(&self._dir.path().join("doorbell.sock")).unwrap();
        &mut self.client
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("doorbell.sock");
    let (listener, _ours) = bind_socket(&path).unwrap();
    let shutdown = Shutdown::new().unwrap();
    let stop = shutdown.clone();
    let device = doorbell::doorbell().unwrap();
    let thread = std::thread::spawn(move || {
        Server::new(device, ServerConfig::default())
            .serve(listener, &stop)
            .unwrap();
    });
    Served {
        client: Client::connect(&path).unwrap(),
        _dir: dir,
        shutdown,
        thread: Some(thread),
    }
}

#[test]
fn example_device_identity_comes_from_its_description() {
    let mut s = serve();
    let id = s.client.region_read(7, 0, 4).unwrap();
    assert_eq!(id, [0x36, 0x1b, 0x05, 0x00]);
    assert_eq!(s.client.region_info(0).unwrap().info.size, 4096);
    assert_eq!(s.client.region_info(2).unwrap().info.size, 64 << 10);
}

#[test]
fn example_device_memory_bar_reads_back_and_clips_at_its_end() {
    let mut s = serve();
    s.client.region_write(2, 0x100, b"second device").unwrap();
    assert_eq!(
        s.client.region_read(2, 0x100, 13).unwrap(),
        b"second device"
    );
    let tail = s.client.region_read(2, (64 << 10) - 4, 16).unwrap();
    assert_eq!(tail.len(), 4);
    assert!(s.client.region_read(2, 64 << 10, 4).is_err());
}

#[test]
fn example_device_doorbell_raises_intx() {
    let mut s = serve();
    let efd = EventFd::new().unwrap();
    s.client
        .set_irqs(
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            vfu::device::INTX_IRQ_INDEX,
            0,
            1,
            &[],
            &[efd.as_fd()],
        )
        .unwrap();
    s.client
        .region_write(0, doorbell::DOORBELL, &1u32.to_le_bytes())
        .unwrap();
    assert_eq!(efd.read().unwrap(), 1, "one interrupt per doorbell write");
    s.client.region_write(0, 0x10, &7u32.to_le_bytes()).unwrap();
    assert_eq!(
        s.client.region_read(0, 0x10, 4).unwrap(),
        7u32.to_le_bytes()
    );
}

/// The lifecycle is the core's, with no code of the doorbell's own: a new client finds config
/// space rebuilt (memory decode on, bus mastering off, BAR registers 0) and the register file
/// reset, while BAR2's memory is kept; VFIO_DEVICE_RESET leaves the virtual config alone.
#[test]
fn doorbell_gets_the_cores_lifecycle_without_code_of_its_own() {
    let mut s = serve();
    let c = &mut s.client;
    c.region_write(7, 0x04, &0x0006u16.to_le_bytes()).unwrap();
    c.region_write(7, 0x18, &0x8000_0000u32.to_le_bytes())
        .unwrap();
    c.region_write(0, 0x80, &0x5eedu32.to_le_bytes()).unwrap();
    c.region_write(2, 0x10, b"kept").unwrap();
    c.reset().unwrap();
    assert_eq!(
        c.region_read(7, 0x18, 4).unwrap(),
        0x8000_000cu32.to_le_bytes()
    );
    assert_eq!(c.region_read(0, 0x80, 4).unwrap(), [0; 4], "function reset");
    let next = s.reconnect();
    assert_eq!(
        next.region_read(7, 0x04, 2).unwrap(),
        [0x02, 0x00],
        "memory on, master off"
    );
    assert_eq!(next.region_read(7, 0x18, 4).unwrap(), [0x0c, 0, 0, 0]);
    assert_eq!(next.region_read(2, 0x10, 4).unwrap(), b"kept");
}

/// The doorbell's own region is range-checked once, by `Variant`, from the size its
/// description declared: EINVAL at the end, clipped before it.
#[test]
fn doorbell_memory_is_range_checked_by_the_variant() {
    let mut s = serve();
    let c = &mut s.client;
    assert_eq!(
        c.region_read(2, 64 << 10, 4).unwrap_err().remote_errno(),
        Some(vfu::Errno::EINVAL)
    );
    assert_eq!(c.region_read(2, (64 << 10) - 2, 4).unwrap().len(), 2);
}
