//! Clients that die mid-message leave nothing behind. A test binary of its own: it counts the
//! process's fds, mappings and RSS, which other tests running in parallel would disturb.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::Write;
use std::os::fd::AsFd;

use test_support::irq_flags::{ACTION_TRIGGER, DATA_EVENTFD};
use test_support::procfs::{fd_count, map_count, rss_kib, Process};
use test_support::{msg, with_size, IrqSet};
use vfu::client::Client;
use vfu::device::MSIX_IRQ_INDEX;
use vfu::server::ServerConfig;
use vfu::wire::{cmd, RegionAccess, HEADER_SIZE};
use vgrace_device::{GpuConfig, Profile};

/// This process's fds, mappings and RSS (KiB).
fn figures() -> (usize, usize, u64) {
    (fd_count(Process::This), map_count(Process::This), rss_kib())
}

/// Clients that vanish mid-message (half a header, half a payload, after passing fds) hundreds
/// of times leave the server's fd table, mappings and RSS where they were.
#[test]
fn clients_killed_mid_message_leave_nothing_behind() {
    let server = common::serve(
        &GpuConfig::memfd(Profile::Gh100, (3 << 29) + 4096),
        ServerConfig::default(),
    );
    let path = server.path.clone();
    // Warm up allocator and lazily created state with a few full sessions.
    for _ in 0..5 {
        Client::connect(&path)
            .unwrap()
            .region_read(4, 0, 64)
            .unwrap();
    }
    let (fds0, maps0, rss0) = figures();
    let memfd = {
        let f = tempfile::tempfile().unwrap();
        f.set_len(1 << 20).unwrap();
        f
    };
    for i in 0..300u32 {
        let mut c = Client::connect(&path).unwrap();
        // Leave per-client state behind: a mapped DMA region and an interrupt eventfd.
        c.dma_map(3, 0, 0x1000_0000, 1 << 20, Some(memfd.as_fd()))
            .unwrap();
        let efd = nix::sys::eventfd::EventFd::new().unwrap();
        IrqSet {
            flags: DATA_EVENTFD | ACTION_TRIGGER,
            index: MSIX_IRQ_INDEX,
            start: 0,
            count: 1,
            data: &[],
        }
        .send(&mut c, &[efd.as_fd()])
        .unwrap();
        // A REGION_WRITE announcing 4096 data bytes of which at most 1000 are ever sent.
        let access = RegionAccess {
            offset: 0,
            region: 4,
            count: 4096,
        };
        let bytes = with_size(
            msg(
                1,
                cmd::REGION_WRITE,
                0,
                &[&access.to_bytes()[..], &[0u8; 1000]].concat(),
            ),
            (HEADER_SIZE + 16 + 4096) as u32,
        );
        let cut = match i % 3 {
            0 => 7,
            1 => 20,
            _ => bytes.len(),
        };
        c.stream()
            .try_clone()
            .unwrap()
            .write_all(&bytes[..cut])
            .unwrap();
        drop(c);
    }
    // One more full session proves the server is past every dead client.
    Client::connect(&path).unwrap().device_info().unwrap();
    // That session ends on the server's side a moment after the client goes: let it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let (fds1, maps1, rss1) = loop {
        let f = figures();
        if f.0 <= fds0 + 2 || std::time::Instant::now() > deadline {
            break f;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    drop(server);
    assert!(fds1 <= fds0 + 2, "fds {fds0} -> {fds1}");
    assert!(maps1 <= maps0 + 4, "mappings {maps0} -> {maps1}");
    assert!(rss1 < rss0 + 8 * 1024, "RSS {rss0} KiB -> {rss1} KiB");
}
