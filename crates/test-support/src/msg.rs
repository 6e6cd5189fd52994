//! Raw vfio-user messages, built byte by byte so tests can also send what no client would.

use std::os::fd::BorrowedFd;

use vfu::client::Client;
use vfu::wire::{cmd, Header, HEADER_SIZE};

/// `VFIO_IRQ_SET_*` flag bits, named for [`IrqSet::flags`].
pub mod irq_flags {
    pub use vfio_bindings::bindings::vfio::{
        VFIO_IRQ_SET_ACTION_MASK as ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER as ACTION_TRIGGER,
        VFIO_IRQ_SET_ACTION_UNMASK as ACTION_UNMASK, VFIO_IRQ_SET_DATA_BOOL as DATA_BOOL,
        VFIO_IRQ_SET_DATA_EVENTFD as DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE as DATA_NONE,
    };
}

/// A whole message: header (`msg_size` matching the payload, error 0) and payload.
pub fn msg(msg_id: u16, command: u16, flags: u32, payload: &[u8]) -> Vec<u8> {
    let h = Header {
        msg_id,
        cmd: command,
        msg_size: (HEADER_SIZE + payload.len()) as u32,
        flags,
        error: 0,
    };
    let mut v = h.encode().to_vec();
    v.extend_from_slice(payload);
    v
}

/// `bytes` (a message) with its header's `msg_size` overwritten by `size`, e.g. to announce more
/// or less than is sent.
pub fn with_size(mut bytes: Vec<u8>, size: u32) -> Vec<u8> {
    bytes[4..8].copy_from_slice(&size.to_ne_bytes());
    bytes
}

/// A DEVICE_SET_IRQS request (`struct vfio_irq_set` and its bool data), every field named.
#[derive(Debug, Clone, Copy)]
pub struct IrqSet<'a> {
    /// `VFIO_IRQ_SET_DATA_*` | `VFIO_IRQ_SET_ACTION_*` bits (see [`irq_flags`]).
    pub flags: u32,
    /// IRQ index (`vfu::device::MSIX_IRQ_INDEX`, ...).
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
    /// One byte per vector for `DATA_BOOL`; empty otherwise.
    pub data: &'a [u8],
}

impl IrqSet<'_> {
    /// The request payload: argsz (20 + data), flags, index, start, count, then the data.
    pub fn payload(&self) -> Vec<u8> {
        let argsz = 20 + self.data.len() as u32;
        [argsz, self.flags, self.index, self.start, self.count]
            .iter()
            .flat_map(|x| x.to_ne_bytes())
            .chain(self.data.iter().copied())
            .collect()
    }

    /// The whole raw message (msg_id `msg_id`), for sending malformed requests by hand.
    pub fn msg(&self, msg_id: u16) -> Vec<u8> {
        msg(msg_id, cmd::DEVICE_SET_IRQS, 0, &self.payload())
    }

    /// Sends the request through a client with `fds` (one eventfd per vector for `DATA_EVENTFD`).
    pub fn send(&self, c: &mut Client, fds: &[BorrowedFd<'_>]) -> Result<(), vfu::Error> {
        c.set_irqs(
            self.flags, self.index, self.start, self.count, self.data, fds,
        )
    }
}
