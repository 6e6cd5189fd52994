//! Interrupts as `vfio_pci_intrs.c` runs them: one interrupt type at a time (INTx, MSI or
//! MSI-X, `vdev->irq_type`), INTx automasked when it fires, and the error and request
//! eventfds beside them. The server has already done the generic checks of
//! `vfio_set_irqs_validate_and_prepare` (index, flag bits, `start + count` within the index's
//! count, one data type); [`Interrupts::set`] is `vfio_pci_set_irqs_ioctl`'s dispatch by index
//! and action and what each handler checks.

use std::os::fd::{AsFd, OwnedFd};

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_TYPE_MASK,
    VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_TYPE_MASK,
};
use vfu::device::{ERR_IRQ_INDEX, INTX_IRQ_INDEX, MSIX_IRQ_INDEX, MSI_IRQ_INDEX, REQ_IRQ_INDEX};
use vfu::irq::signal;
use vfu::{Errno, SetIrqs};

/// Which interrupt type the client enabled (`vdev->irq_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Mode {
    #[default]
    None,
    Intx,
    /// MSI or MSI-X: the index, and how many vectors were enabled.
    Msi(u32),
}

/// The interrupt state of one function while a client has it open.
#[derive(Debug, Default)]
pub(crate) struct Interrupts {
    mode: Mode,
    /// INTx: its trigger eventfd, masked (by the client or automasked), and asserted while
    /// masked (delivered on unmask, as the level stays up).
    intx: Option<OwnedFd>,
    intx_masked: bool,
    intx_pending: bool,
    /// The INTx unmask eventfd (an irqfd in the kernel): kept, so the client's assignment
    /// succeeds, but nothing here polls it.
    intx_unmask: Option<OwnedFd>,
    /// MSI or MSI-X vectors `0..nvec` of the enabled index.
    vectors: Vec<Option<OwnedFd>>,
    err: Option<OwnedFd>,
    req: Option<OwnedFd>,
}

impl Interrupts {
    /// Everything off and every eventfd dropped (close: `vfio_pci_core_disable` turns the
    /// interrupt type off, `vfio_pci_core_close_device` drops the error and request eventfds).
    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }

    /// DEVICE_SET_IRQS after the generic checks, by index and action.
    pub(crate) fn set(&mut self, req: SetIrqs) -> Result<(), Errno> {
        let action = req.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
        match (req.index, action) {
            (INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_MASK) => self.intx_mask(req),
            (INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_UNMASK) => self.intx_unmask(req),
            (INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER) => self.intx_trigger(req),
            (MSI_IRQ_INDEX | MSIX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER) => self.msi_trigger(req),
            (ERR_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER) => trigger_single(&mut self.err, req),
            (REQ_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER) => trigger_single(&mut self.req, req),
            // MSI/MSI-X masking is not exported; error and request have only a trigger.
            _ => Err(Errno::ENOTTY),
        }
    }

    /// The function raises interrupt `vector` of `index`. INTx is automasked when it fires
    /// (`vfio_intx_handler`) and remembered while masked. Returns whether an eventfd was
    /// signalled.
    pub(crate) fn raise(&mut self, index: u32, vector: u32) -> bool {
        match (index, self.mode) {
            (INTX_IRQ_INDEX, Mode::Intx) => {
                if self.intx_masked {
                    self.intx_pending = true;
                    return false;
                }
                self.intx_masked = true;
                self.intx.as_ref().is_some_and(|fd| signal(fd.as_fd()))
            }
            (_, Mode::Msi(i)) if i == index => self
                .vectors
                .get(vector as usize)
                .and_then(Option::as_ref)
                .is_some_and(|fd| signal(fd.as_fd())),
            (ERR_IRQ_INDEX, _) if vector == 0 => {
                self.err.as_ref().is_some_and(|fd| signal(fd.as_fd()))
            }
            (REQ_IRQ_INDEX, _) if vector == 0 => {
                self.req.as_ref().is_some_and(|fd| signal(fd.as_fd()))
            }
            _ => false,
        }
    }

    /// Whether the client has wired the request interrupt (so asking it to let go of the
    /// device can be answered).
    #[cfg(test)]
    fn has_request(&self) -> bool {
        self.req.is_some()
    }

    fn intx_mask(&mut self, req: SetIrqs) -> Result<(), Errno> {
        if self.mode != Mode::Intx || req.start != 0 || req.count != 1 {
            return Err(Errno::EINVAL);
        }
        match data(req.flags) {
            VFIO_IRQ_SET_DATA_EVENTFD => return Err(Errno::ENOTTY),
            VFIO_IRQ_SET_DATA_BOOL if !first_bool(&req) => {}
            _ => self.intx_masked = true,
        }
        Ok(())
    }

    fn intx_unmask(&mut self, mut req: SetIrqs) -> Result<(), Errno> {
        if self.mode != Mode::Intx || req.start != 0 || req.count != 1 {
            return Err(Errno::EINVAL);
        }
        match data(req.flags) {
            VFIO_IRQ_SET_DATA_EVENTFD => self.intx_unmask = req.eventfds.pop().flatten(),
            VFIO_IRQ_SET_DATA_BOOL if !first_bool(&req) => {}
            _ => self.unmask_intx(),
        }
        Ok(())
    }

    /// `__vfio_pci_intx_unmask`: a level still asserted fires again (and masks again).
    fn unmask_intx(&mut self) {
        self.intx_masked = false;
        if std::mem::take(&mut self.intx_pending) {
            self.raise(INTX_IRQ_INDEX, 0);
        }
    }

    fn intx_trigger(&mut self, mut req: SetIrqs) -> Result<(), Errno> {
        let flags = data(req.flags);
        if self.mode == Mode::Intx && req.count == 0 && flags == VFIO_IRQ_SET_DATA_NONE {
            self.intx_off();
            return Ok(());
        }
        if !matches!(self.mode, Mode::Intx | Mode::None) || req.start != 0 || req.count != 1 {
            return Err(Errno::EINVAL);
        }
        if flags == VFIO_IRQ_SET_DATA_EVENTFD {
            // Enabling starts unmasked; changing the signal of an enabled INTx keeps its state.
            if self.mode == Mode::None {
                self.intx_masked = false;
                self.intx_pending = false;
            }
            self.mode = Mode::Intx;
            self.intx = req.eventfds.pop().flatten();
            return Ok(());
        }
        if self.mode != Mode::Intx {
            return Err(Errno::EINVAL);
        }
        // Loopback: DATA_NONE or a true bool sends the eventfd (`vfio_send_intx_eventfd`).
        if flags == VFIO_IRQ_SET_DATA_NONE || first_bool(&req) {
            if let Some(fd) = &self.intx {
                signal(fd.as_fd());
            }
        }
        Ok(())
    }

    fn intx_off(&mut self) {
        self.mode = Mode::None;
        self.intx = None;
        self.intx_unmask = None;
        self.intx_masked = false;
        self.intx_pending = false;
    }

    fn msi_trigger(&mut self, req: SetIrqs) -> Result<(), Errno> {
        let flags = data(req.flags);
        let enabled = matches!(self.mode, Mode::Msi(i) if i == req.index);
        if enabled && req.count == 0 && flags == VFIO_IRQ_SET_DATA_NONE {
            self.mode = Mode::None;
            self.vectors.clear();
            return Ok(());
        }
        if !(enabled || self.mode == Mode::None) {
            return Err(Errno::EINVAL);
        }
        let end = req.start.checked_add(req.count).ok_or(Errno::EINVAL)?;
        if flags == VFIO_IRQ_SET_DATA_EVENTFD {
            if !enabled {
                // `vfio_msi_enable` with `start + count` vectors.
                self.mode = Mode::Msi(req.index);
                self.vectors = (0..end).map(|_| None).collect();
            }
            // `vfio_msi_set_block`: the block must lie within the enabled vectors.
            let Some(block) = self.vectors.get_mut(req.start as usize..end as usize) else {
                return Err(Errno::EINVAL);
            };
            for (slot, fd) in block.iter_mut().zip(req.eventfds) {
                *slot = fd;
            }
            return Ok(());
        }
        if !enabled {
            return Err(Errno::EINVAL);
        }
        for (i, vector) in (req.start..end).enumerate() {
            let fire = flags == VFIO_IRQ_SET_DATA_NONE || req.bools.get(i).is_some_and(|b| *b != 0);
            if fire {
                self.raise(req.index, vector);
            }
        }
        Ok(())
    }
}

/// The data type bits of `flags`.
fn data(flags: u32) -> u32 {
    flags & VFIO_IRQ_SET_DATA_TYPE_MASK
}

/// The first bool of a DATA_BOOL request.
fn first_bool(req: &SetIrqs) -> bool {
    req.bools.first().is_some_and(|b| *b != 0)
}

/// `vfio_pci_set_ctx_trigger_single`: the error and request interrupts, one eventfd each.
/// DATA_NONE with count 1 and DATA_BOOL true signal it (loopback), DATA_NONE with count 0
/// drops it; DATA_EVENTFD sets it, or drops it for -1.
fn trigger_single(slot: &mut Option<OwnedFd>, mut req: SetIrqs) -> Result<(), Errno> {
    if req.start != 0 || req.count > 1 {
        return Err(Errno::EINVAL);
    }
    match data(req.flags) {
        VFIO_IRQ_SET_DATA_NONE => {
            let fd = slot.as_ref().ok_or(Errno::EINVAL)?;
            if req.count == 0 {
                *slot = None;
            } else {
                signal(fd.as_fd());
            }
        }
        VFIO_IRQ_SET_DATA_BOOL => {
            if req.count == 0 {
                return Err(Errno::EINVAL);
            }
            if let (true, Some(fd)) = (first_bool(&req), slot.as_ref()) {
                signal(fd.as_fd());
            }
        }
        _ => {
            if req.count == 0 {
                return Err(Errno::EINVAL);
            }
            *slot = req.eventfds.pop().flatten();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use nix::sys::eventfd::{EfdFlags, EventFd};

    fn efd() -> EventFd {
        EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap()
    }

    fn req(index: u32, flags: u32, start: u32, count: u32) -> SetIrqs {
        SetIrqs {
            flags,
            index,
            start,
            count,
            bools: vec![1; count as usize],
            eventfds: Vec::new(),
        }
    }

    fn with_fds(mut r: SetIrqs, fds: &[&EventFd]) -> SetIrqs {
        r.eventfds = fds
            .iter()
            .map(|e| Some(e.as_fd().try_clone_to_owned().unwrap()))
            .collect();
        r
    }

    const EVENTFD_TRIGGER: u32 = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
    const NONE_TRIGGER: u32 = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER;

    #[test]
    fn intx_is_automasked_when_it_fires_and_fires_again_on_unmask() {
        let mut irqs = Interrupts::default();
        let e = efd();
        irqs.set(with_fds(req(INTX_IRQ_INDEX, EVENTFD_TRIGGER, 0, 1), &[&e]))
            .unwrap();
        assert!(irqs.raise(INTX_IRQ_INDEX, 0));
        assert!(!irqs.raise(INTX_IRQ_INDEX, 0), "automasked");
        assert_eq!(e.read().unwrap(), 1);
        irqs.set(req(
            INTX_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK,
            0,
            1,
        ))
        .unwrap();
        assert_eq!(e.read().unwrap(), 1, "the pending level fired on unmask");
    }

    #[test]
    fn intx_msi_and_msix_are_mutually_exclusive() {
        let mut irqs = Interrupts::default();
        let e = efd();
        irqs.set(with_fds(
            req(MSIX_IRQ_INDEX, EVENTFD_TRIGGER, 0, 2),
            &[&e, &e],
        ))
        .unwrap();
        assert_eq!(
            irqs.set(with_fds(req(INTX_IRQ_INDEX, EVENTFD_TRIGGER, 0, 1), &[&e])),
            Err(Errno::EINVAL)
        );
        irqs.set(req(MSIX_IRQ_INDEX, NONE_TRIGGER, 0, 0)).unwrap();
        irqs.set(with_fds(req(INTX_IRQ_INDEX, EVENTFD_TRIGGER, 0, 1), &[&e]))
            .unwrap();
    }

    #[test]
    fn msix_masking_is_enotty_and_a_block_past_the_enabled_vectors_is_einval() {
        let mut irqs = Interrupts::default();
        let e = efd();
        irqs.set(with_fds(
            req(MSIX_IRQ_INDEX, EVENTFD_TRIGGER, 0, 2),
            &[&e, &e],
        ))
        .unwrap();
        assert_eq!(
            irqs.set(req(
                MSIX_IRQ_INDEX,
                VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK,
                0,
                1
            )),
            Err(Errno::ENOTTY)
        );
        assert_eq!(
            irqs.set(with_fds(
                req(MSIX_IRQ_INDEX, EVENTFD_TRIGGER, 1, 2),
                &[&e, &e]
            )),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn request_interrupt_takes_one_eventfd_and_loops_back() {
        let mut irqs = Interrupts::default();
        let e = efd();
        assert_eq!(
            irqs.set(req(REQ_IRQ_INDEX, NONE_TRIGGER, 0, 1)),
            Err(Errno::EINVAL),
            "no eventfd to signal yet"
        );
        irqs.set(with_fds(req(REQ_IRQ_INDEX, EVENTFD_TRIGGER, 0, 1), &[&e]))
            .unwrap();
        irqs.set(req(REQ_IRQ_INDEX, NONE_TRIGGER, 0, 1)).unwrap();
        assert_eq!(e.read().unwrap(), 1);
        assert!(irqs.raise(REQ_IRQ_INDEX, 0));
        irqs.set(req(REQ_IRQ_INDEX, NONE_TRIGGER, 0, 0)).unwrap();
        assert!(!irqs.has_request());
    }
}
