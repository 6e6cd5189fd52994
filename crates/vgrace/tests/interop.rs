//! The crates.io `vfio_user` Client (what Cloud Hypervisor uses) against the real Grace GPU
//! device: region table, the memory region's fd and sparse area, register and memory access.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use vfu::server::ServerConfig;
use vgrace_device::{GpuConfig, Profile};

fn start(profile: Profile, mem_size: u64) -> common::Running {
    common::serve(
        &GpuConfig::memfd(profile, mem_size),
        ServerConfig::default(),
    )
}

#[test]
fn cloud_hypervisor_client_sees_the_gh100_regions() {
    let r = start(Profile::Gh100, 3_543_348_019);
    let c = vfio_user::Client::new(&r.path).unwrap();
    let bar4 = c.region(4).unwrap();
    let bar2 = c.region(2).unwrap();
    assert_eq!(bar4.size, 2 << 30);
    assert_eq!(bar2.size, 2 << 30);
    assert_eq!(bar2.sparse_areas.len(), 1);
    assert_eq!(bar2.sparse_areas[0].size, 3_543_348_019 - (2 << 30));
    assert!(bar2.file_offset.is_some());
    assert_eq!(c.region(7).unwrap().size, 4096);
}

#[test]
fn cloud_hypervisor_client_reads_config_and_memory() {
    let r = start(Profile::Gb200, 3 << 30);
    let mut c = vfio_user::Client::new(&r.path).unwrap();
    let mut id = [0u8; 4];
    c.region_read(7, 0, &mut id).unwrap();
    c.region_write(4, 0x1000, b"chv!").unwrap();
    let mut back = [0u8; 4];
    c.region_read(4, 0x1000, &mut back).unwrap();
    let mut tail = [0u8; 4];
    c.region_read(4, 3 << 30, &mut tail).unwrap();
    assert_eq!(u32::from_le_bytes(id), 0x2941_10de);
    assert_eq!(&back, b"chv!");
    assert_eq!(tail, [0xff; 4]);
}
