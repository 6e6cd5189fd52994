//! Raw vfio-user messages, built byte by byte so tests can also send what no client would.

use std::os::fd::BorrowedFd;
use vfu::wire::Encode;

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

#[cfg(test)]
mod tests {
    use super::irq_flags::{ACTION_TRIGGER, DATA_BOOL};
    use super::*;
    use vfu::wire::Decode;

    #[test]
    fn irq_set_payload_is_vfio_irq_set_then_data() {
        let set = IrqSet {
            flags: DATA_BOOL | ACTION_TRIGGER,
            index: 2,
            start: 1,
            count: 3,
            data: &[1, 0, 1],
        };
        let want: Vec<u8> = [23u32, 0x22, 2, 1, 3]
            .iter()
            .flat_map(|x| x.to_ne_bytes())
            .chain([1, 0, 1])
            .collect();
        assert_eq!(set.payload(), want);
        let m = set.msg(9);
        assert_eq!(m.len(), HEADER_SIZE + want.len());
        assert_eq!(&m[HEADER_SIZE..], &want[..]);
        let h = Header::decode(&m[..HEADER_SIZE]).unwrap();
        assert_eq!((h.msg_id, h.cmd, h.flags), (9, cmd::DEVICE_SET_IRQS, 0));
        assert_eq!(h.msg_size as usize, m.len());
    }

    #[test]
    fn with_size_overwrites_only_msg_size() {
        let m = msg(1, cmd::DEVICE_RESET, 0, &[]);
        let lied = with_size(m.clone(), 4096);
        assert_eq!(Header::decode(&lied).unwrap().msg_size, 4096);
        assert_eq!((&lied[..4], &lied[8..]), (&m[..4], &m[8..]));
    }
}
