//! The server: accepts one client at a time and runs a session that decodes each message,
//! validates it, dispatches it to the [`Device`] and answers it.

mod accept;
mod shutdown;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::time::Duration;

use tracing::{debug, info, warn};
use vfio_bindings::bindings::vfio::{
    vfio_irq_info, vfio_region_info, vfio_region_sparse_mmap_area, VFIO_IRQ_SET_ACTION_TYPE_MASK,
    VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_IRQ_SET_DATA_TYPE_MASK, VFIO_REGION_INFO_FLAG_CAPS,
};

use crate::device::{Device, SetIrqs};
use crate::dma::{DmaHandle, DmaTable};
use crate::errno::Errno;
use crate::error::Error;
pub use crate::listen::bind_socket;
pub use accept::Peer;
pub use shutdown::Shutdown;

use crate::transport::{Frame, Transport, TransportError, UnixTransport};
use crate::wire::{
    self, cmd, Caps, Command, DeviceInfoMsg, Header, RegionAccess, Version, HEADER_SIZE,
    MAX_FIXED_PAYLOAD, REGION_INFO_SIZE,
};
use accept::{Acceptor, Seat};

/// The protocol version we speak.
pub const VERSION_MAJOR: u16 = 0;
/// Our highest minor version.
pub const VERSION_MINOR: u16 = 2;

/// Server limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest data transfer we accept (the client may lower it).
    pub max_data_xfer_size: u32,
    /// Most DMA regions per client.
    pub max_dma_maps: u32,
    /// Most fds we accept in one message.
    pub max_msg_fds: u32,
    /// When set, only these uids may connect (SO_PEERCRED).
    pub allow_uids: Option<Vec<u32>>,
    /// A client whose message stays incomplete this long after its first bytes is dropped (it
    /// would hold the device forever). Waiting between messages is never limited.
    pub stall_timeout: Duration,
}

/// Default [`ServerConfig::stall_timeout`]: real clients send whole messages at once.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_data_xfer_size: wire::DEFAULT_MAX_DATA_XFER_SIZE,
            max_dma_maps: wire::DEFAULT_MAX_DMA_MAPS,
            max_msg_fds: 16,
            allow_uids: None,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }
}

/// A vfio-user server for one device.
#[derive(Debug)]
pub struct Server<D: Device> {
    device: D,
    config: ServerConfig,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The client closed the connection.
    Closed,
    /// The stream could not be kept in sync (e.g. msg_size below a header), so we closed it.
    Desync,
    /// Shutdown was requested.
    Shutdown,
    /// The client stopped in the middle of a message for longer than the stall timeout.
    Stalled,
}

impl<D: Device> Server<D> {
    /// A server for `device`.
    pub fn new(device: D, config: ServerConfig) -> Self {
        Self { device, config }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Serves clients one after another until `shutdown` is triggered. Accepting runs on a
    /// thread of its own, so a client that connects while another holds the device is answered
    /// at once (EBUSY) instead of waiting unseen.
    pub fn serve(&mut self, listener: UnixListener, shutdown: &Shutdown) -> Result<(), Error> {
        listener.set_nonblocking(true)?;
        let seat = Seat::new()?;
        let (handoff, clients) = mpsc::sync_channel(0);
        let allow_uids = self.config.allow_uids.clone();
        std::thread::scope(|scope| {
            let acceptor =
                Acceptor::new(&listener, shutdown, allow_uids.as_deref(), &seat, handoff);
            let accepting = scope.spawn(move || acceptor.run());
            // Ends when the acceptor stops (shutdown or failure) and drops its sender.
            while let Ok(client) = clients.recv() {
                self.serve_client(client, shutdown);
                seat.release();
            }
            accepting.join().unwrap_or_else(|_| {
                Err(Error::Io(std::io::Error::other(
                    "the accept thread panicked",
                )))
            })
        })
    }

    fn serve_client(&mut self, client: accept::Client, shutdown: &Shutdown) {
        let accept::Client { stream, peer, conn } = client;
        if let Err(e) = stream.set_nonblocking(false) {
            warn!(%peer, "cannot serve a client: {e}");
            return;
        }
        let Some(registration) = shutdown.register(conn) else {
            return;
        };
        info!(%peer, "client connected");
        let mut transport = UnixTransport::new(stream);
        transport.set_stall_timeout(Some(self.config.stall_timeout));
        let end = self.serve_connection(transport);
        drop(registration);
        match end {
            Ok(how) => info!(%peer, ?how, "client disconnected"),
            Err(e) => warn!(%peer, "session ended: {e}"),
        }
    }

    /// Runs one session to its end. Per-client state (DMA, eventfds) is dropped at the end;
    /// device state is kept.
    pub fn serve_connection<T: Transport>(
        &mut self,
        mut transport: T,
    ) -> Result<SessionEnd, Error> {
        let mut session = Session::new(&self.config);
        self.device.dma_attached(session.dma.clone());
        let end = session.run(&mut self.device, &mut transport);
        session.dma.with(DmaTable::clear);
        session.dma.set_channel(None);
        self.device.client_detached();
        end
    }
}

/// Per-client state.
struct Session {
    caps: Option<Caps>,
    dma: DmaHandle,
    config: ServerConfig,
    /// Reused buffer for REGION_READ data.
    scratch: Vec<u8>,
}

/// What to send back for one command.
enum Reply {
    /// Payload parts (and fds).
    Ok(Vec<u8>, Option<OwnedFd>),
    /// Error reply.
    Err(Errno),
}

impl Session {
    fn new(config: &ServerConfig) -> Self {
        Self {
            caps: None,
            dma: DmaHandle::new(DmaTable::new(config.max_dma_maps)),
            config: config.clone(),
            scratch: Vec::new(),
        }
    }

    fn max_xfer(&self) -> u32 {
        self.caps
            .map_or(self.config.max_data_xfer_size, |c| c.max_data_xfer_size)
    }

    fn max_msg(&self) -> usize {
        HEADER_SIZE + self.max_xfer() as usize + MAX_FIXED_PAYLOAD as usize
    }

    fn run<D: Device, T: Transport>(
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

    fn handle<D: Device, T: Transport>(&mut self, device: &mut D, t: &T, frame: Frame) -> Reply {
        let header = frame.header;
        if header.msg_type() != wire::FLAG_TYPE_COMMAND {
            return Reply::Err(Errno::EINVAL);
        }
        let payload = t.payload(&frame);
        let command = match wire::decode_command(&header, payload, self.max_xfer()) {
            Ok(c) => c,
            Err(e) => {
                debug!(cmd = header.cmd, "undecodable message: {e}");
                return Reply::Err(e.errno());
            }
        };
        let takes_fds = matches!(command, Command::DmaMap(_) | Command::SetIrqs(..));
        if !frame.fds.is_empty() && !takes_fds {
            return Reply::Err(Errno::EINVAL);
        }
        if frame.fds.len() > self.config.max_msg_fds as usize {
            return Reply::Err(Errno::EINVAL);
        }
        let Frame { fds, .. } = frame;
        match command {
            Command::Version(v) => self.version(&v),
            _ if self.caps.is_none() => Reply::Err(Errno::EINVAL),
            Command::DmaMap(m) => {
                if fds.len() > 1 {
                    return Reply::Err(Errno::EINVAL);
                }
                let fd = fds.into_iter().next();
                match self.dma.with(|t| t.add(&m, fd)) {
                    Ok(()) => {
                        device.dma_mapped(m.address, m.size);
                        Reply::Ok(Vec::new(), None)
                    }
                    Err(e) => Reply::Err(e),
                }
            }
            Command::DmaUnmap(u) => match self.dma.with(|t| t.remove(u.address, u.size)) {
                Ok(()) => {
                    device.dma_unmapped(u.address, u.size);
                    Reply::Ok(u.encode(), None)
                }
                Err(e) => Reply::Err(e),
            },
            Command::DeviceGetInfo(req) => {
                if (req.argsz as usize) < DeviceInfoMsg::SIZE {
                    return Reply::Err(Errno::EINVAL);
                }
                let info = device.device_info();
                let msg = DeviceInfoMsg {
                    argsz: DeviceInfoMsg::SIZE as u32,
                    flags: info.flags,
                    num_regions: info.num_regions,
                    num_irqs: info.num_irqs,
                };
                Reply::Ok(msg.encode(), None)
            }
            Command::RegionInfo(req) => region_info(device, &req),
            Command::RegionIoFds(req) => {
                if req.index >= device.device_info().num_regions {
                    Reply::Err(Errno::EINVAL)
                } else {
                    // No region offers ioeventfds (nvgrace upstream answers ENOTTY too).
                    Reply::Err(Errno::ENOTTY)
                }
            }
            Command::IrqInfo(req) => {
                if (req.argsz as usize) < wire::IRQ_INFO_SIZE
                    || req.index >= device.device_info().num_irqs
                {
                    return Reply::Err(Errno::EINVAL);
                }
                match device.irq_info(req.index) {
                    Ok(i) => Reply::Ok(
                        wire::encode_irq_info(&vfio_irq_info {
                            argsz: wire::IRQ_INFO_SIZE as u32,
                            flags: i.flags,
                            index: req.index,
                            count: i.count,
                        }),
                        None,
                    ),
                    Err(e) => Reply::Err(e),
                }
            }
            Command::SetIrqs(set, data) => match validate_set_irqs(device, &set, data, fds) {
                Ok(req) => match device.set_irqs(req) {
                    Ok(()) => Reply::Ok(Vec::new(), None),
                    Err(e) => Reply::Err(e),
                },
                Err(e) => Reply::Err(e),
            },
            Command::RegionRead(a) => {
                // Reached only for No_reply reads or before the fast path applies.
                if a.region >= device.device_info().num_regions {
                    return Reply::Err(Errno::EINVAL);
                }
                let mut buf = vec![0u8; a.count as usize];
                match device.region_read(a.region, a.offset, &mut buf) {
                    Ok(n) => {
                        let n = n.min(buf.len());
                        let mut out = Vec::with_capacity(RegionAccess::SIZE + n);
                        RegionAccess {
                            count: n as u32,
                            ..a
                        }
                        .encode_into(&mut out);
                        out.extend_from_slice(&buf[..n]);
                        Reply::Ok(out, None)
                    }
                    Err(e) => Reply::Err(e),
                }
            }
            Command::RegionWrite(a, data) => {
                if a.region >= device.device_info().num_regions {
                    return Reply::Err(Errno::EINVAL);
                }
                match device.region_write(a.region, a.offset, data) {
                    Ok(n) => {
                        let mut out = Vec::with_capacity(RegionAccess::SIZE);
                        RegionAccess {
                            count: n.min(data.len()) as u32,
                            ..a
                        }
                        .encode_into(&mut out);
                        Reply::Ok(out, None)
                    }
                    Err(e) => Reply::Err(e),
                }
            }
            Command::Reset => match device.reset() {
                Ok(()) => Reply::Ok(Vec::new(), None),
                Err(e) => Reply::Err(e),
            },
            Command::WriteMulti(writes) => {
                if !self.caps.is_some_and(|c| c.write_multiple) {
                    return Reply::Err(Errno::EINVAL);
                }
                let regions = device.device_info().num_regions;
                let mut done = 0u64;
                for w in &writes {
                    if w.region >= regions {
                        return Reply::Err(Errno::EINVAL);
                    }
                    if let Err(e) =
                        device.region_write(w.region, w.offset, &w.data[..w.count as usize])
                    {
                        return Reply::Err(e);
                    }
                    done += 1;
                }
                Reply::Ok(done.to_ne_bytes().to_vec(), None)
            }
            Command::Feature(f, data) => match device.device_feature(f.flags, data) {
                Ok(out) => {
                    let total = 8 + out.len();
                    let mut p = Vec::with_capacity(total);
                    p.extend_from_slice(&(total as u32).to_ne_bytes());
                    p.extend_from_slice(&f.flags.to_ne_bytes());
                    if (f.argsz as usize) >= total {
                        p.extend_from_slice(&out);
                    }
                    Reply::Ok(p, None)
                }
                Err(e) => Reply::Err(e),
            },
            Command::MigDataRead(m) => match device.mig_data_read(m.size) {
                Ok(data) => {
                    let data = &data[..data.len().min(m.size as usize)];
                    let mut p = Vec::with_capacity(8 + data.len());
                    p.extend_from_slice(&((8 + data.len()) as u32).to_ne_bytes());
                    p.extend_from_slice(&(data.len() as u32).to_ne_bytes());
                    p.extend_from_slice(data);
                    Reply::Ok(p, None)
                }
                Err(e) => Reply::Err(e),
            },
            Command::MigDataWrite(_, data) => match device.mig_data_write(data) {
                Ok(()) => Reply::Ok(Vec::new(), None),
                Err(e) => Reply::Err(e),
            },
        }
    }

    fn version(&mut self, v: &Version) -> Reply {
        if self.caps.is_some() {
            return Reply::Err(Errno::EINVAL);
        }
        if v.major != VERSION_MAJOR {
            return Reply::Err(Errno::ENOTSUP);
        }
        let theirs = match v.caps() {
            Ok(c) => c,
            Err(e) => {
                debug!("bad VERSION capabilities: {e}");
                return Reply::Err(Errno::EINVAL);
            }
        };
        let mut caps = Caps {
            max_msg_fds: self.config.max_msg_fds,
            max_data_xfer_size: theirs
                .max_data_xfer_size
                .min(self.config.max_data_xfer_size)
                .max(8),
            max_dma_maps: self.config.max_dma_maps,
            pgsizes: 4096,
            write_multiple: theirs.write_multiple,
            twin_socket: None,
        };
        // Twin-socket mode, when the client offers it: our DMA_READ/DMA_WRITE requests go on a
        // socket of their own, so they never interleave with the client's commands.
        let mut client_end = None;
        if theirs.twin_socket.is_some() {
            match UnixStream::pair() {
                Ok((ours, theirs_end)) => {
                    self.dma.set_channel(Some(crate::dma::DmaChannel::new(
                        ours,
                        caps.max_data_xfer_size,
                    )));
                    caps.twin_socket = Some(0);
                    client_end = Some(OwnedFd::from(theirs_end));
                }
                Err(e) => warn!("cannot create the twin socket, continuing without: {e}"),
            }
        }
        self.caps = Some(caps);
        let reply = Version {
            major: VERSION_MAJOR,
            minor: v.minor.min(VERSION_MINOR),
            json: Version::caps_json(&caps),
        };
        Reply::Ok(reply.encode(), client_end)
    }
}

/// Reads at least this large go from the device's file straight to the socket when the device
/// can name them as a file span; smaller ones are cheaper as one copy and one send.
const SPAN_READ_MIN: usize = 16 * 1024;

/// A span cut to `n` bytes in all (a device never offers more than asked; this keeps the reply
/// honest if one did).
fn clip_span(span: crate::device::FileSpan<'_>, n: usize) -> crate::device::FileSpan<'_> {
    let len = span.len.min(n);
    crate::device::FileSpan {
        len,
        ones: n - len,
        ..span
    }
}

fn send_error<T: Transport>(t: &T, header: &Header, errno: Errno) -> Result<(), Error> {
    t.send(&header.error_reply(errno), &[], &[])
        .map_err(Error::from)
}

fn region_info<D: Device>(device: &D, req: &vfio_region_info) -> Reply {
    if (req.argsz as usize) < REGION_INFO_SIZE || req.index >= device.device_info().num_regions {
        return Reply::Err(Errno::EINVAL);
    }
    let info = match device.region_info(req.index) {
        Ok(i) => i,
        Err(e) => return Reply::Err(e),
    };
    let areas: Vec<vfio_region_sparse_mmap_area> = info
        .sparse_areas
        .iter()
        .map(|a| vfio_region_sparse_mmap_area {
            offset: a.offset,
            size: a.size,
        })
        .collect();
    let cap_len = if areas.is_empty() {
        0
    } else {
        wire::sparse_cap_size(areas.len()).unwrap_or(usize::MAX)
    };
    let needed = REGION_INFO_SIZE.saturating_add(cap_len);
    let fits = req.argsz as usize >= needed;
    let mut flags = info.flags;
    // CAPS only when the chain is in this reply: QEMU rejects CAPS with cap_offset 0 (the
    // kernel's way of saying "ask again with a larger argsz"); argsz alone says it here.
    if cap_len > 0 && fits {
        flags |= VFIO_REGION_INFO_FLAG_CAPS;
    }
    let out_info = vfio_region_info {
        argsz: u32::try_from(needed).unwrap_or(u32::MAX),
        flags,
        index: req.index,
        cap_offset: if cap_len > 0 && fits {
            REGION_INFO_SIZE as u32
        } else {
            0
        },
        size: info.size,
        offset: info.fd_offset,
    };
    let mut payload = Vec::with_capacity(needed);
    wire::encode_region_info(&out_info, &mut payload);
    if cap_len > 0 && fits {
        wire::encode_sparse_cap(&areas, &mut payload);
    }
    let fd = match info.fd.map(|f| f.try_clone_to_owned()) {
        Some(Ok(fd)) => Some(fd),
        Some(Err(e)) => {
            warn!("cannot duplicate the region fd: {e}");
            return Reply::Err(Errno::EIO);
        }
        None => None,
    };
    Reply::Ok(payload, fd)
}

/// Checks a SET_IRQS request against the device's IRQ info before the device sees it.
fn validate_set_irqs<D: Device>(
    device: &D,
    set: &vfio_bindings::bindings::vfio::vfio_irq_set,
    data: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<SetIrqs, Errno> {
    if (set.argsz as usize) < wire::IRQ_SET_SIZE || set.index >= device.device_info().num_irqs {
        return Err(Errno::EINVAL);
    }
    let dtype = set.flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
    let action = set.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
    if dtype.count_ones() != 1
        || action.count_ones() != 1
        || set.flags & !(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK) != 0
    {
        return Err(Errno::EINVAL);
    }
    let info = device.irq_info(set.index)?;
    if set.count == 0 {
        if dtype != VFIO_IRQ_SET_DATA_NONE || set.start != 0 || !fds.is_empty() {
            return Err(Errno::EINVAL);
        }
    } else {
        let end = set.start.checked_add(set.count).ok_or(Errno::EINVAL)?;
        if end > info.count {
            return Err(Errno::EINVAL);
        }
    }
    let mut bools = Vec::new();
    let mut eventfds = Vec::new();
    match dtype {
        VFIO_IRQ_SET_DATA_NONE => {
            if !fds.is_empty() {
                return Err(Errno::EINVAL);
            }
        }
        VFIO_IRQ_SET_DATA_BOOL => {
            let n = set.count as usize;
            let b = data.get(..n).ok_or(Errno::EINVAL)?;
            if !fds.is_empty() {
                return Err(Errno::EINVAL);
            }
            bools = b.to_vec();
        }
        VFIO_IRQ_SET_DATA_EVENTFD => {
            if fds.is_empty() {
                eventfds = (0..set.count).map(|_| None).collect();
            } else if fds.len() == set.count as usize {
                for fd in &fds {
                    if !is_eventfd(fd) {
                        return Err(Errno::EINVAL);
                    }
                }
                eventfds = fds.into_iter().map(Some).collect();
            } else {
                return Err(Errno::EINVAL);
            }
        }
        _ => return Err(Errno::EINVAL),
    }
    Ok(SetIrqs {
        flags: set.flags,
        index: set.index,
        start: set.start,
        count: set.count,
        bools,
        eventfds,
    })
}

/// True when `fd` is an eventfd (a pipe or memfd where an eventfd belongs is refused).
fn is_eventfd(fd: &OwnedFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.to_string_lossy() == "anon_inode:[eventfd]")
        .unwrap_or(false)
}
