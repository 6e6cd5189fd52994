//! Interrupts over a real socket, as the kernel's vfio-pci answers them:
//! `vfio_pci_ioctl_get_irq_info` for IRQ_INFO, `vfio_set_irqs_validate_and_prepare` and
//! `vfio_pci_set_irqs_ioctl` (with the handlers of `vfio_pci_intrs.c`) for SET_IRQS.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::os::fd::AsFd;

use nix::sys::eventfd::{EfdFlags, EventFd};
use vfu::client::Client;
use vfu::server::ServerConfig;
use vfu::Errno;
use vgrace_device::{GpuConfig, Profile};

const INTX: u32 = 0;
const MSI: u32 = 1;
const MSIX: u32 = 2;
const ERR: u32 = 3;
const REQ: u32 = 4;
/// VFIO_IRQ_INFO_* flags.
const EVENTFD: u32 = 1;
const MASKABLE: u32 = 2;
const AUTOMASKED: u32 = 4;
const NORESIZE: u32 = 8;
/// VFIO_IRQ_SET_* flags.
const DATA_NONE: u32 = 1 << 0;
const DATA_BOOL: u32 = 1 << 1;
const DATA_EVENTFD: u32 = 1 << 2;
const ACTION_MASK: u32 = 1 << 3;
const ACTION_UNMASK: u32 = 1 << 4;
const ACTION_TRIGGER: u32 = 1 << 5;

fn gpu() -> common::Running {
    common::serve(
        &GpuConfig::memfd(Profile::Gh100, 2 << 30),
        ServerConfig::default(),
    )
}

fn efd() -> EventFd {
    EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap()
}

/// The errno of a SET_IRQS, `None` when it succeeded.
fn set(
    c: &mut Client,
    index: u32,
    flags: u32,
    start: u32,
    count: u32,
    fds: &[&EventFd],
) -> Option<Errno> {
    let fds: Vec<_> = fds.iter().map(|e| e.as_fd()).collect();
    let bools = vec![
        1u8;
        if flags & DATA_BOOL != 0 {
            count as usize
        } else {
            0
        }
    ];
    c.set_irqs(flags, index, start, count, &bools, &fds)
        .err()
        .map(|e| e.remote_errno().expect("an error reply"))
}

#[test]
fn irq_info_flags_and_counts_follow_the_kernel() {
    let srv = gpu();
    let mut c = srv.client();
    let info = |c: &mut Client, i| {
        let r = c.irq_info(i).unwrap();
        (r.flags, r.count)
    };
    assert_eq!(info(&mut c, INTX), (EVENTFD | MASKABLE | AUTOMASKED, 1));
    assert_eq!(info(&mut c, MSI), (EVENTFD | NORESIZE, 0));
    assert_eq!(info(&mut c, MSIX), (EVENTFD | NORESIZE, 8));
    assert_eq!(info(&mut c, ERR), (EVENTFD | NORESIZE, 1));
    assert_eq!(info(&mut c, REQ), (EVENTFD | NORESIZE, 1));
}

#[test]
fn intx_msi_and_msix_are_mutually_exclusive() {
    let srv = gpu();
    let mut c = srv.client();
    let e = efd();
    assert_eq!(
        set(&mut c, INTX, DATA_EVENTFD | ACTION_TRIGGER, 0, 1, &[&e]),
        None
    );
    assert_eq!(
        set(&mut c, MSIX, DATA_EVENTFD | ACTION_TRIGGER, 0, 1, &[&e]),
        Some(Errno::EINVAL)
    );
    // count 0 with DATA_NONE turns INTx off; then MSI-X may be enabled.
    assert_eq!(
        set(&mut c, INTX, DATA_NONE | ACTION_TRIGGER, 0, 0, &[]),
        None
    );
    assert_eq!(
        set(&mut c, MSIX, DATA_EVENTFD | ACTION_TRIGGER, 0, 1, &[&e]),
        None
    );
    assert_eq!(
        set(&mut c, INTX, DATA_EVENTFD | ACTION_TRIGGER, 0, 1, &[&e]),
        Some(Errno::EINVAL)
    );
}

#[test]
fn msix_mask_and_unmask_are_enotty() {
    let srv = gpu();
    let mut c = srv.client();
    let e = efd();
    assert_eq!(
        set(&mut c, MSIX, DATA_EVENTFD | ACTION_TRIGGER, 0, 2, &[&e, &e]),
        None
    );
    for action in [ACTION_MASK, ACTION_UNMASK] {
        assert_eq!(
            set(&mut c, MSIX, DATA_NONE | action, 0, 1, &[]),
            Some(Errno::ENOTTY)
        );
    }
}

#[test]
fn error_and_request_interrupts_take_only_a_trigger() {
    let srv = gpu();
    let mut c = srv.client();
    for index in [ERR, REQ] {
        assert_eq!(
            set(&mut c, index, DATA_NONE | ACTION_MASK, 0, 1, &[]),
            Some(Errno::ENOTTY)
        );
        // Loopback needs an eventfd first.
        assert_eq!(
            set(&mut c, index, DATA_NONE | ACTION_TRIGGER, 0, 1, &[]),
            Some(Errno::EINVAL)
        );
        let e = efd();
        assert_eq!(
            set(&mut c, index, DATA_EVENTFD | ACTION_TRIGGER, 0, 1, &[&e]),
            None
        );
        assert_eq!(
            set(&mut c, index, DATA_NONE | ACTION_TRIGGER, 0, 1, &[]),
            None
        );
        assert_eq!(e.read().unwrap(), 1, "index {index}");
    }
}

#[test]
fn intx_mask_and_unmask_need_intx_enabled_and_one_vector() {
    let srv = gpu();
    let mut c = srv.client();
    assert_eq!(
        set(&mut c, INTX, DATA_NONE | ACTION_MASK, 0, 1, &[]),
        Some(Errno::EINVAL)
    );
    let e = efd();
    assert_eq!(
        set(&mut c, INTX, DATA_EVENTFD | ACTION_TRIGGER, 0, 1, &[&e]),
        None
    );
    assert_eq!(set(&mut c, INTX, DATA_NONE | ACTION_MASK, 0, 1, &[]), None);
    assert_eq!(
        set(&mut c, INTX, DATA_EVENTFD | ACTION_MASK, 0, 1, &[&e]),
        Some(Errno::ENOTTY)
    );
    assert_eq!(
        set(&mut c, INTX, DATA_NONE | ACTION_UNMASK, 0, 1, &[]),
        None
    );
}

/// `vfio_set_irqs_validate_and_prepare`: `start` must lie inside the index, and
/// `start + count` within its count, whatever the action (MSI has no vectors here, so every
/// request on it is EINVAL).
#[test]
fn set_irqs_outside_the_index_count_is_einval() {
    let srv = gpu();
    let mut c = srv.client();
    assert_eq!(
        set(&mut c, MSIX, DATA_NONE | ACTION_TRIGGER, 8, 0, &[]),
        Some(Errno::EINVAL)
    );
    assert_eq!(
        set(&mut c, MSIX, DATA_NONE | ACTION_TRIGGER, 7, 2, &[]),
        Some(Errno::EINVAL)
    );
    assert_eq!(
        set(&mut c, MSI, DATA_NONE | ACTION_TRIGGER, 0, 0, &[]),
        Some(Errno::EINVAL)
    );
    assert_eq!(
        set(
            &mut c,
            MSIX,
            DATA_NONE | ACTION_TRIGGER,
            1,
            u32::MAX - 1,
            &[]
        ),
        Some(Errno::EINVAL)
    );
}

#[test]
fn an_msix_block_past_the_enabled_vectors_is_einval() {
    let srv = gpu();
    let mut c = srv.client();
    let e = efd();
    assert_eq!(
        set(&mut c, MSIX, DATA_EVENTFD | ACTION_TRIGGER, 0, 2, &[&e, &e]),
        None
    );
    assert_eq!(
        set(&mut c, MSIX, DATA_EVENTFD | ACTION_TRIGGER, 2, 1, &[&e]),
        Some(Errno::EINVAL)
    );
    assert_eq!(
        set(&mut c, MSIX, DATA_EVENTFD | ACTION_TRIGGER, 1, 1, &[&e]),
        None
    );
}
