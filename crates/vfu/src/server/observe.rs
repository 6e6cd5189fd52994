//! What a server reports as it works, for statistics, protocol traces and event streams: an
//! [`Observer`] given to [`Server::with_observer`](super::Server::with_observer) sees every
//! connection, refusal, request and reply. Without one the server does no extra work.

use std::time::Duration;

use crate::errno::Errno;
use crate::error::Error;
use crate::wire::{self, Command, Header};

use super::{Peer, SessionEnd};

/// Receives a server's events. Called on the server's own threads (the session thread and the
/// accept thread), so an implementation must be quick and must never block: hand slow work
/// (files, sockets) to a thread of its own.
pub trait Observer: Send + Sync {
    /// One thing happened.
    fn observe(&self, event: &Event<'_>);
}

/// One thing a server did or saw.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A client got the device.
    Connected(Peer),
    /// A client was turned away.
    Refused(Peer, Refusal),
    /// The client holding the device is gone: how its session ended, or the error that ended it.
    Disconnected(Peer, Result<SessionEnd, &'a Error>),
    /// A message arrived.
    Request(&'a Request),
    /// The answer to it was sent (or, for a No_reply message, would have been).
    Reply(&'a ReplySent),
}

/// Why a client was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Another client holds the device (EBUSY).
    Busy,
    /// Too many clients were already waiting.
    QueueFull,
    /// Its uid is not allowed.
    NotAllowed,
    /// [`Controls::refuse_next`](super::Controls::refuse_next) asked for it.
    Control,
}

impl Refusal {
    /// A short name (`busy`, `queue-full`, `not-allowed`, `control`).
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Busy => "busy",
            Refusal::QueueFull => "queue-full",
            Refusal::NotAllowed => "not-allowed",
            Refusal::Control => "control",
        }
    }
}

/// A message as it arrived.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    /// Its header.
    pub header: Header,
    /// How many fds came with it.
    pub fds: usize,
    /// Its key fields, when it decoded.
    pub fields: Fields,
}

/// The fields of a message worth showing: which region or IRQ, where, how much. Each is `None`
/// where the command has no such field or the message did not decode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fields {
    /// Region index (REGION_READ/WRITE, DEVICE_GET_REGION_INFO/IO_FDS).
    pub region: Option<u32>,
    /// IRQ index (DEVICE_GET_IRQ_INFO, DEVICE_SET_IRQS).
    pub irq: Option<u32>,
    /// Offset in the region, DMA address, or first IRQ vector.
    pub offset: Option<u64>,
    /// Byte count, DMA size, vector count, number of writes, or migration bytes.
    pub count: Option<u64>,
    /// The command's own flags (DMA, SET_IRQS, DEVICE_FEATURE).
    pub flags: Option<u32>,
    /// VERSION: the client's major and minor version.
    pub version: Option<(u16, u16)>,
}

impl Fields {
    /// The fields of a message, decoded with the session's transfer limit.
    pub(crate) fn of(header: &Header, payload: &[u8], max_xfer: u32) -> Self {
        match wire::decode_command(header, payload, max_xfer) {
            Ok(c) => Self::of_command(&c),
            Err(_) => Self::default(),
        }
    }

    fn of_command(c: &Command<'_>) -> Self {
        let none = Self::default();
        match c {
            Command::Version(v) => Self {
                version: Some((v.major, v.minor)),
                ..none
            },
            Command::DmaMap(m) => Self {
                offset: Some(m.address),
                count: Some(m.size),
                flags: Some(m.flags),
                ..none
            },
            Command::DmaUnmap(u) => Self {
                offset: Some(u.address),
                count: Some(u.size),
                flags: Some(u.flags),
                ..none
            },
            Command::DeviceGetInfo(_) | Command::Reset => none,
            Command::RegionInfo(r) => Self {
                region: Some(r.index),
                ..none
            },
            Command::RegionIoFds(r) => Self {
                region: Some(r.index),
                ..none
            },
            Command::IrqInfo(i) => Self {
                irq: Some(i.index),
                ..none
            },
            Command::SetIrqs(s, _) => Self {
                irq: Some(s.index),
                offset: Some(u64::from(s.start)),
                count: Some(u64::from(s.count)),
                flags: Some(s.flags),
                ..none
            },
            Command::RegionRead(a) | Command::RegionWrite(a, _) => Self {
                region: Some(a.region),
                offset: Some(a.offset),
                count: Some(u64::from(a.count)),
                ..none
            },
            Command::WriteMulti(w) => Self {
                count: Some(w.len() as u64),
                ..none
            },
            Command::Feature(f, _) => Self {
                flags: Some(f.flags),
                ..none
            },
            Command::MigDataRead(m) | Command::MigDataWrite(m, _) => Self {
                count: Some(u64::from(m.size)),
                ..none
            },
        }
    }
}

/// The answer to one message.
#[derive(Debug, Clone, Copy)]
pub struct ReplySent {
    /// The request's header (its msg_id and command).
    pub request: Header,
    /// Whole reply size in bytes, header included (0 when nothing was sent).
    pub size: usize,
    /// How many fds went with it.
    pub fds: usize,
    /// The errno of an error reply.
    pub errno: Option<Errno>,
    /// From the request's arrival to the reply's send, reply delays included.
    pub elapsed: Duration,
    /// False for a No_reply message: nothing went back.
    pub sent: bool,
}
