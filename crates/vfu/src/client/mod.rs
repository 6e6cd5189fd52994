//! A vfio-user client, used by tests, benchmarks and `vgrace check`. Every error reply becomes
//! an [`Error::Remote`] carrying the errno; it never waits for a reply that will not come.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use vfio_bindings::bindings::vfio::{vfio_irq_info, vfio_irq_set, vfio_region_info};

mod twin;

use twin::Twin;

use crate::errno::Errno;
use crate::error::Error;
use crate::seam::{IrqInfo, SparseArea};
use crate::transport::{SocketTransport, Transport};
use crate::wire::{
    self, cmd, Caps, DeviceInfoMsg, DmaAccess, DmaMap, DmaUnmap, Feature, Header, MigData,
    RegionAccess, Version, FLAG_NO_REPLY, FLAG_TYPE_COMMAND, HEADER_SIZE, REGION_INFO_SIZE,
};
use crate::wire::{Decode, Encode, SparseAreas};

/// REGION_INFO as the client sees it.
#[derive(Debug)]
pub struct RegionInfoReply {
    /// The `vfio_region_info` (argsz, flags, index, cap_offset, size, offset).
    pub info: vfio_region_info,
    /// Sparse-mmap areas from the capability chain.
    pub sparse_areas: Vec<SparseArea>,
    /// The fd that came with the reply.
    pub fd: Option<OwnedFd>,
}

/// A received reply.
#[derive(Debug)]
pub struct RawReply {
    /// Its header.
    pub header: Header,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Its fds.
    pub fds: Vec<OwnedFd>,
}

/// A connected client.
#[derive(Debug)]
pub struct Client {
    t: SocketTransport,
    next_id: u16,
    caps: Caps,
    /// Twin socket, when negotiated: the server's DMA_READ/DMA_WRITE requests arrive there
    /// and are served from memory this client exported without an fd.
    twin: Option<Twin>,
}

impl Client {
    /// Connects to `path` and negotiates the version.
    pub fn connect(path: &Path) -> Result<Self, Error> {
        let stream = UnixStream::connect(path).map_err(|source| Error::Socket {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_stream(stream)
    }

    /// Negotiates over an already connected stream.
    pub fn from_stream(stream: UnixStream) -> Result<Self, Error> {
        let mut c = Self::unnegotiated(stream);
        c.negotiate(&Version {
            major: 0,
            minor: 2,
            json: Version::caps_json(&Caps {
                max_msg_fds: 16,
                ..Caps::default()
            }),
        })?;
        Ok(c)
    }

    /// A client that has not sent VERSION yet (for tests of the handshake).
    pub fn unnegotiated(stream: UnixStream) -> Self {
        Self {
            t: SocketTransport::new(stream),
            next_id: 0,
            caps: Caps::default(),
            twin: None,
        }
    }

    /// Sends VERSION and records the server's capabilities.
    pub fn negotiate(&mut self, v: &Version) -> Result<Version, Error> {
        let reply = self.request(cmd::VERSION, &[&v.encode()], &[])?;
        let theirs = Version::decode(&reply.payload)?;
        self.caps = theirs.caps()?;
        if let Some(index) = self.caps.twin_socket {
            let fd =
                reply.fds.into_iter().nth(index as usize).ok_or_else(|| {
                    Error::Protocol("twin socket announced without its fd".into())
                })?;
            self.twin = Some(Twin::new(UnixStream::from(fd)));
        }
        Ok(theirs)
    }

    /// Connects over `stream` offering twin-socket mode, so the server can DMA into memory this
    /// client exports without an fd ([`Client::dma_map_local`]).
    pub fn with_twin_socket(stream: UnixStream) -> Result<Self, Error> {
        let mut c = Self::unnegotiated(stream);
        let caps = Caps {
            max_msg_fds: 16,
            twin_socket: Some(0),
            ..Caps::default()
        };
        c.negotiate(&Version {
            major: 0,
            minor: 2,
            json: Version::caps_json(&caps),
        })?;
        if c.twin.is_none() {
            return Err(Error::Protocol(
                "the server did not set up a twin socket".into(),
            ));
        }
        Ok(c)
    }

    /// DMA_MAP of `size` bytes of local memory without an fd: the server reaches it with
    /// DMA_READ/DMA_WRITE on the twin socket, answered while this client waits for replies.
    pub fn dma_map_local(&mut self, flags: u32, address: u64, size: u64) -> Result<(), Error> {
        let len = usize::try_from(size).map_err(|_| Error::Protocol("region too large".into()))?;
        if self.twin.is_none() {
            return Err(Error::Protocol(
                "memory without an fd needs a twin socket (Client::with_twin_socket)".into(),
            ));
        }
        self.dma_map(flags, 0, address, size, None)?;
        if let Some(twin) = self.twin.as_mut() {
            twin.export(address, len);
        }
        Ok(())
    }

    /// The local DMA region starting at `address`.
    pub fn local_dma(&mut self, address: u64) -> Option<&mut Vec<u8>> {
        self.twin.as_mut()?.region(address)
    }

    /// With a twin socket: serves the server's DMA requests until our own socket has something
    /// to read (a reply may depend on them).
    fn serve_twin(&mut self) -> Result<(), Error> {
        if let Some(twin) = self.twin.as_mut() {
            if !twin.serve_until_readable(&self.t, self.caps.max_data_xfer_size)? {
                self.twin = None;
            }
        }
        Ok(())
    }

    /// The capabilities the server answered with.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// The underlying socket.
    pub fn stream(&self) -> &UnixStream {
        self.t.stream()
    }

    fn next_header(&mut self, cmd: u16, payload_len: usize, flags: u32) -> Header {
        self.next_id = self.next_id.wrapping_add(1);
        Header {
            msg_id: self.next_id,
            cmd,
            msg_size: (HEADER_SIZE + payload_len) as u32,
            flags: FLAG_TYPE_COMMAND | flags,
            error: 0,
        }
    }

    /// Sends a command and waits for its reply; an error reply is `Error::Remote`.
    pub fn request(
        &mut self,
        cmd: u16,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
    ) -> Result<RawReply, Error> {
        let len = parts.iter().map(|p| p.len()).sum();
        let h = self.next_header(cmd, len, 0);
        self.t.send(&h, parts, fds)?;
        self.wait_reply(&h)
    }

    /// Sends raw bytes (possibly malformed) with fds, for hostile-input tests.
    pub fn send_raw(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
        use std::os::fd::AsRawFd;
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let iov = [std::io::IoSlice::new(bytes)];
        let cm = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
        let cms: &[nix::sys::socket::ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cm };
        nix::sys::socket::sendmsg::<()>(
            self.t.stream().as_raw_fd(),
            &iov,
            cms,
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        Ok(())
    }

    /// Receives the next message, whatever it is.
    pub fn recv_raw(&mut self) -> Result<RawReply, Error> {
        let max = wire::max_message_size(self.caps.max_data_xfer_size);
        let f = self.t.recv(max)?;
        let payload = self.t.payload(&f).to_vec();
        Ok(RawReply {
            header: f.header,
            payload,
            fds: f.fds,
        })
    }

    fn wait_reply(&mut self, sent: &Header) -> Result<RawReply, Error> {
        loop {
            self.serve_twin()?;
            let r = self.recv_raw()?;
            if r.header.msg_type() == FLAG_TYPE_COMMAND {
                self.answer_server_command(&r)?;
                continue;
            }
            if r.header.msg_id != sent.msg_id || r.header.cmd != sent.cmd {
                return Err(Error::Protocol(format!(
                    "reply {}/{} does not match request {}/{}",
                    r.header.msg_id, r.header.cmd, sent.msg_id, sent.cmd
                )));
            }
            if r.header.is_error() {
                let errno = Errno::from_raw(i32::try_from(r.header.error).unwrap_or(0));
                return Err(Error::Remote {
                    cmd: sent.cmd,
                    errno,
                });
            }
            return Ok(r);
        }
    }

    /// The server asked us for DMA_READ/DMA_WRITE: this client exports no memory without fds,
    /// so it answers EFAULT (and EINVAL to anything else).
    fn answer_server_command(&mut self, r: &RawReply) -> Result<(), Error> {
        let errno = match r.header.cmd {
            cmd::DMA_READ | cmd::DMA_WRITE => {
                match <(DmaAccess, &[u8])>::decode(&r.payload)
                    .and_then(|(a, _)| wire::check_count(a.count, self.caps.max_data_xfer_size))
                {
                    Ok(()) => Errno::EFAULT,
                    Err(e) => e.errno(),
                }
            }
            _ => Errno::EINVAL,
        };
        if !r.header.no_reply() {
            self.t.send(&r.header.error_reply(errno), &[], &[])?;
        }
        Ok(())
    }

    /// DEVICE_GET_INFO.
    pub fn device_info(&mut self) -> Result<DeviceInfoMsg, Error> {
        let req = DeviceInfoMsg {
            argsz: DeviceInfoMsg::SIZE as u32,
            ..Default::default()
        };
        let r = self.request(cmd::DEVICE_GET_INFO, &[&req.encode()], &[])?;
        Ok(DeviceInfoMsg::decode(&r.payload)?)
    }

    /// DEVICE_GET_REGION_INFO, asking again with the size the server says it needs.
    pub fn region_info(&mut self, index: u32) -> Result<RegionInfoReply, Error> {
        let mut argsz = REGION_INFO_SIZE as u32 + 64;
        for _ in 0..2 {
            let req = vfio_region_info {
                argsz,
                index,
                ..Default::default()
            };
            let r = self.request(cmd::DEVICE_GET_REGION_INFO, &[&req.encode()], &[])?;
            let info = vfio_region_info::decode(&r.payload)?;
            if info.argsz > argsz {
                argsz = info.argsz;
                continue;
            }
            let sparse_areas = SparseAreas::decode(&r.payload)?
                .0
                .into_iter()
                .map(|a| SparseArea {
                    offset: a.offset,
                    size: a.size,
                })
                .collect();
            return Ok(RegionInfoReply {
                info,
                sparse_areas,
                fd: r.fds.into_iter().next(),
            });
        }
        Err(Error::Protocol("region info argsz keeps growing".into()))
    }

    /// DEVICE_GET_IRQ_INFO.
    pub fn irq_info(&mut self, index: u32) -> Result<IrqInfo, Error> {
        let req = vfio_irq_info {
            argsz: wire::IRQ_INFO_SIZE as u32,
            index,
            ..Default::default()
        };
        let r = self.request(cmd::DEVICE_GET_IRQ_INFO, &[&req.encode()], &[])?;
        let info = vfio_irq_info::decode(&r.payload)?;
        Ok(IrqInfo {
            flags: info.flags,
            count: info.count,
        })
    }

    /// DEVICE_SET_IRQS.
    pub fn set_irqs(
        &mut self,
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        bools: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), Error> {
        let set = vfio_irq_set {
            argsz: (wire::IRQ_SET_SIZE + bools.len()) as u32,
            flags,
            index,
            start,
            count,
            ..Default::default()
        };
        self.request(cmd::DEVICE_SET_IRQS, &[&(set, bools).encode()], fds)?;
        Ok(())
    }

    /// REGION_READ of `count` bytes; returns what the server returned (may be shorter).
    pub fn region_read(&mut self, region: u32, offset: u64, count: u32) -> Result<Vec<u8>, Error> {
        let mut buf = vec![0u8; count as usize];
        let n = self.region_read_into(region, offset, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// REGION_READ into `buf`; returns the byte count the server returned.
    pub fn region_read_into(
        &mut self,
        region: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, Error> {
        let req = access(region, offset, buf.len())?;
        let h = self.next_header(cmd::REGION_READ, RegionAccess::SIZE, 0);
        self.t.send(&h, &[&req], &[])?;
        // A REGION_READ reply carries no fds: the cheaper recv(2) will do.
        self.t.set_accept_fds(false);
        let out = self.finish_region_read(&h, buf);
        self.t.set_accept_fds(true);
        out
    }

    fn finish_region_read(&mut self, h: &Header, buf: &mut [u8]) -> Result<usize, Error> {
        let max = wire::max_message_size(self.caps.max_data_xfer_size);
        let mut fixed = [0u8; RegionAccess::SIZE];
        loop {
            self.serve_twin()?;
            let (reply, data_len) = self.t.recv_into(max, &mut fixed, buf)?;
            if reply.msg_type() == FLAG_TYPE_COMMAND {
                // The server asked something of us (DMA): refuse it, then keep waiting.
                if !reply.no_reply() {
                    self.t.send(&reply.error_reply(Errno::EFAULT), &[], &[])?;
                }
                continue;
            }
            if reply.msg_id != h.msg_id || reply.cmd != h.cmd {
                return Err(Error::Protocol("unexpected reply to REGION_READ".into()));
            }
            if reply.is_error() {
                let errno = Errno::from_raw(i32::try_from(reply.error).unwrap_or(0));
                return Err(Error::Remote { cmd: h.cmd, errno });
            }
            let n =
                data_len.ok_or_else(|| Error::Protocol("malformed REGION_READ reply".into()))?;
            let a = RegionAccess::decode(&fixed)?;
            if a.count as usize != n {
                return Err(Error::Protocol(format!(
                    "REGION_READ reply of {n} bytes says count {}",
                    a.count
                )));
            }
            return Ok(n);
        }
    }

    /// REGION_WRITE; returns the count the server reports.
    pub fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<u32, Error> {
        let req = access(region, offset, data.len())?;
        let r = self.request(cmd::REGION_WRITE, &[&req, data], &[])?;
        Ok(RegionAccess::decode(&r.payload)?.count)
    }

    /// REGION_WRITE with No_reply: returns once sent.
    pub fn region_write_posted(
        &mut self,
        region: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Error> {
        let req = access(region, offset, data.len())?;
        let h = self.next_header(
            cmd::REGION_WRITE,
            RegionAccess::SIZE + data.len(),
            FLAG_NO_REPLY,
        );
        self.t.send(&h, &[&req, data], &[])?;
        Ok(())
    }

    /// DEVICE_RESET.
    pub fn reset(&mut self) -> Result<(), Error> {
        self.request(cmd::DEVICE_RESET, &[], &[])?;
        Ok(())
    }

    /// DMA_MAP, with an fd for a mappable region.
    pub fn dma_map(
        &mut self,
        flags: u32,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), Error> {
        let m = DmaMap {
            argsz: DmaMap::SIZE as u32,
            flags,
            offset,
            address,
            size,
        };
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        self.request(cmd::DMA_MAP, &[&m.encode()], &fds)?;
        Ok(())
    }

    /// DMA_UNMAP.
    pub fn dma_unmap(&mut self, address: u64, size: u64) -> Result<(), Error> {
        let u = DmaUnmap {
            argsz: DmaUnmap::SIZE as u32,
            flags: 0,
            address,
            size,
        };
        self.request(cmd::DMA_UNMAP, &[&u.encode()], &[])?;
        Ok(())
    }

    /// DEVICE_FEATURE; returns the data after `argsz, flags`.
    pub fn device_feature(&mut self, flags: u32, data: &[u8]) -> Result<Vec<u8>, Error> {
        let req = Feature { argsz: 4096, flags };
        let r = self.request(cmd::DEVICE_FEATURE, &[&(req, data).encode()], &[])?;
        Ok(r.payload.get(8..).unwrap_or(&[]).to_vec())
    }

    /// MIG_DATA_READ of up to `size` bytes.
    pub fn mig_data_read(&mut self, size: u32) -> Result<Vec<u8>, Error> {
        let r = self.request(
            cmd::MIG_DATA_READ,
            &[&MigData::for_len(size as usize).encode()],
            &[],
        )?;
        Ok(r.payload.get(8..).unwrap_or(&[]).to_vec())
    }

    /// MIG_DATA_WRITE.
    pub fn mig_data_write(&mut self, data: &[u8]) -> Result<(), Error> {
        u32::try_from(data.len()).map_err(|_| Error::Protocol("too large".into()))?;
        self.request(
            cmd::MIG_DATA_WRITE,
            &[&(MigData::for_len(data.len()), data).encode()],
            &[],
        )?;
        Ok(())
    }

    /// Borrowed socket fd (for poll in tools).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.t.stream().as_fd()
    }
}

/// The fixed part of a REGION_READ/REGION_WRITE request.
fn access(region: u32, offset: u64, len: usize) -> Result<[u8; RegionAccess::SIZE], Error> {
    let count = u32::try_from(len).map_err(|_| Error::Protocol("access too large".into()))?;
    Ok(RegionAccess {
        offset,
        region,
        count,
    }
    .to_bytes())
}
