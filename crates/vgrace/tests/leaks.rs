//! Clients that die mid-message leave nothing behind. A test binary of its own: it counts the
//! process's fds, mappings and RSS, which other tests running in parallel would disturb.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::Write;
use std::os::fd::AsFd;

use vfu::client::Client;
use vfu::server::ServerConfig;
use vfu::wire::{cmd, Header, RegionAccess, HEADER_SIZE};
use vgrace_device::{GpuConfig, Profile};

fn count_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn count_maps() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
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
    let (fds0, maps0, rss0) = (count_fds(), count_maps(), common::rss_kib());
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
        c.set_irqs(0x24, 2, 0, 1, &[], &[efd.as_fd()]).unwrap();
        let h = Header {
            msg_id: 1,
            cmd: cmd::REGION_WRITE,
            msg_size: (HEADER_SIZE + 16 + 4096) as u32,
            flags: 0,
            error: 0,
        };
        let mut bytes = h.encode().to_vec();
        bytes.extend_from_slice(
            &RegionAccess {
                offset: 0,
                region: 4,
                count: 4096,
            }
            .to_bytes(),
        );
        bytes.extend_from_slice(&[0u8; 1000]);
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
    let (fds1, maps1, rss1) = (count_fds(), count_maps(), common::rss_kib());
    drop(server);
    assert!(fds1 <= fds0 + 2, "fds {fds0} -> {fds1}");
    assert!(maps1 <= maps0 + 4, "mappings {maps0} -> {maps1}");
    assert!(rss1 < rss0 + 8 * 1024, "RSS {rss0} KiB -> {rss1} KiB");
}
