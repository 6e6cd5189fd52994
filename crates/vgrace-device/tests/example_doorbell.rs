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
