//! The crates.io `vfio_user` Client (rust-vmm, used by Cloud Hypervisor) as a third-party peer
//! against our server. Happy paths only: that client hangs on error replies.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{Harness, RAM, RAM_MMAP, RAM_SIZE, REGS};

#[test]
fn rust_vmm_client_negotiates_and_lists_regions() {
    let h = Harness::start();
    let c = vfio_user::Client::new(h.path()).unwrap();
    let ram = c.region(RAM).unwrap();
    assert_eq!(ram.size, RAM_SIZE);
    assert_eq!(ram.sparse_areas.len(), 1);
    assert_eq!(ram.sparse_areas[0].size, RAM_MMAP);
    assert!(ram.file_offset.is_some(), "region fd received");
    assert_eq!(c.region(REGS).unwrap().size, 4096);
}

#[test]
fn rust_vmm_client_reads_and_writes_regions() {
    let h = Harness::start();
    let mut c = vfio_user::Client::new(h.path()).unwrap();
    c.region_write(REGS, 32, &[1, 2, 3, 4]).unwrap();
    let mut buf = [0u8; 4];
    c.region_read(REGS, 32, &mut buf).unwrap();
    assert_eq!(buf, [1, 2, 3, 4]);
}

#[test]
fn rust_vmm_client_reads_irq_info_and_resets() {
    let h = Harness::start();
    let mut c = vfio_user::Client::new(h.path()).unwrap();
    assert_eq!(c.get_irq_info(2).unwrap().count, 4);
    c.reset().unwrap();
    assert_eq!(
        h.counters.resets.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[test]
fn rust_vmm_client_maps_and_unmaps_dma() {
    let h = Harness::start();
    let mut c = vfio_user::Client::new(h.path()).unwrap();
    let fd = common::memfd(1 << 20);
    use std::os::fd::AsRawFd;
    c.dma_map(0, 0x4000_0000, 1 << 20, fd.as_raw_fd()).unwrap();
    c.dma_unmap(0x4000_0000, 1 << 20).unwrap();
    assert_eq!(
        h.counters
            .dma_maps
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}
