//! One client's session: receive each message, answer it, keep per-client state (agreed
//! capabilities, DMA regions) until the client goes. REGION_READ, the hot path of every BAR read,
//! is answered here without allocating; everything else goes through [`Session::handle`] in
//! `dispatch.rs`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::observe::{Event, Fields, Observer, ReplySent, Request};
use super::{Controls, ServerConfig, SessionEnd, Shutdown};
use crate::dma::{DmaHandle, DmaTable};
use crate::errno::Errno;
use crate::error::Error;
use crate::seam::Device;
use crate::seam::FileSpan;
use crate::sync::relock;
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
    observer: Option<Arc<dyn Observer>>,
    controls: Controls,
    /// The server's shutdown, which cuts a reply delay short.
    stop: Option<Shutdown>,
    /// When the message being answered arrived (only while observed).
    started: Option<Instant>,
}

/// What to send back for one command.
pub(super) enum Reply {
    /// Payload parts (and fds).
    Ok(Vec<u8>, Option<OwnedFd>),
    /// Error reply.
    Err(Errno),
}

impl Session {
    pub(super) fn new(
        config: &ServerConfig,
        observer: Option<Arc<dyn Observer>>,
        controls: Controls,
        stop: Option<Shutdown>,
    ) -> Self {
        Self {
            caps: None,
            dma: DmaHandle::new(DmaTable::new(config.max_dma_maps)),
            config: config.clone(),
            scratch: Vec::new(),
            observer,
            controls,
            stop,
            started: None,
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
        device: &Mutex<D>,
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
                    self.observe_request(&header, 0, Fields::default());
                    if header.no_reply() {
                        self.observe_reply(&header, Outcome::unsent(Some(Errno::E2BIG)));
                    } else {
                        self.answer_error(t, &header, Errno::E2BIG)?;
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
            if self.observer.is_some() {
                let fields = Fields::of(&header, t.payload(&frame), self.max_xfer());
                self.observe_request(&header, frame.fds.len(), fields);
            }
            if let Some(by) = self.controls.take_delay() {
                self.wait_out(by);
            }
            if let Some(errno) = self.access_wait(device, &header, t.payload(&frame)) {
                self.send_reply(t, &header, Reply::Err(errno))?;
                continue;
            }
            if self.is_region_read_fast_path(&header, &frame) {
                self.region_read(device, t, &frame)?;
            } else {
                // The lock is let go before the reply is sent: a slow reader holds nothing.
                let reply = self.handle(&mut *relock(device), t, frame);
                self.send_reply(t, &header, reply)?;
            }
        }
    }

    /// Tells the observer a message arrived, and starts its clock.
    fn observe_request(&mut self, header: &Header, fds: usize, fields: Fields) {
        if let Some(o) = &self.observer {
            o.observe(&Event::Request(&Request {
                header: *header,
                fds,
                fields,
            }));
            self.started = Some(Instant::now());
        }
    }

    /// Tells the observer what goes back. Called before the send, so a client that has its
    /// reply and then asks the control plane finds it counted.
    fn observe_reply(&mut self, header: &Header, outcome: Outcome) {
        if let (Some(o), Some(started)) = (&self.observer, self.started.take()) {
            o.observe(&Event::Reply(&ReplySent {
                request: *header,
                size: outcome.size,
                fds: outcome.fds,
                errno: outcome.errno,
                elapsed: started.elapsed(),
                sent: outcome.sent,
            }));
        }
    }

    /// Sends `reply` to `request`, observed.
    fn answer<T: Transport>(
        &mut self,
        t: &T,
        request: &Header,
        reply: &Header,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), Error> {
        self.observe_reply(request, Outcome::sent(reply, fds.len()));
        t.send(reply, parts, fds).map_err(Error::from)
    }

    /// Sends an error reply to `request`, observed.
    fn answer_error<T: Transport>(
        &mut self,
        t: &T,
        request: &Header,
        errno: Errno,
    ) -> Result<(), Error> {
        let reply = request.error_reply(errno);
        self.answer(t, request, &reply, &[], &[])
    }

    /// Sends what [`Session::handle`] decided (nothing for a No_reply message).
    fn send_reply<T: Transport>(
        &mut self,
        t: &T,
        header: &Header,
        reply: Reply,
    ) -> Result<(), Error> {
        match reply {
            Reply::Ok(_, _) if header.no_reply() => {
                self.observe_reply(header, Outcome::unsent(None));
                Ok(())
            }
            Reply::Ok(payload, fd) => {
                let reply_hdr = header.reply(payload.len());
                let fds: Vec<BorrowedFd<'_>> = fd.iter().map(|f| f.as_fd()).collect();
                self.answer(t, header, &reply_hdr, &[&payload], &fds)
            }
            Reply::Err(errno) => {
                debug!(cmd = header.cmd, %errno, "error reply");
                if header.no_reply() {
                    self.observe_reply(header, Outcome::unsent(Some(errno)));
                    return Ok(());
                }
                self.answer_error(t, header, errno)
            }
        }
    }

    /// Runs what a region access must wait for before the device serves it (see
    /// [`Device::access_wait`]), with the device lock let go, cut short when the client is
    /// dropped or the server stops. Returns the errno to answer when the wait failed.
    fn access_wait<D: Device>(
        &self,
        device: &Mutex<D>,
        header: &Header,
        payload: &[u8],
    ) -> Option<Errno> {
        if self.caps.is_none()
            || header.msg_type() != wire::FLAG_TYPE_COMMAND
            || !matches!(header.cmd, cmd::REGION_READ | cmd::REGION_WRITE)
        {
            return None;
        }
        // Both commands start with `offset u64, region u32`; a shorter payload is the
        // decoder's to refuse.
        let offset = u64::from_le_bytes(payload.get(0..8)?.try_into().ok()?);
        let region = u32::from_le_bytes(payload.get(8..12)?.try_into().ok()?);
        let write = header.cmd == cmd::REGION_WRITE;
        let wait = relock(device).access_wait(region, offset, write)?;
        let drops = self.controls.drops();
        let cancelled = || {
            self.controls.drops() != drops || self.stop.as_ref().is_some_and(Shutdown::is_triggered)
        };
        wait.wait(&cancelled).err()
    }

    /// Sleeps out a reply delay, cut short when the client is dropped or the server stops.
    fn wait_out(&self, by: Duration) {
        const SLICE: Duration = Duration::from_millis(20);
        let drops = self.controls.drops();
        let now = Instant::now();
        // A delay too long to add waits until the client is dropped or the server stops.
        let until = now
            .checked_add(by)
            .unwrap_or(now + Duration::from_secs(1 << 32));
        loop {
            let now = Instant::now();
            if now >= until
                || self.controls.drops() != drops
                || self.stop.as_ref().is_some_and(Shutdown::is_triggered)
            {
                return;
            }
            std::thread::sleep(SLICE.min(until - now));
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

    /// Answers a fast-path REGION_READ. The device lock is held only to find the bytes (a
    /// duplicate of the span's fd, or a copy into the scratch buffer), never while sending: a
    /// client that stops reading its replies must not keep the control plane out.
    fn region_read<D: Device, T: Transport>(
        &mut self,
        device: &Mutex<D>,
        t: &mut T,
        frame: &Frame,
    ) -> Result<(), Error> {
        let header = frame.header;
        let decoded = wire::decode_command(&header, t.payload(frame), self.max_xfer());
        let access = match decoded {
            Ok(Command::RegionRead(a)) => a,
            Ok(_) => return self.answer_error(t, &header, Errno::EINVAL),
            Err(e) => return self.answer_error(t, &header, e.errno()),
        };
        let count = access.count as usize;
        if self.scratch.len() < count {
            self.scratch.resize(count, 0);
        }
        let found = {
            let mut device = relock(device);
            find_read(&mut *device, &access, &mut self.scratch[..count])
        };
        let (n, span) = match found {
            Ok(Found::Copied(n)) => (n, None),
            Ok(Found::Span(span)) => ((span.len + span.ones).min(count), Some(span)),
            Err(errno) => return self.answer_error(t, &header, errno),
        };
        let fixed = RegionAccess {
            count: n as u32,
            ..access
        }
        .to_bytes();
        let reply = header.reply(RegionAccess::SIZE + n);
        self.observe_reply(&header, Outcome::sent(&reply, 0));
        match span {
            Some(span) => {
                let span = clip_span(span.borrow(), n);
                t.send_span(&reply, &[&fixed], &span).map_err(Error::from)
            }
            None => t
                .send(&reply, &[&fixed, &self.scratch[..n]], &[])
                .map_err(Error::from),
        }
    }
}

/// Where a fast-path read's bytes are, found under the device lock.
enum Found {
    /// Copied into the buffer: this many bytes.
    Copied(usize),
    /// In a file the server holds a duplicate fd of.
    Span(OwnedSpan),
}

/// A [`FileSpan`] whose fd is our own duplicate, so it outlives the device lock.
struct OwnedSpan {
    fd: OwnedFd,
    offset: u64,
    len: usize,
    ones: usize,
}

impl OwnedSpan {
    fn borrow(&self) -> FileSpan<'_> {
        FileSpan {
            fd: self.fd.as_fd(),
            offset: self.offset,
            len: self.len,
            ones: self.ones,
        }
    }
}

/// The bytes of a REGION_READ (region index checked here): a span of a file for large reads
/// when the device offers one, else a copy into `buf`.
fn find_read<D: Device>(
    device: &mut D,
    access: &RegionAccess,
    buf: &mut [u8],
) -> Result<Found, Errno> {
    if access.region >= device.device_info().num_regions {
        return Err(Errno::EINVAL);
    }
    let count = buf.len();
    if count >= SPAN_READ_MIN {
        if let Some(span) = device.region_read_span(access.region, access.offset, count)? {
            let fd = span.fd.try_clone_to_owned().map_err(|e| {
                warn!("cannot duplicate a region fd for a read: {e}");
                Errno::EIO
            })?;
            return Ok(Found::Span(OwnedSpan {
                fd,
                offset: span.offset,
                len: span.len,
                ones: span.ones,
            }));
        }
    }
    let n = device.region_read(access.region, access.offset, buf)?;
    Ok(Found::Copied(n.min(count)))
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

/// What went back for one message, for the observer.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    size: usize,
    fds: usize,
    errno: Option<Errno>,
    sent: bool,
}

impl Outcome {
    fn sent(reply: &Header, fds: usize) -> Self {
        Self {
            size: reply.msg_size as usize,
            fds,
            errno: reply
                .is_error()
                .then(|| Errno::from_raw(reply.error as i32)),
            sent: true,
        }
    }

    fn unsent(errno: Option<Errno>) -> Self {
        Self {
            size: 0,
            fds: 0,
            errno,
            sent: false,
        }
    }
}
