//! Answering one decoded command: the checks the server owes every device (region and IRQ
//! indices, fds only where a command takes them, eventfds that really are eventfds), then one
//! function per command that calls the [`Device`].

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use tracing::{debug, warn};
use vfio_bindings::bindings::vfio::{
    vfio_irq_info, vfio_region_info, vfio_region_sparse_mmap_area, VFIO_IRQ_SET_ACTION_TYPE_MASK,
    VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_IRQ_SET_DATA_TYPE_MASK, VFIO_REGION_INFO_FLAG_CAPS,
};

use super::session::{Reply, Session};
use super::{VERSION_MAJOR, VERSION_MINOR};
use crate::errno::Errno;
use crate::seam::{Device, SetIrqs};
use crate::transport::{Frame, Transport};
use crate::wire::{
    self, Caps, Command, DeviceInfoMsg, DmaMap, DmaUnmap, MigData, MultiWrite, RegionAccess,
    RegionIoFds, Version, REGION_INFO_SIZE,
};
use crate::wire::{Encode, SparseAreas};

/// An empty successful reply.
fn done(r: Result<(), Errno>) -> Reply {
    match r {
        Ok(()) => Reply::Ok(Vec::new(), None),
        Err(e) => Reply::Err(e),
    }
}

/// A successful reply with `payload`, or the error.
fn payload(r: Result<Vec<u8>, Errno>) -> Reply {
    match r {
        Ok(p) => Reply::Ok(p, None),
        Err(e) => Reply::Err(e),
    }
}

/// EINVAL for a region index the device does not have.
fn region_index<D: Device>(device: &D, index: u32) -> Result<(), Errno> {
    if index >= device.device_info().num_regions {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

impl Session {
    /// Decodes and answers one command (every command but the fast-path REGION_READ).
    pub(super) fn handle<D: Device, T: Transport>(
        &mut self,
        device: &mut D,
        t: &T,
        frame: Frame,
    ) -> Reply {
        let header = frame.header;
        if header.msg_type() != wire::FLAG_TYPE_COMMAND {
            return Reply::Err(Errno::EINVAL);
        }
        let command = match wire::decode_command(&header, t.payload(&frame), self.max_xfer()) {
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
        let fds = frame.fds;
        match command {
            Command::Version(v) => self.version(&v),
            _ if self.caps.is_none() => Reply::Err(Errno::EINVAL),
            Command::DmaMap(m) => self.dma_map(device, &m, fds),
            Command::DmaUnmap(u) => self.dma_unmap(device, &u),
            Command::DeviceGetInfo(req) => device_info(device, &req),
            Command::RegionInfo(req) => region_info(device, &req),
            Command::RegionIoFds(req) => region_io_fds(device, &req),
            Command::IrqInfo(req) => irq_info(device, &req),
            Command::SetIrqs(set, data) => payload(
                validate_set_irqs(device, &set, data, fds)
                    .and_then(|req| device.set_irqs(req))
                    .map(|()| Vec::new()),
            ),
            Command::RegionRead(a) => region_read(device, &a),
            Command::RegionWrite(a, data) => region_write(device, &a, data),
            Command::Reset => done(device.reset()),
            Command::WriteMulti(writes) => self.write_multi(device, &writes),
            Command::Feature(f, data) => payload(
                device
                    .device_feature(f.flags, data)
                    .map(|out| f.encode_reply(&out)),
            ),
            Command::MigDataRead(m) => payload(device.mig_data_read(m.size).map(|data| {
                let data = &data[..data.len().min(m.size as usize)];
                (MigData::for_len(data.len()), data).encode()
            })),
            Command::MigDataWrite(_, data) => done(device.mig_data_write(data)),
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
                    let channel =
                        super::dma_channel::DmaChannel::new(ours, caps.max_data_xfer_size);
                    self.dma.set_channel(Some(Box::new(channel)));
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

    fn dma_map<D: Device>(&mut self, device: &mut D, m: &DmaMap, fds: Vec<OwnedFd>) -> Reply {
        if fds.len() > 1 {
            return Reply::Err(Errno::EINVAL);
        }
        let fd = fds.into_iter().next();
        let r = self.dma.with(|t| t.add(m, fd));
        if r.is_ok() {
            device.dma_mapped(m.address, m.size);
        }
        done(r)
    }

    fn dma_unmap<D: Device>(&mut self, device: &mut D, u: &DmaUnmap) -> Reply {
        let r = self.dma.with(|t| t.remove(u.address, u.size));
        if r.is_ok() {
            device.dma_unmapped(u.address, u.size);
        }
        payload(r.map(|()| u.encode()))
    }

    fn write_multi<D: Device>(&mut self, device: &mut D, writes: &[MultiWrite]) -> Reply {
        if !self.caps.is_some_and(|c| c.write_multiple) {
            return Reply::Err(Errno::EINVAL);
        }
        let mut done = 0u64;
        for w in writes {
            if let Err(e) = region_index(device, w.region)
                .and_then(|()| device.region_write(w.region, w.offset, &w.data[..w.count as usize]))
            {
                return Reply::Err(e);
            }
            done += 1;
        }
        Reply::Ok(done.to_ne_bytes().to_vec(), None)
    }
}

fn device_info<D: Device>(device: &D, req: &DeviceInfoMsg) -> Reply {
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

fn region_io_fds<D: Device>(device: &D, req: &RegionIoFds) -> Reply {
    match region_index(device, req.index) {
        Ok(()) => Reply::Err(device.region_io_fds(req.index)),
        Err(e) => Reply::Err(e),
    }
}

fn irq_info<D: Device>(device: &D, req: &vfio_irq_info) -> Reply {
    if (req.argsz as usize) < wire::IRQ_INFO_SIZE || req.index >= device.device_info().num_irqs {
        return Reply::Err(Errno::EINVAL);
    }
    payload(device.irq_info(req.index).map(|i| {
        vfio_irq_info {
            argsz: wire::IRQ_INFO_SIZE as u32,
            flags: i.flags,
            index: req.index,
            count: i.count,
        }
        .encode()
    }))
}

/// REGION_READ outside the fast path (No_reply reads, or before VERSION's caps apply).
fn region_read<D: Device>(device: &mut D, a: &RegionAccess) -> Reply {
    if let Err(e) = region_index(device, a.region) {
        return Reply::Err(e);
    }
    let mut buf = vec![0u8; a.count as usize];
    payload(device.region_read(a.region, a.offset, &mut buf).map(|n| {
        let n = n.min(buf.len());
        let mut out = Vec::with_capacity(RegionAccess::SIZE + n);
        RegionAccess {
            count: n as u32,
            ..*a
        }
        .encode_into(&mut out);
        out.extend_from_slice(&buf[..n]);
        out
    }))
}

fn region_write<D: Device>(device: &mut D, a: &RegionAccess, data: &[u8]) -> Reply {
    if let Err(e) = region_index(device, a.region) {
        return Reply::Err(e);
    }
    payload(device.region_write(a.region, a.offset, data).map(|n| {
        let mut out = Vec::with_capacity(RegionAccess::SIZE);
        RegionAccess {
            count: n.min(data.len()) as u32,
            ..*a
        }
        .encode_into(&mut out);
        out
    }))
}

fn region_info<D: Device>(device: &D, req: &vfio_region_info) -> Reply {
    if (req.argsz as usize) < REGION_INFO_SIZE || req.index >= device.device_info().num_regions {
        return Reply::Err(Errno::EINVAL);
    }
    let info = match device.region_info(req.index) {
        Ok(i) => i,
        Err(e) => return Reply::Err(e),
    };
    let areas = SparseAreas(
        info.sparse_areas
            .iter()
            .map(|a| vfio_region_sparse_mmap_area {
                offset: a.offset,
                size: a.size,
            })
            .collect(),
    );
    let cap_len = if areas.0.is_empty() {
        0
    } else {
        SparseAreas::encoded_len(areas.0.len()).unwrap_or(usize::MAX)
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
    out_info.encode_into(&mut payload);
    if cap_len > 0 && fits {
        areas.encode_into(&mut payload);
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
    // The generic checks of the kernel's `vfio_set_irqs_validate_and_prepare`, in its order;
    // which actions an index takes is the device's to say (ENOTTY in `vfio_pci_set_irqs_ioctl`).
    if (set.argsz as usize) < wire::IRQ_SET_SIZE
        || set.index >= device.device_info().num_irqs
        || set.count >= u32::MAX - set.start
        || set.flags & !(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK) != 0
    {
        return Err(Errno::EINVAL);
    }
    let dtype = set.flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
    let max = device.irq_info(set.index)?.count;
    // `count < u32::MAX - start` above, so `start + count` cannot wrap.
    if set.start >= max || set.start + set.count > max {
        return Err(Errno::EINVAL);
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
            if set.count == 0 && !fds.is_empty() {
                return Err(Errno::EINVAL);
            }
            if fds.is_empty() {
                eventfds = (0..set.count).map(|_| None).collect();
            } else if fds.len() == set.count as usize {
                for fd in &fds {
                    if !is_eventfd(fd) {
                        return Err(Errno::EINVAL);
                    }
                    // Signalling must never wait (see `irq::make_nonblocking`).
                    crate::irq::make_nonblocking(fd.as_fd())?;
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

/// True when `fd` is an eventfd: the kernel names every eventfd's file `anon_inode:[eventfd]`
/// and nothing else so, as the kernel's `eventfd_ctx_fdget` checks the file's operations. A
/// pipe, socket, memfd, regular file or directory where an eventfd belongs is refused, and so
/// is any fd when /proc cannot be read.
fn is_eventfd(fd: &OwnedFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.to_string_lossy() == "anon_inode:[eventfd]")
        .unwrap_or(false)
}
