//! One named test per rule of the nvgrace device ABI (DESIGN.md, "Device rules and where they
//! are tested"), driven through the `vfu::Device` trait as the server would.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::os::fd::AsFd;
use std::time::Duration;

use test_support::procfs::rss_kib;
use test_support::SharedMapping;
use vfu::{Device, Errno};
use vgrace_device::{
    Backing, CoreOnly, Cxl, DeviceError, Fault, GpuConfig, LinuxVersion, NvGraceGpu, Profile,
};

const GIB: u64 = 1 << 30;
const ODD: u64 = 3_543_348_019;
const CONFIG: u32 = 7;

fn cfg(profile: Profile, mem_size: u64) -> GpuConfig {
    GpuConfig {
        mem_base: 0x4000_0000_0000,
        ..GpuConfig::memfd(profile, mem_size)
    }
}

fn dev(profile: Profile, mem_size: u64) -> NvGraceGpu {
    gpu(&cfg(profile, mem_size))
}

/// The device `c` describes, with memory decode on as a client finds it after open (without
/// the open's function reset, so the readiness timing of `c` is what the test sees).
fn gpu(c: &GpuConfig) -> NvGraceGpu {
    let mut d = NvGraceGpu::new(c).unwrap();
    enable_memory_decode(&mut d);
    d
}

fn read(d: &mut NvGraceGpu, region: u32, offset: u64, len: usize) -> Result<Vec<u8>, Errno> {
    let mut b = vec![0u8; len];
    let n = d.region_read(region, offset, &mut b)?;
    b.truncate(n);
    Ok(b)
}

fn cfg32(d: &mut NvGraceGpu, offset: u64) -> u32 {
    u32::from_le_bytes(read(d, CONFIG, offset, 4).unwrap().try_into().unwrap())
}

fn cfg_write32(d: &mut NvGraceGpu, offset: u64, v: u32) {
    d.region_write(CONFIG, offset, &v.to_le_bytes()).unwrap();
}

fn bar64(d: &mut NvGraceGpu, bar: u64) -> u64 {
    u64::from(cfg32(d, 0x10 + 4 * bar)) | (u64::from(cfg32(d, 0x14 + 4 * bar)) << 32)
}

#[test]
fn region_info_size_is_bar_size_gh100_96g() {
    let d = dev(Profile::Gh100, 96 * GIB);
    assert_eq!(d.region_info(4).unwrap().size, 128 * GIB);
    assert_eq!(d.region_info(2).unwrap().size, GIB);
}

#[test]
fn region_info_size_is_bar_size_non_power_of_two() {
    let d = dev(Profile::Gb200, ODD);
    assert_eq!(d.region_info(4).unwrap().size, 4 * GIB);
}

#[test]
fn region_info_flags_read_write_mmap() {
    let d = dev(Profile::Seed, ODD);
    assert_eq!(d.region_info(2).unwrap().flags & 7, 7);
}

#[test]
fn sparse_area_covers_exactly_memlength() {
    let d = dev(Profile::Gh100, 96 * GIB);
    let usemem = d.region_info(4).unwrap();
    let resmem = d.region_info(2).unwrap();
    assert_eq!(
        usemem.sparse_areas,
        vec![vfu::SparseArea {
            offset: 0,
            size: 95 * GIB
        }]
    );
    assert_eq!(
        resmem.sparse_areas,
        vec![vfu::SparseArea {
            offset: 0,
            size: GIB
        }]
    );
}

/// A file backing is one image in the host's layout: usemem at 0, resmem after it.
#[test]
fn region_fd_offsets_follow_host_layout_in_a_file_backing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(Profile::Gh100, ODD);
    c.backing = Backing::File(dir.path().join("gpu.mem"));
    let d = NvGraceGpu::new(&c).unwrap();
    assert_eq!(d.region_info(4).unwrap().fd_offset, 0);
    assert_eq!(d.region_info(2).unwrap().fd_offset, 2 * GIB);
}

/// With a memfd backing each memory region has a memfd of its own, sized to its memory (whole
/// pages): a client mapping BAR4's fd can never reach resmem, whatever length it maps.
#[test]
fn each_memory_region_has_an_fd_of_its_own_sized_to_its_memory() {
    let d = dev(Profile::Gh100, ODD);
    let size = |index| {
        let info = d.region_info(index).unwrap();
        assert_eq!(info.fd_offset, 0, "region {index}");
        let st = nix::sys::stat::fstat(info.fd.unwrap()).unwrap();
        (st.st_ino, st.st_size as u64)
    };
    let (use_ino, use_size) = size(4);
    let (res_ino, res_size) = size(2);
    assert_ne!(use_ino, res_ino);
    let usemem = d.layout().region(4).unwrap().memlength;
    let resmem = d.layout().region(2).unwrap().memlength;
    assert_eq!(use_size, usemem.div_ceil(4096) * 4096);
    assert_eq!(res_size, resmem.div_ceil(4096) * 4096);
}

#[test]
fn memory_regions_carry_one_fd() {
    let d = dev(Profile::Gh100, ODD);
    assert!(d.region_info(2).unwrap().fd.is_some());
    assert!(d.region_info(4).unwrap().fd.is_some());
    // BAR0 is the core's register file, mappable on a memfd of its own.
    let bar0 = d.region_info(0).unwrap().fd.unwrap();
    let mem = d.region_info(4).unwrap().fd.unwrap();
    assert_ne!(
        nix::sys::stat::fstat(bar0).unwrap().st_ino,
        nix::sys::stat::fstat(mem).unwrap().st_ino
    );
}

/// `vfio_pci_ioctl_get_region_info`: BAR0 is mappable except the pages that must trap: the
/// MSI-X table (`msix_sparse_mmap_cap`) and the two readiness registers.
#[test]
fn bar0_is_mappable_but_the_msix_table_and_readiness_pages() {
    let d = dev(Profile::Gh100, ODD);
    let info = d.region_info(0).unwrap();
    assert_eq!(info.flags, 7, "READ | WRITE | MMAP");
    let holes: Vec<(u64, u64)> = info
        .sparse_areas
        .windows(2)
        .map(|w| (w[0].offset + w[0].size, w[1].offset))
        .collect();
    assert_eq!(
        holes,
        [(0x1000, 0x2000), (0x20000, 0x21000), (0xfe_0000, 0xfe_1000)]
    );
    let last = info.sparse_areas.last().unwrap();
    assert_eq!(
        (info.sparse_areas[0].offset, last.offset + last.size),
        (0, 16 << 20)
    );
}

/// gb200 has no resmem from 6.14: region 2 is not a memory region (it is the real BAR1).
#[test]
fn gb200_has_no_resmem_region() {
    let d = dev(Profile::Gb200, ODD);
    assert!(d.layout().region(2).is_none());
    assert!(d.region_info(2).unwrap().sparse_areas.is_empty());
}

#[test]
fn read_past_memory_returns_all_ones() {
    let mut d = dev(Profile::Gh100, ODD);
    let resmem_len = ODD - 2 * GIB;
    assert_eq!(read(&mut d, 2, resmem_len, 16).unwrap(), vec![0xff; 16]);
}

#[test]
fn read_straddling_memory_end_mixes_memory_and_ones() {
    let mut d = dev(Profile::Gb200, ODD);
    d.region_write(4, ODD - 2, &[1, 2]).unwrap();
    assert_eq!(read(&mut d, 4, ODD - 2, 4).unwrap(), vec![1, 2, 0xff, 0xff]);
}

#[test]
fn write_past_memory_is_dropped() {
    let mut d = dev(Profile::Gb200, ODD);
    assert_eq!(d.region_write(4, ODD + 100, &[0; 8]).unwrap(), 8);
    assert_eq!(read(&mut d, 4, ODD + 100, 8).unwrap(), vec![0xff; 8]);
}

#[test]
fn access_is_clipped_at_bar_size() {
    let mut d = dev(Profile::Gb200, ODD);
    assert_eq!(read(&mut d, 4, 4 * GIB - 4, 16).unwrap().len(), 4);
    assert_eq!(d.region_write(4, 4 * GIB - 2, &[0; 8]).unwrap(), 2);
}

#[test]
fn offset_at_bar_size_is_einval() {
    let mut d = dev(Profile::Seed, ODD);
    assert_eq!(read(&mut d, 2, 4 * GIB, 4), Err(Errno::EINVAL));
    assert_eq!(d.region_write(2, u64::MAX, &[0]), Err(Errno::EINVAL));
}

#[test]
fn memory_reads_back_writes() {
    let mut d = dev(Profile::Gh100, 96 * GIB);
    d.region_write(4, 95 * GIB - 8, b"usemem!!").unwrap();
    d.region_write(2, 12345, b"resmem").unwrap();
    assert_eq!(
        read(&mut d, 4, 95 * GIB - 8, 8).unwrap(),
        b"usemem!!".to_vec()
    );
    assert_eq!(read(&mut d, 2, 12345, 6).unwrap(), b"resmem".to_vec());
}

#[test]
fn bar_reads_flags_only_initially() {
    let mut d = dev(Profile::Gh100, ODD);
    assert_eq!(bar64(&mut d, 2), 0xc);
    assert_eq!(bar64(&mut d, 4), 0xc);
}

#[test]
fn bar_sizing_probe_returns_size_mask() {
    let mut d = dev(Profile::Gh100, 96 * GIB);
    cfg_write32(&mut d, 0x20, u32::MAX);
    cfg_write32(&mut d, 0x24, u32::MAX);
    assert_eq!(bar64(&mut d, 4), !(128 * GIB - 1) | 0xc);
}

#[test]
fn bar_sizing_probe_on_every_profile() {
    for (p, bar, size) in [
        (Profile::Gh100, 2, 2 * GIB),
        (Profile::Gb200, 4, 4 * GIB),
        (Profile::Seed, 2, 4 * GIB),
    ] {
        let mut d = dev(p, ODD);
        cfg_write32(&mut d, 0x10 + 4 * bar, u32::MAX);
        cfg_write32(&mut d, 0x14 + 4 * bar, u32::MAX);
        assert_eq!(bar64(&mut d, bar), !(size - 1) | 0xc, "{p}");
    }
}

#[test]
fn bar_partial_unaligned_access() {
    let mut d = dev(Profile::Gb200, ODD);
    d.region_write(CONFIG, 0x23, &[0xab, 0xcd]).unwrap();
    // bar_val = 0xcdab000000 -> masked to the 4 GiB size: 0xcd00000000 | 0xc.
    assert_eq!(
        read(&mut d, CONFIG, 0x23, 3).unwrap(),
        vec![0x00, 0xcd, 0x00]
    );
    assert_eq!(bar64(&mut d, 4), 0xcd_0000_000c);
}

#[test]
fn absent_bar_reads_zero() {
    // The seed layout has memory at BAR2 only: the BAR4 registers belong to nothing.
    let mut d = dev(Profile::Seed, ODD);
    cfg_write32(&mut d, 0x20, u32::MAX);
    assert_eq!(bar64(&mut d, 4), 0);
    assert_eq!(cfg32(&mut d, 0x30), 0);
}

#[test]
fn bar0_is_16mib_64bit_non_prefetchable() {
    let mut d = dev(Profile::Gh100, ODD);
    cfg_write32(&mut d, 0x10, u32::MAX);
    cfg_write32(&mut d, 0x14, u32::MAX);
    assert_eq!(bar64(&mut d, 0), !((16u64 << 20) - 1) | 0x4);
    assert_eq!(d.region_info(0).unwrap().size, 16 << 20);
}

#[test]
fn reset_clears_emulated_bars() {
    let mut d = dev(Profile::Gh100, ODD);
    cfg_write32(&mut d, 0x20, 0x8000_0000);
    cfg_write32(&mut d, 0x24, 0x10);
    d.reset().unwrap();
    assert_eq!(bar64(&mut d, 4), 0xc);
}

#[test]
fn reset_keeps_memory() {
    let mut d = dev(Profile::Gh100, ODD);
    enable_memory_decode(&mut d);
    d.region_write(4, 4096, b"keep").unwrap();
    d.reset().unwrap();
    assert_eq!(read(&mut d, 4, 4096, 4).unwrap(), b"keep".to_vec());
}

fn reg32(d: &mut NvGraceGpu, offset: u64) -> u32 {
    u32::from_le_bytes(read(d, 0, offset, 4).unwrap().try_into().unwrap())
}

#[test]
fn readiness_registers_read_ff_when_ready() {
    let mut d = dev(Profile::Gb200, ODD);
    assert_eq!(reg32(&mut d, 0x1498), 0xff);
    assert_eq!(reg32(&mut d, 0x200bc), 0xff);
}

#[test]
fn readiness_waits_for_the_training_delay() {
    let mut c = cfg(Profile::Gb200, ODD);
    c.ready_delay = Duration::from_secs(3600);
    let mut d = gpu(&c);
    assert_eq!(reg32(&mut d, 0x1498), 0);
    assert_eq!(reg32(&mut d, 0x200bc), 0);
}

#[test]
fn reset_rearms_readiness() {
    let mut c = cfg(Profile::Gb200, ODD);
    c.ready_delay = Duration::from_millis(200);
    c.reset_ready_delay = Duration::from_millis(200);
    let mut d = gpu(&c);
    std::thread::sleep(Duration::from_millis(250));
    let before = reg32(&mut d, 0x200bc);
    d.reset().unwrap();
    assert_eq!(before, 0xff);
    assert_eq!(reg32(&mut d, 0x200bc), 0);
}

#[test]
fn never_ready_fault_keeps_hbm_training_zero() {
    let mut c = cfg(Profile::Gb200, ODD);
    c.fault = Some(Fault::NeverReady);
    let mut d = gpu(&c);
    assert_eq!(reg32(&mut d, 0x200bc), 0);
    assert_eq!(reg32(&mut d, 0x1498), 0xff);
}

#[test]
fn link_down_fault_keeps_c2c_zero() {
    let mut c = cfg(Profile::Gb200, ODD);
    c.fault = Some(Fault::LinkDown);
    let mut d = gpu(&c);
    assert_eq!(reg32(&mut d, 0x1498), 0);
}

#[test]
fn readiness_registers_are_read_only() {
    let mut d = dev(Profile::Gb200, ODD);
    d.region_write(0, 0x1498, &0u32.to_le_bytes()).unwrap();
    assert_eq!(reg32(&mut d, 0x1498), 0xff);
}

/// BAR0 accesses of any length are served, as `vfio_pci_core_do_io_rw` splits them into
/// aligned pieces.
#[test]
fn bar0_accesses_of_any_length_are_served() {
    let mut d = dev(Profile::Gh100, ODD);
    for len in [1usize, 2, 3, 4, 5, 8, 12, 4096] {
        assert_eq!(d.region_write(0, 0x100, &vec![0x11; len]).unwrap(), len);
        assert_eq!(read(&mut d, 0, 0x100, len).unwrap(), vec![0x11; len]);
    }
}

#[test]
fn bar0_register_file_keeps_writes() {
    let mut d = dev(Profile::Gh100, ODD);
    d.region_write(0, 0x88_0000, &0xdead_beef_u32.to_le_bytes())
        .unwrap();
    assert_eq!(reg32(&mut d, 0x88_0000), 0xdead_beef);
    assert_eq!(reg32(&mut d, 0x88_0004), 0);
}

/// `vfio_pci_bar_rw`: an offset at or past the BAR end is EINVAL, an access running past it
/// is clipped.
#[test]
fn bar0_access_at_16mib_is_einval_and_one_running_past_it_is_clipped() {
    let mut d = dev(Profile::Gh100, ODD);
    assert_eq!(read(&mut d, 0, 16 << 20, 4), Err(Errno::EINVAL));
    assert_eq!(read(&mut d, 0, (16 << 20) - 2, 4).unwrap().len(), 2);
    assert_eq!(d.region_write(0, (16 << 20) - 2, &[0; 8]), Ok(2));
}

/// `__vfio_pci_memory_enabled`: BAR0 (and any core BAR) answers EIO while memory decode is off.
#[test]
fn bar0_access_with_memory_decode_off_is_eio() {
    let mut d = dev(Profile::Gh100, ODD);
    d.region_write(CONFIG, 4, &[0x00, 0x00]).unwrap();
    assert_eq!(read(&mut d, 0, 0x1498, 4), Err(Errno::EIO));
    assert_eq!(d.region_write(0, 0x100, &[1; 4]), Err(Errno::EIO));
    // The offset check comes first.
    assert_eq!(read(&mut d, 0, 16 << 20, 4), Err(Errno::EINVAL));
    // Memory regions are the variant's: no decode gate outside the after-reset check.
    assert!(read(&mut d, 4, 0, 4).is_ok());
}

/// Blackwell's BAR1 is a core BAR: EIO while memory decode is off.
#[test]
fn bar1_access_with_memory_decode_off_is_eio() {
    let mut d = gpu(&at(Profile::Gb200, 4 * GIB, LinuxVersion::V7_2));
    d.region_write(CONFIG, 4, &[0x00, 0x00]).unwrap();
    assert_eq!(read(&mut d, 2, 0, 4), Err(Errno::EIO));
    assert_eq!(d.region_write(2, 0, b"bar1"), Err(Errno::EIO));
}

/// A PMCSR write of D3hot gates BAR access (EIO), D0 restores it; D1 and D2 are not
/// supported, so the state stays; a reset returns the function to D0.
#[test]
fn d3hot_gates_bar_access_and_d0_or_a_reset_restores_it() {
    let pmcsr = 0x44;
    let mut d = dev(Profile::Gh100, ODD);
    d.region_write(CONFIG, pmcsr, &[0x03, 0x00]).unwrap();
    assert_eq!(read(&mut d, CONFIG, pmcsr, 2).unwrap()[0] & 3, 3);
    assert_eq!(read(&mut d, 0, 0x100, 4), Err(Errno::EIO));
    d.region_write(CONFIG, pmcsr, &[0x01, 0x00]).unwrap();
    assert_eq!(
        read(&mut d, CONFIG, pmcsr, 2).unwrap()[0] & 3,
        3,
        "D1 is not supported"
    );
    d.region_write(CONFIG, pmcsr, &[0x00, 0x00]).unwrap();
    assert!(read(&mut d, 0, 0x100, 4).is_ok());
    d.region_write(CONFIG, pmcsr, &[0x03, 0x00]).unwrap();
    d.reset().unwrap();
    assert_eq!(read(&mut d, CONFIG, pmcsr, 2).unwrap()[0] & 3, 0);
}

/// The MSI-X table in BAR0 is the VMM's: reads through the BAR are all ones and writes are
/// dropped (`vfio_pci_bar_rw`'s excluded range); the PBA after it is ordinary.
#[test]
fn msix_table_in_bar0_reads_all_ones_and_drops_writes() {
    let table = 0x00fe_0000;
    let mut d = dev(Profile::Gh100, ODD);
    d.region_write(0, table - 4, &[0x22; 8]).unwrap();
    assert_eq!(
        read(&mut d, 0, table - 4, 8).unwrap(),
        [0x22, 0x22, 0x22, 0x22, 0xff, 0xff, 0xff, 0xff]
    );
    let end = table + 8 * 16;
    assert_eq!(read(&mut d, 0, end - 4, 4).unwrap(), [0xff; 4]);
    assert_eq!(read(&mut d, 0, end, 4).unwrap(), [0; 4]);
}

#[test]
fn config_identity_vendor_device_class() {
    let mut d = dev(Profile::Gh100, ODD);
    assert_eq!(cfg32(&mut d, 0), 0x2342_10de);
    assert_eq!(cfg32(&mut d, 8) >> 8, 0x03_0200);
}

#[test]
fn config_identity_read_only() {
    let mut d = dev(Profile::Gh100, ODD);
    cfg_write32(&mut d, 0, 0);
    assert_eq!(cfg32(&mut d, 0), 0x2342_10de);
}

fn capabilities(d: &mut NvGraceGpu) -> Vec<u8> {
    let mut ids = Vec::new();
    let mut at = read(d, CONFIG, 0x34, 1).unwrap()[0];
    while at != 0 && ids.len() < 16 {
        let cap = read(d, CONFIG, u64::from(at), 2).unwrap();
        ids.push(cap[0]);
        at = cap[1];
    }
    ids
}

#[test]
fn config_capability_list_has_pm_msix_pcie() {
    let mut d = dev(Profile::Gh100, ODD);
    assert_eq!(capabilities(&mut d), vec![0x01, 0x11, 0x10]);
}

#[test]
fn irq_info_msix_count_matches_capability_table_size() {
    let mut d = dev(Profile::Gh100, ODD);
    let ctrl = u16::from_le_bytes(
        read(&mut d, CONFIG, 0x48 + 2, 2)
            .unwrap()
            .try_into()
            .unwrap(),
    );
    assert_eq!(u32::from(ctrl & 0x7ff) + 1, d.irq_info(2).unwrap().count);
}

#[test]
fn gb200_dvsec_advertises_cached_resmem() {
    let mut d = dev(Profile::Gb200, ODD);
    let header = cfg32(&mut d, 0x100);
    let dvsec1 = cfg32(&mut d, 0x104);
    let dvsec2 = cfg32(&mut d, 0x108);
    assert_eq!(header & 0xffff, 0x23);
    assert_eq!(dvsec1 & 0xffff, 0x10de);
    assert_eq!(dvsec2 & 0xffff, 3);
    assert_eq!((dvsec2 >> 16) & 1, 1);
}

#[test]
fn gh100_has_no_dvsec() {
    let mut d = dev(Profile::Gh100, ODD);
    assert_eq!(cfg32(&mut d, 0x100), 0);
}

/// `vfio_pci_config_rw_single`: a config access at or past 4 KiB, or crossing it, is EFAULT.
#[test]
fn config_access_at_or_across_4096_is_efault() {
    let mut d = dev(Profile::Gh100, ODD);
    assert_eq!(read(&mut d, CONFIG, 4096, 4), Err(Errno::EFAULT));
    assert_eq!(read(&mut d, CONFIG, 4094, 4), Err(Errno::EFAULT));
    assert_eq!(d.region_write(CONFIG, 4094, &[0; 4]), Err(Errno::EFAULT));
    assert_eq!(read(&mut d, CONFIG, 4092, 4).unwrap().len(), 4);
}

#[test]
fn device_id_selectable_from_upstream_table() {
    let mut c = cfg(Profile::Gh100, ODD);
    c.device_id = Some(0x2345);
    let mut d = NvGraceGpu::new(&c).unwrap();
    assert_eq!(cfg32(&mut d, 0) >> 16, 0x2345);
}

#[test]
fn unknown_device_id_refused() {
    let mut c = cfg(Profile::Gh100, ODD);
    c.device_id = Some(0x1b80);
    assert!(matches!(
        NvGraceGpu::new(&c),
        Err(DeviceError::UnknownDeviceId { id: 0x1b80, .. })
    ));
}

// ---- Behaviour by Linux version (the upstream versions table) ----

fn at(profile: Profile, mem_size: u64, linux: LinuxVersion) -> GpuConfig {
    GpuConfig {
        linux,
        bar1_size: 64 << 20,
        ..cfg(profile, mem_size)
    }
}

fn enable_memory_decode(d: &mut NvGraceGpu) {
    d.region_write(CONFIG, 4, &[0x06, 0x00]).unwrap();
}

/// All versions: size 0 (C2C link down) is not a refusal; the probe falls back to the core ops
/// and the device is a plain vfio-pci function: config space and BAR0, no memory regions.
#[test]
fn link_down_is_served_as_a_core_device_on_every_version() {
    for linux in LinuxVersion::ALL {
        let mut d = NvGraceGpu::new(&at(Profile::Gh100, 0, linux)).unwrap();
        assert_eq!(cfg32(&mut d, 0), 0x2342_10de);
        assert_eq!(d.region_info(0).unwrap().size, 16 << 20);
        for index in [2, 4] {
            assert_eq!(
                d.region_info(index).unwrap().size,
                0,
                "{linux} region {index}"
            );
        }
        assert_eq!(d.layout().core_only, Some(CoreOnly::LinkDown));
    }
}

/// No memory properties at all is the same fallback, and a Blackwell keeps its real BAR1.
#[test]
fn no_memory_properties_is_a_core_device_with_blackwell_bar1() {
    let c = GpuConfig {
        mem_properties: false,
        ..at(Profile::Gb200, 96 * GIB, LinuxVersion::V6_14)
    };
    let mut d = gpu(&c);
    assert_eq!(d.layout().core_only, Some(CoreOnly::NoMemProperties));
    assert_eq!(d.region_info(4).unwrap().size, 0);
    assert_eq!(d.region_info(2).unwrap().size, 64 << 20);
    d.region_write(2, 0x100, b"bar1").unwrap();
    assert_eq!(read(&mut d, 2, 0x100, 4).unwrap(), b"bar1");
}

/// 6.9 never read the DVSEC: a Blackwell is split the Hopper way (1 GiB resmem at BAR2).
#[test]
fn gb200_under_6_9_gets_the_hopper_resmem_split() {
    let d = NvGraceGpu::new(&at(Profile::Gb200, 4 * GIB, LinuxVersion::V6_9)).unwrap();
    let resmem = d.layout().region(2).unwrap();
    assert_eq!((resmem.memlength, resmem.bar_size), (GIB, GIB));
    assert_eq!(d.layout().region(4).unwrap().memlength, 3 * GIB);
    assert_eq!(d.layout().bar1_size, None);
    assert_eq!(d.region_info(2).unwrap().sparse_areas.len(), 1);
}

/// 6.14+: with the DVSEC bit there is no resmem; region 2 is the device's real BAR1, an ordinary
/// prefetchable 64-bit core BAR: READ|WRITE|MMAP over its whole size, no sparse area.
#[test]
fn gb200_from_6_14_shows_its_real_bar1_at_region_2() {
    for linux in [LinuxVersion::V6_14, LinuxVersion::V6_19, LinuxVersion::V7_2] {
        let mut d = gpu(&at(Profile::Gb200, 4 * GIB, linux));
        let info = d.region_info(2).unwrap();
        assert_eq!((info.size, info.flags), (64 << 20, 7), "{linux}");
        assert!(info.sparse_areas.is_empty());
        assert!(info.fd.is_some());
        assert_eq!(d.layout().region(4).unwrap().memlength, 4 * GIB);
        d.region_write(2, (64 << 20) - 4, b"tail").unwrap();
        assert_eq!(read(&mut d, 2, (64 << 20) - 4, 8).unwrap(), b"tail");
        assert_eq!(read(&mut d, 2, 64 << 20, 1), Err(Errno::EINVAL));
    }
}

/// Blackwell's BAR1 is a core BAR: VFIO_DEVICE_RESET leaves its register as the client wrote
/// it (`vfio_pci_ioctl_reset`), the next open rebuilds it to 0.
#[test]
fn bar1_answers_the_sizing_probe_and_keeps_its_register_across_a_reset() {
    let mut d = gpu(&at(Profile::Gb200, 4 * GIB, LinuxVersion::V7_2));
    cfg_write32(&mut d, 0x18, 0xffff_ffff);
    cfg_write32(&mut d, 0x1c, 0xffff_ffff);
    let low = cfg32(&mut d, 0x18);
    let high = cfg32(&mut d, 0x1c);
    assert_eq!(
        (u64::from(high) << 32) | u64::from(low),
        !((64u64 << 20) - 1) | 0xc
    );
    d.region_write(2, 0, b"kept").unwrap();
    d.reset().unwrap();
    assert_eq!(cfg32(&mut d, 0x18), low);
    assert_eq!(read(&mut d, 2, 0, 4).unwrap(), b"kept");
    d.client_detached();
    d.client_attached();
    assert_eq!(cfg32(&mut d, 0x18), 0xc);
}

/// GB300 (0x31c2) follows the gb200 rules; an id of another generation is refused.
#[test]
fn gb300_follows_the_gb200_rules_and_ids_must_match_the_profile() {
    let mut c = at(Profile::Gb200, 4 * GIB, LinuxVersion::V7_2);
    c.device_id = Some(0x31c2);
    let d = NvGraceGpu::new(&c).unwrap();
    assert_eq!(d.layout().regions.len(), 1);
    assert!(d.layout().bar1_size.is_some());
    let mut wrong = cfg(Profile::Gh100, ODD);
    wrong.device_id = Some(0x2941);
    assert!(matches!(
        NvGraceGpu::new(&wrong),
        Err(DeviceError::DeviceIdNotOfProfile { id: 0x2941, .. })
    ));
}

#[test]
fn unknown_linux_version_lists_the_known_ones() {
    let err = "5.15".parse::<LinuxVersion>().unwrap_err().to_string();
    assert!(err.contains("6.9, 6.14, 6.19 or 7.2"), "{err}");
    assert_eq!("6.19".parse::<LinuxVersion>().unwrap(), LinuxVersion::V6_19);
}

/// A reset keeps COMMAND (the kernel saves and restores config space around it).
#[test]
fn reset_keeps_the_command_register() {
    let mut d = dev(Profile::Gh100, ODD);
    enable_memory_decode(&mut d);
    d.reset().unwrap();
    assert_eq!(cfg32(&mut d, 4) & 0xffff, 0x0006);
}

/// 6.19+: the first memory access after a reset with memory decode off is EIO; once decode is
/// on it proceeds. Before 6.19 nothing is checked.
#[test]
fn first_access_after_reset_with_decode_off_is_eio_from_6_19() {
    for (linux, checked) in [
        (LinuxVersion::V6_14, false),
        (LinuxVersion::V6_19, true),
        (LinuxVersion::V7_2, true),
    ] {
        let mut d = NvGraceGpu::new(&at(Profile::Gh100, ODD, linux)).unwrap();
        d.reset().unwrap();
        let first = read(&mut d, 4, 0, 4);
        if checked {
            assert_eq!(first, Err(Errno::EIO), "{linux}");
            enable_memory_decode(&mut d);
        }
        assert!(read(&mut d, 4, 0, 4).is_ok(), "{linux}");
    }
}

/// Reads check wherever they land in the BAR (the all-ones tail too); a write wholly in the
/// tail skips the check (upstream checks writes only below memlength).
#[test]
fn reset_check_covers_tail_reads_but_not_tail_writes() {
    let mut d = NvGraceGpu::new(&at(Profile::Gb200, ODD, LinuxVersion::V6_19)).unwrap();
    d.reset().unwrap();
    let tail = ODD + 16;
    assert_eq!(d.region_write(4, tail, &[1; 4]), Ok(4));
    assert_eq!(read(&mut d, 4, tail, 4), Err(Errno::EIO));
    assert_eq!(d.region_write(4, 0, &[1; 4]), Err(Errno::EIO));
}

/// 6.19+: with decode on, the first access after a reset waits for the readiness registers
/// (the post-reset training time) and then proceeds.
#[test]
fn first_access_after_reset_waits_for_readiness_from_6_19() {
    let c = GpuConfig {
        reset_ready_delay: Duration::from_millis(1200),
        ..at(Profile::Gh100, ODD, LinuxVersion::V6_19)
    };
    let mut d = NvGraceGpu::new(&c).unwrap();
    enable_memory_decode(&mut d);
    d.reset().unwrap();
    assert_eq!(
        read(&mut d, 0, 0x1498, 4).unwrap(),
        vec![0; 4],
        "training again"
    );
    assert!(read(&mut d, 4, 0, 4).is_ok());
    assert_eq!(read(&mut d, 0, 0x1498, 4).unwrap(), vec![0xff, 0, 0, 0]);
}

/// 6.19+: if the device never reads ready after a reset, the access gives ETIME.
#[test]
fn first_access_after_reset_is_etime_when_never_ready() {
    let c = GpuConfig {
        fault: Some(Fault::NeverReady),
        ready_timeout: Duration::from_millis(300),
        ..at(Profile::Gh100, ODD, LinuxVersion::V7_2)
    };
    let mut d = NvGraceGpu::new(&c).unwrap();
    enable_memory_decode(&mut d);
    d.reset().unwrap();
    assert_eq!(read(&mut d, 4, 0, 4), Err(Errno::ETIME));
    assert_eq!(d.region_write(4, 0, &[0; 4]), Err(Errno::ETIME));
}

/// 6.19+: a read that touches a poisoned page answers EFAULT (the copy out of device memory
/// faults upstream); other pages, and writes, are unaffected.
#[test]
fn read_touching_a_poisoned_page_is_efault_from_6_19() {
    let c = GpuConfig {
        poison: vec!["4:0x2010".parse().unwrap()],
        ..at(Profile::Gh100, ODD, LinuxVersion::V6_19)
    };
    let mut d = NvGraceGpu::new(&c).unwrap();
    assert_eq!(d.layout().poisoned[0].offset, 0x2000);
    assert_eq!(read(&mut d, 4, 0x2ff0, 0x20), Err(Errno::EFAULT));
    assert_eq!(read(&mut d, 4, 0x1ffc, 8), Err(Errno::EFAULT));
    assert!(read(&mut d, 4, 0x3000, 8).is_ok());
    assert!(read(&mut d, 4, 0x1000, 8).is_ok());
    assert_eq!(d.region_write(4, 0x2000, &[1; 8]), Ok(8));
    assert!(matches!(
        d.region_read_span(4, 0x2000, 64 << 10),
        Err(Errno::EFAULT)
    ));
}

/// Poison is refused before 6.19 and outside a memory region's memory.
#[test]
fn poison_needs_6_19_and_a_page_of_memory() {
    let before = GpuConfig {
        poison: vec!["4:0".parse().unwrap()],
        ..at(Profile::Gh100, ODD, LinuxVersion::V6_14)
    };
    assert!(matches!(
        NvGraceGpu::new(&before),
        Err(DeviceError::PoisonBeforeLinux619(_))
    ));
    let tail = GpuConfig {
        poison: vec![format!("4:{}", 3 * GIB).parse().unwrap()],
        ..at(Profile::Gh100, ODD, LinuxVersion::V7_2)
    };
    assert!(matches!(
        NvGraceGpu::new(&tail),
        Err(DeviceError::PoisonOutsideMemory { .. })
    ));
    assert!("4-0x10".parse::<vgrace_device::Poison>().is_err());
}

fn cxl_part(linux: LinuxVersion, cxl: Cxl, fault: Option<Fault>) -> NvGraceGpu {
    NvGraceGpu::new(&GpuConfig {
        cxl: Some(cxl),
        fault,
        ..at(Profile::Gb200, ODD, linux)
    })
    .unwrap()
}

fn quick_cxl() -> Cxl {
    Cxl {
        valid_delay: Duration::ZERO,
        active_delay: Duration::from_millis(300),
        timeout_code: 0,
    }
}

/// Blackwell-Next: a CXL Device DVSEC (vendor 0x1e98, id 0) whose Range 1 Size Low (DVSEC +
/// 0x1C) shows "valid" and then "active" after their delays, with the timeout code in 15:13.
#[test]
fn cxl_dvsec_reports_valid_then_active_with_its_timeout_code() {
    let cxl = Cxl {
        timeout_code: 2,
        ..quick_cxl()
    };
    let mut d = cxl_part(LinuxVersion::V7_2, cxl, None);
    assert_eq!(
        cfg32(&mut d, 0x140) & 0xffff,
        0x0023,
        "DVSEC extended capability id"
    );
    assert_eq!(cfg32(&mut d, 0x144) & 0xffff, 0x1e98);
    assert_eq!(cfg32(&mut d, 0x148) & 0xffff, 0);
    assert_eq!(cfg32(&mut d, 0x15c), (2 << 13) | 1, "valid, not yet active");
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(cfg32(&mut d, 0x15c), (2 << 13) | 3);
    assert_eq!(
        cfg32(&mut d, 0x100) >> 20,
        0x140,
        "the NVIDIA DVSEC links to the CXL one"
    );
}

/// 7.2 reads readiness from the CXL DVSEC: the BAR0 pair may say ready while "active" has not
/// come; the probe then fails once the encoded timeout (1 s for code 0) is over.
#[test]
fn linux_7_2_reads_readiness_from_the_cxl_dvsec() {
    let d = cxl_part(LinuxVersion::V7_2, quick_cxl(), Some(Fault::CxlNeverActive));
    assert!(matches!(d.probe_ready(), Err(DeviceError::NotReady(_))));
    let never_valid = cxl_part(LinuxVersion::V7_2, quick_cxl(), Some(Fault::CxlNeverValid));
    assert!(never_valid.probe_ready().is_err());
    // 6.19 ignores the DVSEC and polls the BAR0 pair, which is ready.
    let old = cxl_part(
        LinuxVersion::V6_19,
        quick_cxl(),
        Some(Fault::CxlNeverActive),
    );
    assert!(old.probe_ready().is_ok());
    // "active" after 300 ms is within the 1 s timeout.
    assert!(cxl_part(LinuxVersion::V7_2, quick_cxl(), None)
        .probe_ready()
        .is_ok());
}

/// After a reset the CXL delays start again, and 7.2's first memory access waits for them.
#[test]
fn cxl_readiness_restarts_at_reset_and_gates_the_first_access() {
    let mut d = cxl_part(LinuxVersion::V7_2, quick_cxl(), None);
    enable_memory_decode(&mut d);
    std::thread::sleep(Duration::from_millis(350));
    d.reset().unwrap();
    assert_eq!(
        cfg32(&mut d, 0x15c) & 3,
        1,
        "active again only after the delay"
    );
    assert!(read(&mut d, 4, 0, 4).is_ok());
    assert_eq!(cfg32(&mut d, 0x15c) & 3, 3);
}

/// 6.14+: the probe waits for readiness and refuses a device that never trains.
#[test]
fn probe_refuses_a_device_that_never_reads_ready() {
    let c = GpuConfig {
        fault: Some(Fault::LinkDown),
        ready_timeout: Duration::from_millis(200),
        ..at(Profile::Gb200, ODD, LinuxVersion::V6_14)
    };
    assert!(matches!(
        NvGraceGpu::new(&c).unwrap().probe_ready(),
        Err(DeviceError::NotReady(_))
    ));
    assert!(dev(Profile::Gh100, ODD).probe_ready().is_ok());
}

#[test]
fn usemem_zero_after_rounding_is_refused() {
    assert!(matches!(
        NvGraceGpu::new(&cfg(Profile::Gh100, GIB + 100)),
        Err(DeviceError::UsememZero { .. })
    ));
}

#[test]
fn overflowing_base_is_refused() {
    let mut c = cfg(Profile::Seed, GIB);
    c.mem_base = u64::MAX - GIB + 2;
    assert!(matches!(
        NvGraceGpu::new(&c),
        Err(DeviceError::Overflow { .. })
    ));
}

#[test]
fn memfd_480g_is_sparse() {
    let before = rss_kib();
    let mut d = dev(Profile::Gb200, 480 * GIB);
    d.region_write(4, 479 * GIB, &[1; 4096]).unwrap();
    let after = rss_kib();
    assert!(
        after.saturating_sub(before) < 32 * 1024,
        "RSS grew by {} KiB",
        after - before
    );
}

/// The region fd a client receives cannot be resized by anyone: shrinking would make the
/// server's own accesses fault (SIGBUS), growing would change the device.
fn assert_sealed(d: &NvGraceGpu, region: u32) {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    let info = d.region_info(region).unwrap();
    let fd = info.fd.unwrap();
    let seals = SealFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GET_SEALS).unwrap());
    assert!(seals.contains(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL));
    assert_eq!(nix::unistd::ftruncate(fd, 0), Err(Errno::EPERM));
    assert_eq!(nix::unistd::ftruncate(fd, 1 << 50), Err(Errno::EPERM));
}

#[test]
fn memfd_backing_is_sealed_against_resizing() {
    let d = dev(Profile::Gh100, ODD);
    assert_sealed(&d, 2);
    assert_sealed(&d, 4);
}

#[test]
fn file_backing_persists_across_devices() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(Profile::Gh100, ODD);
    c.backing = Backing::File(dir.path().join("gpu.mem"));
    let mut first = NvGraceGpu::new(&c).unwrap();
    first.region_write(2, 777, b"persist").unwrap();
    drop(first);
    let mut second = NvGraceGpu::new(&c).unwrap();
    assert_eq!(read(&mut second, 2, 777, 7).unwrap(), b"persist".to_vec());
}

#[test]
fn file_backing_holds_usemem_at_offset_0_and_resmem_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpu.mem");
    let mut c = cfg(Profile::Gh100, ODD);
    c.backing = Backing::File(path.clone());
    let mut d = NvGraceGpu::new(&c).unwrap();
    d.region_write(4, 16, b"U").unwrap();
    d.region_write(2, 16, b"R").unwrap();
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(&path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 16).unwrap();
    let u = b[0];
    f.read_exact_at(&mut b, 2 * GIB + 16).unwrap();
    assert_eq!((u, b[0]), (b'U', b'R'));
}

#[test]
fn file_backing_size_mismatch_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpu.mem");
    std::fs::write(&path, [0u8; 4096]).unwrap();
    let mut c = cfg(Profile::Gh100, ODD);
    c.backing = Backing::File(path);
    assert!(matches!(
        NvGraceGpu::new(&c),
        Err(DeviceError::BackingSizeMismatch { .. })
    ));
}

#[test]
fn mmap_and_region_access_are_coherent() {
    let mut d = dev(Profile::Gh100, ODD);
    let info = d.region_info(2).unwrap();
    let fd = info.fd.unwrap().try_clone_to_owned().unwrap();
    let map = SharedMapping::new(fd.as_fd(), info.fd_offset, 4096).unwrap();
    d.region_write(2, 8, &[0x42]).unwrap();
    let mut seen = [0u8; 1];
    map.read(8, &mut seen);
    map.write(9, &[0x24]);
    let back = read(&mut d, 2, 9, 1).unwrap();
    assert_eq!(seen, [0x42]);
    assert_eq!(back, vec![0x24]);
}

#[test]
fn device_info_is_a_resettable_pci_device_with_9_regions_5_irqs() {
    let d = dev(Profile::Gh100, ODD);
    let i = d.device_info();
    assert_eq!((i.flags & 3, i.num_regions, i.num_irqs), (3, 9, 5));
}

fn free_huge_pages() -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap();
    s.lines()
        .find(|l| l.starts_with("HugePages_Free:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map_or(0, |v| v.parse().unwrap())
}

/// With huge pages reserved the device works; without, creation fails with a clear error
/// rather than the server dying of SIGBUS on first touch.
#[test]
fn hugetlbfs_backing_reserves_pages_or_fails_cleanly() {
    let mut c = cfg(Profile::Gb200, 8 << 20);
    c.backing = Backing::Hugetlbfs;
    let enough = free_huge_pages() >= 4;
    match NvGraceGpu::new(&c) {
        Ok(mut d) => {
            assert!(enough, "created without free huge pages");
            d.region_write(4, 0, b"huge").unwrap();
            assert_eq!(read(&mut d, 4, 0, 4).unwrap(), b"huge".to_vec());
            assert_sealed(&d, 4);
        }
        Err(e) => {
            assert!(!enough, "failed with free huge pages: {e}");
            assert!(matches!(e, DeviceError::Backing { .. }), "{e}");
        }
    }
}

fn every_profile() -> [(Profile, NvGraceGpu, u32, u64, u64); 3] {
    // (profile, device, a memory region, its memlength, its BAR size) for a non-power-of-two size.
    [
        (
            Profile::Gh100,
            dev(Profile::Gh100, ODD),
            2,
            ODD - 2 * GIB,
            2 * GIB,
        ),
        (Profile::Gb200, dev(Profile::Gb200, ODD), 4, ODD, 4 * GIB),
        (Profile::Seed, dev(Profile::Seed, ODD), 2, ODD, 4 * GIB),
    ]
}

#[test]
fn read_past_memory_returns_all_ones_on_every_profile() {
    for (p, mut d, region, memlength, _) in every_profile() {
        assert_eq!(
            read(&mut d, region, memlength, 8).unwrap(),
            vec![0xff; 8],
            "{p}"
        );
    }
}

#[test]
fn sparse_area_covers_exactly_memlength_on_every_profile() {
    for (p, d, region, memlength, bar) in every_profile() {
        let info = d.region_info(region).unwrap();
        assert_eq!(
            info.sparse_areas,
            vec![vfu::SparseArea {
                offset: 0,
                size: memlength
            }],
            "{p}"
        );
        assert_eq!(info.size, bar, "{p}");
    }
}

#[test]
fn clipping_and_einval_at_bar_end_on_every_profile() {
    for (p, mut d, region, _, bar) in every_profile() {
        assert_eq!(read(&mut d, region, bar - 2, 8).unwrap().len(), 2, "{p}");
        assert_eq!(read(&mut d, region, bar, 1), Err(Errno::EINVAL), "{p}");
    }
}

#[test]
fn reset_clears_emulated_bars_on_every_profile() {
    for (p, mut d, region, _, _) in every_profile() {
        let reg = 0x10 + 4 * u64::from(region);
        cfg_write32(&mut d, reg, u32::MAX);
        d.reset().unwrap();
        assert_eq!(cfg32(&mut d, reg), 0xc, "{p}");
    }
}

#[test]
fn unaligned_memory_gets_a_whole_last_page_in_the_fd() {
    let d = dev(Profile::Gb200, ODD);
    let fd = d
        .region_info(4)
        .unwrap()
        .fd
        .unwrap()
        .try_clone_to_owned()
        .unwrap();
    let len = std::fs::File::from(fd).metadata().unwrap().len();
    assert_eq!(len, ODD.next_multiple_of(4096));
}

fn cfg16(d: &mut NvGraceGpu, offset: u64) -> u16 {
    u16::from_le_bytes(read(d, CONFIG, offset, 2).unwrap().try_into().unwrap())
}

/// Which config bits a client may write, as `vfio_pci_config.c`'s permission tables decide:
/// MSI-X has none (the client enables it with SET_IRQS), the PCI Express capability only
/// Device Control (not phantom functions) and Device Control 2 (not ARI), the header its
/// COMMAND, interrupt line, cache line size and BARs.
#[test]
fn config_write_permissions_follow_the_kernels_tables() {
    let mut d = dev(Profile::Gh100, ODD);
    let (msix, exp) = (0x48u64, 0x60u64);
    let before = cfg16(&mut d, msix + 2);
    d.region_write(CONFIG, msix + 2, &[0xff, 0xff]).unwrap();
    assert_eq!(cfg16(&mut d, msix + 2), before, "MSI-X message control");
    let link = cfg16(&mut d, exp + 0x10);
    d.region_write(CONFIG, exp + 0x10, &[0xff, 0xff]).unwrap();
    assert_eq!(cfg16(&mut d, exp + 0x10), link, "Link Control");
    d.region_write(CONFIG, exp + 8, &0x7fffu16.to_le_bytes())
        .unwrap();
    assert_eq!(cfg16(&mut d, exp + 8), 0x7fff & !(1 << 9), "Device Control");
    d.region_write(CONFIG, exp + 0x28, &[0xff, 0xff]).unwrap();
    assert_eq!(
        cfg16(&mut d, exp + 0x28) & (1 << 5),
        0,
        "ARI in Device Control 2"
    );
    assert_ne!(cfg16(&mut d, exp + 0x28), 0, "the rest of Device Control 2");
    d.region_write(CONFIG, 0, &[0xff; 4]).unwrap();
    assert_eq!(cfg32(&mut d, 0) & 0xffff, 0x10de, "vendor id");
    d.region_write(CONFIG, 0x3c, &[0x2a]).unwrap();
    assert_eq!(cfg16(&mut d, 0x3c) & 0xff, 0x2a, "interrupt line");
}

/// `nvgrace_gpu_read_config_emu` overlays one emulated BAR per read, BAR2's pair first: a
/// single read spanning both pairs shows the BAR4 pair as the core has it (0), while reads of
/// each pair alone show both emulated values.
#[test]
fn a_config_read_spanning_both_bar_pairs_overlays_only_the_bar2_pair() {
    let mut d = dev(Profile::Gh100, ODD);
    cfg_write32(&mut d, 0x1c, 0x1);
    cfg_write32(&mut d, 0x24, 0x2);
    let both = read(&mut d, CONFIG, 0x18, 16).unwrap();
    assert_eq!(both[..8], [0xc, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(both[8..], [0; 8]);
    assert_eq!(cfg32(&mut d, 0x20), 0xc);
    assert_eq!(cfg32(&mut d, 0x24), 0x2);
    let tail = read(&mut d, CONFIG, 0x1c, 8).unwrap();
    assert_eq!(
        tail,
        [1, 0, 0, 0, 0, 0, 0, 0],
        "BAR3 and BAR4 in one read span both pairs"
    );
}
