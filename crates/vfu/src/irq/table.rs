//! Eventfds and mask state per IRQ index and vector, as DEVICE_SET_IRQS configures them: a
//! device for tests embeds one.

use std::os::fd::{AsFd, OwnedFd};

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_TYPE_MASK,
    VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_TYPE_MASK,
};

use super::signal;
use crate::errno::Errno;
use crate::seam::SetIrqs;

/// One vector's state.
#[derive(Debug, Default)]
struct Vector {
    trigger: Option<OwnedFd>,
    masked: bool,
    /// Triggered while masked; delivered on unmask.
    pending: bool,
}

/// Eventfds and mask state per IRQ index and vector.
#[derive(Debug, Default)]
pub struct IrqTable {
    indices: Vec<Vec<Vector>>,
}

impl IrqTable {
    /// A table with `counts[i]` vectors at index `i`.
    pub fn new(counts: &[u32]) -> Self {
        Self {
            indices: counts
                .iter()
                .map(|&n| (0..n).map(|_| Vector::default()).collect())
                .collect(),
        }
    }

    /// Applies a SET_IRQS request (already range-checked by the server).
    pub fn apply(&mut self, req: SetIrqs) -> Result<(), Errno> {
        let index = usize::try_from(req.index).map_err(|_| Errno::EINVAL)?;
        let vectors = self.indices.get_mut(index).ok_or(Errno::EINVAL)?;
        let data = req.flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
        let action = req.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
        if req.count == 0 {
            if data == VFIO_IRQ_SET_DATA_NONE && action == VFIO_IRQ_SET_ACTION_TRIGGER {
                vectors.iter_mut().for_each(|v| *v = Vector::default());
                return Ok(());
            }
            return Err(Errno::EINVAL);
        }
        let start = req.start as usize;
        let end = start.checked_add(req.count as usize).ok_or(Errno::EINVAL)?;
        let slots = vectors.get_mut(start..end).ok_or(Errno::EINVAL)?;
        let selected = |i: usize| -> bool {
            match data {
                VFIO_IRQ_SET_DATA_BOOL => req.bools.get(i).is_some_and(|b| *b != 0),
                _ => true,
            }
        };
        match (data, action) {
            (VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_ACTION_TRIGGER) => {
                let mut fds = req.eventfds.into_iter();
                for slot in slots.iter_mut() {
                    slot.trigger = fds.next().flatten();
                }
            }
            (VFIO_IRQ_SET_DATA_EVENTFD, _) => {
                // Mask/unmask notification eventfds are accepted and not used: the device
                // model never masks on its own.
            }
            (_, VFIO_IRQ_SET_ACTION_TRIGGER) => {
                for (i, slot) in slots.iter_mut().enumerate() {
                    if selected(i) {
                        fire(slot);
                    }
                }
            }
            (_, VFIO_IRQ_SET_ACTION_MASK) => {
                for (i, slot) in slots.iter_mut().enumerate() {
                    if selected(i) {
                        slot.masked = true;
                    }
                }
            }
            (_, VFIO_IRQ_SET_ACTION_UNMASK) => {
                for (i, slot) in slots.iter_mut().enumerate() {
                    if selected(i) {
                        slot.masked = false;
                        if std::mem::take(&mut slot.pending) {
                            fire(slot);
                        }
                    }
                }
            }
            _ => return Err(Errno::EINVAL),
        }
        Ok(())
    }

    /// Raises `vector` of `index`: writes its eventfd, or remembers it while masked.
    /// Returns whether an eventfd was signalled.
    pub fn trigger(&mut self, index: u32, vector: u32) -> Result<bool, Errno> {
        let slot = self
            .indices
            .get_mut(index as usize)
            .and_then(|v| v.get_mut(vector as usize))
            .ok_or(Errno::EINVAL)?;
        Ok(fire(slot))
    }

    /// True when `vector` of `index` has an eventfd.
    pub fn is_assigned(&self, index: u32, vector: u32) -> bool {
        self.indices
            .get(index as usize)
            .and_then(|v| v.get(vector as usize))
            .is_some_and(|s| s.trigger.is_some())
    }

    /// Drops every eventfd and mask state (client went away).
    pub fn clear(&mut self) {
        for v in self.indices.iter_mut().flatten() {
            *v = Vector::default();
        }
    }
}

fn fire(slot: &mut Vector) -> bool {
    if slot.masked {
        slot.pending = true;
        return false;
    }
    match &slot.trigger {
        Some(fd) => signal(fd.as_fd()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use nix::sys::eventfd::{EfdFlags, EventFd};

    fn eventfd_req(index: u32, start: u32, fd: OwnedFd) -> SetIrqs {
        SetIrqs {
            flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            start,
            count: 1,
            bools: Vec::new(),
            eventfds: vec![Some(fd)],
        }
    }

    #[test]
    fn trigger_signals_the_assigned_eventfd() {
        let mut t = IrqTable::new(&[1, 0, 4]);
        let efd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap();
        let dup: OwnedFd = efd.as_fd().try_clone_to_owned().unwrap();
        t.apply(eventfd_req(2, 3, dup)).unwrap();
        assert!(t.trigger(2, 3).unwrap());
        assert_eq!(efd.read().unwrap(), 1);
    }

    #[test]
    fn masked_vector_fires_on_unmask() {
        let mut t = IrqTable::new(&[1]);
        let efd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap();
        t.apply(eventfd_req(0, 0, efd.as_fd().try_clone_to_owned().unwrap()))
            .unwrap();
        let none = |action| SetIrqs {
            flags: VFIO_IRQ_SET_DATA_NONE | action,
            index: 0,
            start: 0,
            count: 1,
            bools: vec![],
            eventfds: vec![],
        };
        t.apply(none(VFIO_IRQ_SET_ACTION_MASK)).unwrap();
        assert!(!t.trigger(0, 0).unwrap());
        t.apply(none(VFIO_IRQ_SET_ACTION_UNMASK)).unwrap();
        assert_eq!(efd.read().unwrap(), 1);
    }

    /// A full blocking eventfd (the client filled it and made it blocking again) is signalled
    /// without waiting: the write is EAGAIN, "already pending".
    #[test]
    fn trigger_on_a_full_blocking_eventfd_returns_at_once() {
        let mut t = IrqTable::new(&[1]);
        let efd = EventFd::from_flags(EfdFlags::empty()).unwrap();
        t.apply(eventfd_req(0, 0, efd.as_fd().try_clone_to_owned().unwrap()))
            .unwrap();
        efd.write(0xffff_ffff_ffff_fffe).unwrap();
        assert!(t.trigger(0, 0).unwrap());
        assert_eq!(efd.read().unwrap(), 0xffff_ffff_ffff_fffe);
    }

    #[test]
    fn count_zero_data_none_disables_index() {
        let mut t = IrqTable::new(&[1]);
        let efd = EventFd::new().unwrap();
        t.apply(eventfd_req(0, 0, efd.as_fd().try_clone_to_owned().unwrap()))
            .unwrap();
        t.apply(SetIrqs {
            flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            index: 0,
            start: 0,
            count: 0,
            bools: vec![],
            eventfds: vec![],
        })
        .unwrap();
        assert!(!t.is_assigned(0, 0));
    }
}
