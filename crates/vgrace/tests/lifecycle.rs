//! The kernel's three moments, over a real socket: a client connecting is `open`
//! (`vfio_pci_core_enable` + `nvgrace_gpu_open_device`), leaving is `close`
//! (`vfio_pci_core_disable`), and VFIO_DEVICE_RESET or a guest FLR is a function reset that
//! leaves the virtual config alone (`vfio_pci_ioctl_reset`, `vfio_exp_config_write`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::os::fd::AsFd;
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};

use vfu::client::Client;
use vfu::server::ServerConfig;
use vgrace_device::{GpuConfig, LinuxVersion, Profile};

const GIB: u64 = 1 << 30;
const CONFIG: u32 = 7;
/// COMMAND and its bits.
const COMMAND: u64 = 0x04;
const MEMORY: u16 = 1 << 1;
const MASTER: u16 = 1 << 2;
/// The PCI Express capability of the GPU and its Device Capabilities / Control registers.
const EXP: u64 = 0x60;
const DEVCAP: u64 = EXP + 4;
const DEVCTL: u64 = EXP + 8;
const DEVCAP_FLR: u32 = 1 << 28;
const DEVCTL_FLR: u16 = 1 << 15;
/// A BAR0 scratch register (no readiness, no MSI-X there).
const SCRATCH: u64 = 0x100;
/// The legacy readiness register (C2C link status).
const C2C: u64 = 0x1498;
/// VFIO_IRQ_SET_* flags and the MSI-X index.
const DATA_NONE: u32 = 1 << 0;
const DATA_EVENTFD: u32 = 1 << 2;
const ACTION_TRIGGER: u32 = 1 << 5;
const MSIX: u32 = 2;
const VERSIONS: [LinuxVersion; 4] = [
    LinuxVersion::V6_9,
    LinuxVersion::V6_14,
    LinuxVersion::V6_19,
    LinuxVersion::V7_2,
];

fn gpu(linux: LinuxVersion) -> common::Running {
    common::serve(
        &GpuConfig {
            linux,
            ..GpuConfig::memfd(Profile::Gh100, 2 * GIB)
        },
        ServerConfig::default(),
    )
}

fn cfg16(c: &mut Client, offset: u64) -> u16 {
    u16::from_le_bytes(
        c.region_read(CONFIG, offset, 2)
            .unwrap()
            .try_into()
            .unwrap(),
    )
}

fn cfg32(c: &mut Client, offset: u64) -> u32 {
    u32::from_le_bytes(
        c.region_read(CONFIG, offset, 4)
            .unwrap()
            .try_into()
            .unwrap(),
    )
}

fn bar0_32(c: &mut Client, offset: u64) -> u32 {
    u32::from_le_bytes(c.region_read(0, offset, 4).unwrap().try_into().unwrap())
}

fn write16(c: &mut Client, region: u32, offset: u64, v: u16) {
    c.region_write(region, offset, &v.to_le_bytes()).unwrap();
}

fn write32(c: &mut Client, region: u32, offset: u64, v: u32) {
    c.region_write(region, offset, &v.to_le_bytes()).unwrap();
}

/// What QEMU leaves behind on its way out: memory decode off (`vfio_pci_pre_reset`), then
/// VFIO_DEVICE_RESET, then it disconnects.
fn leave_as_qemu_does(c: &mut Client) {
    let command = cfg16(c, COMMAND);
    write16(c, CONFIG, COMMAND, command & !MEMORY);
    c.reset().unwrap();
}

#[test]
fn a_new_client_sees_memory_decode_on_and_bus_mastering_off() {
    let srv = gpu(LinuxVersion::V7_2);
    let mut c = srv.client();
    let command = cfg16(&mut c, COMMAND);
    assert_eq!(
        command & (MEMORY | MASTER),
        MEMORY,
        "COMMAND {command:#06x}"
    );
}

#[test]
fn a_new_client_after_qemu_left_decode_off_accesses_memory_at_every_version() {
    for linux in VERSIONS {
        let srv = gpu(linux);
        let mut first = srv.client();
        first.region_write(4, 0x1000, b"kept").unwrap();
        leave_as_qemu_does(&mut first);
        drop(first);
        let mut next = srv.client();
        assert_eq!(
            next.region_read(4, 0x1000, 4).unwrap(),
            b"kept",
            "{linux:?}: the first read of a new client"
        );
        next.region_write(4, 0x2000, b"more").unwrap();
    }
}

#[test]
fn an_access_right_after_the_clients_own_reset_succeeds_while_decode_is_on() {
    for linux in VERSIONS {
        let srv = gpu(linux);
        let mut c = srv.client();
        c.reset().unwrap();
        c.region_write(4, 0x3000, b"after").unwrap();
        c.reset().unwrap();
        assert_eq!(c.region_read(4, 0x3000, 5).unwrap(), b"after", "{linux:?}");
    }
}

#[test]
fn reset_keeps_the_virtual_config_and_zeroes_only_the_emulated_bars() {
    let srv = gpu(LinuxVersion::V7_2);
    let mut c = srv.client();
    write32(&mut c, CONFIG, 0x10, 0xfe00_0000); // BAR0: a core BAR
    write32(&mut c, CONFIG, 0x20, 0x8000_0000); // BAR4: nvgrace's emulated BAR
    write16(&mut c, CONFIG, 0x3c, 0x0b); // interrupt line
    write16(&mut c, CONFIG, DEVCTL, 0x2810); // DevCtl: a max read request and relaxed ordering
    let (bar0, devctl) = (cfg32(&mut c, 0x10), cfg16(&mut c, DEVCTL));
    c.reset().unwrap();
    assert_eq!(cfg32(&mut c, 0x10), bar0, "BAR0 register");
    assert_eq!(cfg32(&mut c, 0x20), 0xc, "BAR4 register");
    assert_eq!(cfg16(&mut c, 0x3c) & 0xff, 0x0b, "interrupt line");
    assert_eq!(cfg16(&mut c, DEVCTL), devctl, "DevCtl");
    assert_ne!(cfg16(&mut c, COMMAND) & MEMORY, 0, "COMMAND memory bit");
}

#[test]
fn reset_clears_the_bar0_register_file() {
    let srv = gpu(LinuxVersion::V7_2);
    let mut c = srv.client();
    write32(&mut c, 0, SCRATCH, 0x5eed_1234);
    c.reset().unwrap();
    assert_eq!(bar0_32(&mut c, SCRATCH), 0);
}

#[test]
fn a_new_client_gets_a_rebuilt_config_space_and_a_reset_function() {
    let srv = gpu(LinuxVersion::V7_2);
    let mut first = srv.client();
    write32(&mut first, CONFIG, 0x10, 0xfe00_0000);
    write32(&mut first, CONFIG, 0x20, 0x8000_0000);
    write16(&mut first, CONFIG, 0x3c, 0x0b);
    write16(&mut first, CONFIG, COMMAND, MEMORY | MASTER);
    write32(&mut first, 0, SCRATCH, 0x5eed_1234);
    drop(first);
    let mut next = srv.client();
    assert_eq!(
        cfg32(&mut next, 0x10),
        0x4,
        "BAR0 register: 64-bit, not prefetchable"
    );
    assert_eq!(cfg32(&mut next, 0x20), 0xc, "BAR4 register");
    assert_eq!(cfg16(&mut next, 0x3c) & 0xff, 0, "interrupt line");
    assert_eq!(cfg16(&mut next, COMMAND) & (MEMORY | MASTER), MEMORY);
    assert_eq!(bar0_32(&mut next, SCRATCH), 0, "BAR0 register file");
}

#[test]
fn device_memory_survives_close_and_open() {
    let srv = gpu(LinuxVersion::V7_2);
    let mut first = srv.client();
    first.region_write(2, 0x40, b"resmem").unwrap();
    first.region_write(4, 0x40, b"usemem").unwrap();
    drop(first);
    let mut next = srv.client();
    assert_eq!(next.region_read(2, 0x40, 6).unwrap(), b"resmem");
    assert_eq!(next.region_read(4, 0x40, 6).unwrap(), b"usemem");
}

#[test]
fn function_level_reset_is_advertised_in_devcap() {
    let srv = gpu(LinuxVersion::V7_2);
    let mut c = srv.client();
    assert_ne!(cfg32(&mut c, DEVCAP) & DEVCAP_FLR, 0);
}

#[test]
fn an_flr_written_to_devctl_resets_the_function_and_reads_back_zero() {
    let srv = gpu(LinuxVersion::V7_2);
    let mut c = srv.client();
    write32(&mut c, 0, SCRATCH, 0x5eed_1234);
    write32(&mut c, CONFIG, 0x20, 0x8000_0000);
    let devctl = cfg16(&mut c, DEVCTL);
    write16(&mut c, CONFIG, DEVCTL, devctl | DEVCTL_FLR);
    assert_eq!(cfg16(&mut c, DEVCTL), devctl, "the FLR bit reads 0");
    assert_eq!(
        bar0_32(&mut c, SCRATCH),
        0,
        "BAR0 register file after the FLR"
    );
    // Only VFIO_DEVICE_RESET zeroes nvgrace's emulated BARs; an FLR goes through the core.
    assert_eq!(cfg32(&mut c, 0x20), 0x8000_000c);
}

#[test]
fn an_flr_rearms_readiness_and_the_next_memory_access_waits_for_it_from_6_19() {
    let srv = common::serve(
        &GpuConfig {
            linux: LinuxVersion::V7_2,
            reset_ready_delay: Duration::from_millis(1500),
            ..GpuConfig::memfd(Profile::Gh100, 2 * GIB)
        },
        ServerConfig::default(),
    );
    let mut c = srv.client();
    // Let the open's own training finish.
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(bar0_32(&mut c, C2C), 0xff);
    let devctl = cfg16(&mut c, DEVCTL);
    write16(&mut c, CONFIG, DEVCTL, devctl | DEVCTL_FLR);
    assert_eq!(bar0_32(&mut c, C2C), 0, "training again after the FLR");
    let start = std::time::Instant::now();
    c.region_read(4, 0, 4).unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "the first access after the FLR waited {:?}",
        start.elapsed()
    );
    assert_eq!(bar0_32(&mut c, C2C), 0xff);
}

#[test]
fn close_drops_the_clients_interrupts() {
    let srv = gpu(LinuxVersion::V7_2);
    let mut first = srv.client();
    let efd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap();
    first
        .set_irqs(
            DATA_EVENTFD | ACTION_TRIGGER,
            MSIX,
            0,
            1,
            &[],
            &[efd.as_fd()],
        )
        .unwrap();
    // Wired: a trigger reaches it.
    first
        .set_irqs(DATA_NONE | ACTION_TRIGGER, MSIX, 0, 1, &[], &[])
        .unwrap();
    assert_eq!(efd.read().unwrap(), 1);
    drop(first);
    // The next client finds MSI-X off: a loopback trigger has nothing to signal (EINVAL,
    // `vfio_pci_set_msi_trigger`), and once it wires its own eventfd, only that one fires.
    let mut next = srv.client();
    assert!(next
        .set_irqs(DATA_NONE | ACTION_TRIGGER, MSIX, 0, 1, &[], &[])
        .is_err());
    let own = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap();
    next.set_irqs(
        DATA_EVENTFD | ACTION_TRIGGER,
        MSIX,
        0,
        1,
        &[],
        &[own.as_fd()],
    )
    .unwrap();
    next.set_irqs(DATA_NONE | ACTION_TRIGGER, MSIX, 0, 1, &[], &[])
        .unwrap();
    assert_eq!(own.read().unwrap(), 1);
    assert!(
        efd.read().is_err(),
        "the old client's eventfd was signalled"
    );
}
