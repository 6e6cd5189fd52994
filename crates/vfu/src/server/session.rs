//! One client's session: receive each message, answer it, keep per-client state (agreed
//! capabilities, DMA regions) until the client goes. REGION_READ, the hot path of every BAR read,
//! is answered here without allocating; everything else goes through [`Session::handle`] in
//! `dispatch.rs`.

use tracing::{debug, warn};

use super::{ServerConfig, SessionEnd};
use crate::device::{Device, FileSpan};
use crate::dma::{DmaHandle, DmaTable};
use crate::errno::Errno;
use crate::error::Error;
use crate::transport::{Frame, Transport, TransportError};
use crate::wire::{self, cmd, Caps, Command, Header, RegionAccess};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Per-client state.
pub(super) struct Session {
    /// The capabilities agreed in VERSION; `None` until then.
    pub(super) caps: Option<Caps>,
    /// The client's DMA regions (shared with the device through a handle).
    pub(super) dma: DmaHandle,
    pub(super) config: ServerConfig,
    /// Reused buffer for REGION_READ data.
    scratch: Vec<u8>,
}

/// What to send back for one command.
pub(super) enum Reply {
    /// Payload parts (and fds).
    Ok(Vec<u8>, Option<OwnedFd>),
    /// Error reply.
    Err(Errno),
}

impl Session {
    pub(super) fn new(config: &ServerConfig) -> Self {
        Self {
            caps: None,
            dma: DmaHandle::new(DmaTable::new(config.max_dma_maps)),
            config: config.clone(),
            scratch: Vec::new(),
        }
    }

    pub(super) fn max_xfer(&self) -> u32 {
        self.caps
            .map_or(self.config.max_data_xfer_size, |c| c.max_data_xfer_size)
    }

    fn max_msg(&self) -> usize {
        wire::max_message_size(self.max_xfer())
    }

    pub(super) fn run<D: Device, T: Transport>(
        &mut self,
        device: &mut D,
        t: &mut T,
    ) -> Result<SessionEnd, Error> {
        loop {
            let frame = match t.recv(self.max_msg()) {
                Ok(f) => f,
                Err(TransportError::Closed) => return Ok(SessionEnd::Closed),
                Err(TransportError::Oversized {
                    header,
                    size,
                    limit,
                }) => {
                    warn!(cmd = header.cmd, size, limit, "oversized message discarded");
                    if !header.no_reply() {
                        send_error(t, &header, Errno::E2BIG)?;
                    }
                    continue;
                }
                Err(TransportError::BadSize(size)) => {
                    warn!(size, "message size below a header: closing the connection");
                    return Ok(SessionEnd::Desync);
                }
                Err(TransportError::TooManyFds) => {
                    warn!("too many fds in one message: closing the connection");
                    return Ok(SessionEnd::Desync);
                }
                Err(TransportError::Stalled(after)) => {
                    warn!(
                        ?after,
                        "client stopped in the middle of a message: dropping it"
                    );
                    return Ok(SessionEnd::Stalled);
                }
                Err(e) => return Err(e.into()),
            };
            let header = frame.header;
            if self.is_region_read_fast_path(&header, &frame) {
                self.region_read(device, t, &frame)?;
                continue;
            }
            let reply = self.handle(device, t, frame);
            match reply {
                Reply::Ok(payload, fd) => {
                    if header.no_reply() {
                        continue;
                    }
                    let reply_hdr = header.reply(payload.len());
                    let fds: Vec<BorrowedFd<'_>> = fd.iter().map(|f| f.as_fd()).collect();
                    t.send(&reply_hdr, &[&payload], &fds)?;
                }
                Reply::Err(errno) => {
                    debug!(cmd = header.cmd, %errno, "error reply");
                    if !header.no_reply() {
                        send_error(t, &header, errno)?;
                    }
                }
            }
        }
    }

    /// REGION_READ without intermediate allocations: the hot path of every BAR read.
    fn is_region_read_fast_path(&self, h: &Header, f: &Frame) -> bool {
        h.cmd == cmd::REGION_READ
            && h.msg_type() == wire::FLAG_TYPE_COMMAND
            && self.caps.is_some()
            && f.fds.is_empty()
            && !h.no_reply()
    }

    fn region_read<D: Device, T: Transport>(
        &mut self,
        device: &mut D,
        t: &mut T,
        frame: &Frame,
    ) -> Result<(), Error> {
        let header = frame.header;
        let decoded = wire::decode_command(&header, t.payload(frame), self.max_xfer());
        let access = match decoded {
            Ok(Command::RegionRead(a)) => a,
            Ok(_) => return send_error(t, &header, Errno::EINVAL),
            Err(e) => return send_error(t, &header, e.errno()),
        };
        if access.region >= device.device_info().num_regions {
            return send_error(t, &header, Errno::EINVAL);
        }
        let count = access.count as usize;
        if count >= SPAN_READ_MIN {
            match device.region_read_span(access.region, access.offset, count) {
                Ok(Some(span)) => {
                    let n = (span.len + span.ones).min(count);
                    let span = clip_span(span, n);
                    let fixed = RegionAccess {
                        count: n as u32,
                        ..access
                    }
                    .to_bytes();
                    let reply = header.reply(RegionAccess::SIZE + n);
                    return t.send_span(&reply, &[&fixed], &span).map_err(Error::from);
                }
                Ok(None) => {}
                Err(errno) => return send_error(t, &header, errno),
            }
        }
        if self.scratch.len() < count {
            self.scratch.resize(count, 0);
        }
        let buf = &mut self.scratch[..count];
        match device.region_read(access.region, access.offset, buf) {
            Ok(n) => {
                let n = n.min(count);
                let fixed = RegionAccess {
                    count: n as u32,
                    ..access
                }
                .to_bytes();
                let reply = header.reply(RegionAccess::SIZE + n);
                t.send(&reply, &[&fixed, &self.scratch[..n]], &[])
                    .map_err(Error::from)
            }
            Err(errno) => send_error(t, &header, errno),
        }
    }
}

/// Reads at least this large go from the device's file straight to the socket when the device
/// can name them as a file span; smaller ones are cheaper as one copy and one send.
const SPAN_READ_MIN: usize = 16 * 1024;

/// A span cut to `n` bytes in all (a device never offers more than asked; this keeps the reply
/// honest if one did).
fn clip_span(span: FileSpan<'_>, n: usize) -> FileSpan<'_> {
    let len = span.len.min(n);
    FileSpan {
        len,
        ones: n - len,
        ..span
    }
}

pub(super) fn send_error<T: Transport>(t: &T, header: &Header, errno: Errno) -> Result<(), Error> {
    t.send(&header.error_reply(errno), &[], &[])
        .map_err(Error::from)
}
