//! The client's DMA regions: a bounded table, fd-backed regions mapped into our address space,
//! and bounds-checked reads and writes of guest memory.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use vm_memory::{FileOffset, MmapRegion, VolatileMemory};

use crate::errno::Errno;
use crate::sync::relock;
use crate::wire::{
    Decode, DmaAccess, DmaMap, DmaWriteReply, Encode, DMA_FLAG_READ, DMA_FLAG_WRITE,
};

/// Most regions per client whose fd we keep open (fd-I/O regions); more are ENOSPC, so one
/// client cannot fill the server's fd table with DMA maps.
pub const MAX_FD_REGIONS: usize = 1024;

/// How the server reaches a region's memory. A mapping faults (SIGBUS) if its file shrinks, so
/// only fds sealed against shrinking (QEMU's memfd guest RAM is) are mapped; any other fd is
/// reached with pread/pwrite, where a shrunk file is an errno, never a signal.
#[derive(Debug)]
enum Access {
    /// A shared mapping of a sealed fd, copied through volatile slices (the guest writes it).
    Mapped(MmapRegion<()>),
    /// The fd itself at `offset`.
    FileIo { file: std::fs::File, offset: u64 },
}

/// One DMA region.
#[derive(Debug)]
pub struct DmaRegion {
    /// DMA address.
    pub address: u64,
    /// Size.
    pub size: u64,
    /// DMA_FLAG_READ / DMA_FLAG_WRITE.
    pub flags: u32,
    access: Option<Access>,
}

/// The server end of a twin socket: where DMA_READ/DMA_WRITE go for regions without an fd.
#[derive(Debug)]
pub struct DmaChannel {
    t: crate::transport::UnixTransport,
    next_id: u16,
    max_xfer: u32,
}

impl DmaChannel {
    /// A channel over the server end of the twin socket; transfers are split at `max_xfer`.
    pub fn new(stream: std::os::unix::net::UnixStream, max_xfer: u32) -> Self {
        Self {
            t: crate::transport::UnixTransport::new(stream),
            next_id: 0,
            max_xfer: max_xfer.max(1),
        }
    }

    /// One command and its reply; an error reply becomes its errno, anything malformed EIO.
    fn call(&mut self, cmd: u16, parts: &[&[u8]]) -> Result<Vec<u8>, Errno> {
        use crate::transport::Transport;
        use crate::wire::{Header, FLAG_TYPE_COMMAND, HEADER_SIZE};
        self.next_id = self.next_id.wrapping_add(1);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let msg_size = u32::try_from(HEADER_SIZE + len).map_err(|_| Errno::E2BIG)?;
        let h = Header {
            msg_id: self.next_id,
            cmd,
            msg_size,
            flags: FLAG_TYPE_COMMAND,
            error: 0,
        };
        self.t.send(&h, parts, &[]).map_err(|_| Errno::EIO)?;
        let max = crate::wire::max_message_size(self.max_xfer);
        let f = self.t.recv(max).map_err(|_| Errno::EIO)?;
        if f.header.msg_id != h.msg_id
            || f.header.cmd != cmd
            || f.header.msg_type() == FLAG_TYPE_COMMAND
        {
            return Err(Errno::EIO);
        }
        if f.header.is_error() {
            return Err(Errno::from_raw(
                i32::try_from(f.header.error).unwrap_or(libc::EIO),
            ));
        }
        Ok(self.t.payload(&f).to_vec())
    }

    fn read(&mut self, mut address: u64, buf: &mut [u8]) -> Result<(), Errno> {
        for chunk in buf.chunks_mut(self.max_xfer as usize) {
            let count = chunk.len() as u64;
            let req = DmaAccess { address, count }.encode();
            let reply = self.call(crate::wire::cmd::DMA_READ, &[&req])?;
            let (a, data) = <(DmaAccess, &[u8])>::decode(&reply).map_err(|_| Errno::EIO)?;
            if a.address != address || a.count != count || data.len() != chunk.len() {
                return Err(Errno::EIO);
            }
            chunk.copy_from_slice(data);
            address += count;
        }
        Ok(())
    }

    fn write(&mut self, mut address: u64, data: &[u8]) -> Result<(), Errno> {
        for chunk in data.chunks(self.max_xfer as usize) {
            let count = chunk.len() as u64;
            let req = DmaAccess { address, count }.encode();
            let reply = self.call(crate::wire::cmd::DMA_WRITE, &[&req, chunk])?;
            let done = DmaWriteReply::decode(&reply).map_err(|_| Errno::EIO)?;
            if done.address != address || u64::from(done.count) != count {
                return Err(Errno::EIO);
            }
            address += count;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct HandleInner {
    table: std::sync::Mutex<DmaTable>,
    channel: std::sync::Mutex<Option<DmaChannel>>,
}

/// A device's view of the client's DMA regions: shared with the session that maintains them,
/// valid for the current client only (emptied when it goes). Regions with an fd are accessed
/// through our mapping; regions without one through DMA_READ/DMA_WRITE messages on the twin
/// socket, when the client set one up (else ENOTSUP).
#[derive(Debug, Clone)]
pub struct DmaHandle(std::sync::Arc<HandleInner>);

impl DmaHandle {
    /// Wraps a table.
    pub fn new(table: DmaTable) -> Self {
        Self(std::sync::Arc::new(HandleInner {
            table: std::sync::Mutex::new(table),
            channel: std::sync::Mutex::new(None),
        }))
    }

    /// Runs `f` on the table.
    pub fn with<T>(&self, f: impl FnOnce(&mut DmaTable) -> T) -> T {
        f(&mut relock(&self.0.table))
    }

    /// Sets (or clears) the twin-socket channel for regions without an fd.
    pub fn set_channel(&self, channel: Option<DmaChannel>) {
        *relock(&self.0.channel) = channel;
    }

    /// Reads guest memory at `address` into `buf`; the range must lie in one region the client
    /// made readable.
    pub fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let mapped = self.with(|t| t.read(address, buf));
        match mapped {
            Err(Errno::ENOTSUP) => relock(&self.0.channel)
                .as_mut()
                .ok_or(Errno::ENOTSUP)?
                .read(address, buf),
            other => other,
        }
    }

    /// Writes `data` to guest memory at `address`; the range must lie in one region the client
    /// made writable.
    pub fn write(&self, address: u64, data: &[u8]) -> Result<(), Errno> {
        let mapped = self.with(|t| t.write(address, data));
        match mapped {
            Err(Errno::ENOTSUP) => relock(&self.0.channel)
                .as_mut()
                .ok_or(Errno::ENOTSUP)?
                .write(address, data),
            other => other,
        }
    }
}

/// The DMA regions of one client.
#[derive(Debug)]
pub struct DmaTable {
    regions: BTreeMap<u64, DmaRegion>,
    max: u32,
}

impl DmaTable {
    /// An empty table holding at most `max` regions.
    pub fn new(max: u32) -> Self {
        Self {
            regions: BTreeMap::new(),
            max,
        }
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Adds a region; with an fd, maps it. Overlap is EEXIST, a full table ENOSPC, an fd that
    /// cannot be mapped returns mmap's errno.
    pub fn add(&mut self, map: &DmaMap, fd: Option<OwnedFd>) -> Result<(), Errno> {
        let end = map.address.checked_add(map.size).ok_or(Errno::EOVERFLOW)?;
        if self.regions.len() >= self.max as usize {
            return Err(Errno::ENOSPC);
        }
        let overlaps = self
            .regions
            .range(..end)
            .next_back()
            .is_some_and(|(_, r)| r.address + r.size > map.address);
        if overlaps {
            return Err(Errno::EEXIST);
        }
        let access = match fd {
            None => None,
            Some(fd) => {
                let access = access_fd(fd, map)?;
                if matches!(access, Access::FileIo { .. }) && self.fd_regions() >= MAX_FD_REGIONS {
                    return Err(Errno::ENOSPC);
                }
                Some(access)
            }
        };
        self.regions.insert(
            map.address,
            DmaRegion {
                address: map.address,
                size: map.size,
                flags: map.flags,
                access,
            },
        );
        Ok(())
    }

    /// Regions whose fd we hold open.
    fn fd_regions(&self) -> usize {
        self.regions
            .values()
            .filter(|r| matches!(r.access, Some(Access::FileIo { .. })))
            .count()
    }

    /// Removes exactly the region `[address, address+size)`; anything else is ENOENT.
    pub fn remove(&mut self, address: u64, size: u64) -> Result<(), Errno> {
        match self.regions.get(&address) {
            Some(r) if r.size == size => {
                self.regions.remove(&address);
                Ok(())
            }
            _ => Err(Errno::ENOENT),
        }
    }

    /// Drops every region (client went away).
    pub fn clear(&mut self) {
        self.regions.clear();
    }

    /// The region containing `[address, address+len)` with the access `need`s, its memory and
    /// the offset into it.
    fn locate(&self, address: u64, len: usize, need: u32) -> Result<(&Access, u64), Errno> {
        let len64 = u64::try_from(len).map_err(|_| Errno::EINVAL)?;
        let end = address.checked_add(len64).ok_or(Errno::EOVERFLOW)?;
        let (_, r) = self
            .regions
            .range(..=address)
            .next_back()
            .ok_or(Errno::EFAULT)?;
        if end > r.address + r.size {
            return Err(Errno::EFAULT);
        }
        if r.flags & need != need {
            return Err(Errno::EPERM);
        }
        let access = r.access.as_ref().ok_or(Errno::ENOTSUP)?;
        Ok((access, address - r.address))
    }

    /// Reads guest memory at `address` into `buf`; the range must lie in one region with an fd.
    pub fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), Errno> {
        match self.locate(address, buf.len(), DMA_FLAG_READ)? {
            (Access::Mapped(m), off) => {
                volatile(m, off, buf.len())?.copy_to(buf);
                Ok(())
            }
            (Access::FileIo { file, offset }, off) => file
                .read_exact_at(buf, offset + off)
                .map_err(|e| io_errno(&e)),
        }
    }

    /// Writes `data` to guest memory at `address`; the range must lie in one region with an fd.
    pub fn write(&self, address: u64, data: &[u8]) -> Result<(), Errno> {
        match self.locate(address, data.len(), DMA_FLAG_WRITE)? {
            (Access::Mapped(m), off) => {
                volatile(m, off, data.len())?.copy_from(data);
                Ok(())
            }
            (Access::FileIo { file, offset }, off) => {
                // Never grow the client's file: a write past its end is a fault, as a read is.
                let file_len = file.metadata().map_err(|e| io_errno(&e))?.len();
                if offset + off + data.len() as u64 > file_len {
                    return Err(Errno::EFAULT);
                }
                file.write_all_at(data, offset + off)
                    .map_err(|e| io_errno(&e))
            }
        }
    }
}

/// The volatile view of `len` bytes at `off` of a mapping (bounds-checked by vm-memory).
fn volatile(
    m: &MmapRegion<()>,
    off: u64,
    len: usize,
) -> Result<vm_memory::VolatileSlice<'_, ()>, Errno> {
    usize::try_from(off)
        .ok()
        .and_then(|at| m.get_slice(at, len).ok())
        .ok_or(Errno::EFAULT)
}

/// An i/o error as the errno a device should see: a file that ended is a fault.
fn io_errno(e: &std::io::Error) -> Errno {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Errno::EFAULT,
        _ => e.raw_os_error().map_or(Errno::EIO, Errno::from_raw),
    }
}

/// True when nobody can shrink `fd` (a memfd sealed with F_SEAL_SHRINK); other files, or fds
/// that cannot be sealed, answer false.
fn sealed_against_shrinking(fd: &impl std::os::fd::AsFd) -> bool {
    fcntl(fd, FcntlArg::F_GET_SEALS)
        .map(|bits| SealFlag::from_bits_truncate(bits).contains(SealFlag::F_SEAL_SHRINK))
        .unwrap_or(false)
}

fn access_fd(fd: OwnedFd, map: &DmaMap) -> Result<Access, Errno> {
    let len = usize::try_from(map.size).map_err(|_| Errno::EINVAL)?;
    if len == 0 {
        return Err(Errno::EINVAL);
    }
    let file = std::fs::File::from(fd);
    if !sealed_against_shrinking(&file) {
        // Refuse what cannot be read or written as a file at all (a pipe, a socket).
        let meta = file.metadata().map_err(|e| io_errno(&e))?;
        if !meta.is_file() {
            return Err(Errno::EINVAL);
        }
        return Ok(Access::FileIo {
            file,
            offset: map.offset,
        });
    }
    // Sealed against shrinking, the file can only keep or grow its length: a mapping inside it
    // now stays backed for good; one reaching past its end would fault at once.
    let file_len = file.metadata().map_err(|e| io_errno(&e))?.len();
    let end = map.offset.checked_add(map.size).ok_or(Errno::EINVAL)?;
    if end > file_len {
        return Err(Errno::EINVAL);
    }
    let mut prot = 0;
    if map.flags & DMA_FLAG_READ != 0 {
        prot |= nix::libc::PROT_READ;
    }
    if map.flags & DMA_FLAG_WRITE != 0 {
        prot |= nix::libc::PROT_WRITE;
    }
    let region = MmapRegion::build(
        Some(FileOffset::new(file, map.offset)),
        len,
        prot,
        nix::libc::MAP_SHARED | nix::libc::MAP_NORESERVE,
    )
    .map_err(|e| match e {
        vm_memory::mmap::MmapRegionError::Mmap(io) => io_errno(&io),
        _ => Errno::EINVAL,
    })?;
    Ok(Access::Mapped(region))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn memfd(size: u64) -> OwnedFd {
        let f = tempfile::tempfile().unwrap();
        f.set_len(size).unwrap();
        f.into()
    }

    fn map(address: u64, size: u64) -> DmaMap {
        DmaMap {
            argsz: 32,
            flags: DMA_FLAG_READ | DMA_FLAG_WRITE,
            offset: 0,
            address,
            size,
        }
    }

    #[test]
    fn overlapping_map_is_eexist() {
        let mut t = DmaTable::new(8);
        t.add(&map(0x1000, 0x2000), None).unwrap();
        assert_eq!(t.add(&map(0x2000, 0x1000), None), Err(Errno::EEXIST));
    }

    #[test]
    fn unmap_must_match_exactly() {
        let mut t = DmaTable::new(8);
        t.add(&map(0x1000, 0x2000), None).unwrap();
        assert_eq!(t.remove(0x1000, 0x1000), Err(Errno::ENOENT));
        assert_eq!(t.remove(0x1000, 0x2000), Ok(()));
    }

    #[test]
    fn table_is_bounded() {
        let mut t = DmaTable::new(1);
        t.add(&map(0, 0x1000), None).unwrap();
        assert_eq!(t.add(&map(0x1000, 0x1000), None), Err(Errno::ENOSPC));
    }

    #[test]
    fn mapped_region_reads_back_writes_and_is_bounds_checked() {
        let mut t = DmaTable::new(8);
        t.add(&map(0x10000, 0x1000), Some(memfd(0x1000))).unwrap();
        t.write(0x10ff8, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        let mut b = [0u8; 8];
        t.read(0x10ff8, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(t.read(0x10ffc, &mut b), Err(Errno::EFAULT));
    }

    #[test]
    fn pipe_fd_cannot_be_mapped() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let mut t = DmaTable::new(8);
        assert!(t.add(&map(0, 0x1000), Some(r)).is_err());
        assert!(t.is_empty());
    }

    fn sealed_memfd(size: u64) -> OwnedFd {
        let m = memfd::MemfdOptions::default()
            .allow_sealing(true)
            .create("dma-test")
            .unwrap();
        m.as_file().set_len(size).unwrap();
        m.add_seals(&[memfd::FileSeal::SealShrink, memfd::FileSeal::SealGrow])
            .unwrap();
        m.into_file().into()
    }

    #[test]
    fn sealed_memfd_is_mapped_and_unsealed_fd_is_reached_with_file_io() {
        let mut t = DmaTable::new(8);
        t.add(&map(0x10000, 0x1000), Some(sealed_memfd(0x1000)))
            .unwrap();
        t.add(&map(0x20000, 0x1000), Some(memfd(0x1000))).unwrap();
        let kinds: Vec<bool> = t
            .regions
            .values()
            .map(|r| matches!(r.access, Some(Access::Mapped(_))))
            .collect();
        assert_eq!(kinds, vec![true, false]);
        for base in [0x10000u64, 0x20000] {
            t.write(base + 8, b"guestmem").unwrap();
            let mut b = [0u8; 8];
            t.read(base + 8, &mut b).unwrap();
            assert_eq!(&b, b"guestmem");
        }
    }

    /// A client that shrinks the (unsealed) file it mapped after DMA_MAP gets a fault errno on
    /// the next DMA access instead of a SIGBUS in the server, and the file does not grow back.
    #[test]
    fn shrunk_unsealed_dma_fd_is_efault_not_sigbus() {
        let fd = memfd(0x2000);
        let client_copy = fd.try_clone().unwrap();
        let mut t = DmaTable::new(8);
        t.add(&map(0x10000, 0x2000), Some(fd)).unwrap();
        nix::unistd::ftruncate(&client_copy, 0x1000).unwrap();
        let mut b = [0u8; 8];
        assert_eq!(t.read(0x11800, &mut b), Err(Errno::EFAULT));
        assert_eq!(t.write(0x11800, &b), Err(Errno::EFAULT));
        assert_eq!(
            std::fs::File::from(client_copy).metadata().unwrap().len(),
            0x1000
        );
        t.read(0x10000, &mut b).unwrap();
    }

    #[test]
    fn fd_regions_are_bounded() {
        let mut t = DmaTable::new(u32::MAX);
        let f = memfd(0x1000);
        for i in 0..MAX_FD_REGIONS as u64 {
            t.add(&map(i << 12, 0x1000), Some(f.try_clone().unwrap()))
                .unwrap();
        }
        let next = (MAX_FD_REGIONS as u64) << 12;
        assert_eq!(
            t.add(&map(next, 0x1000), Some(f.try_clone().unwrap())),
            Err(Errno::ENOSPC)
        );
        t.add(&map(next, 0x1000), None).unwrap();
    }

    #[test]
    fn sealed_fd_shorter_than_the_map_is_refused() {
        let mut t = DmaTable::new(8);
        assert_eq!(
            t.add(&map(0x10000, 0x2000), Some(sealed_memfd(0x1000))),
            Err(Errno::EINVAL)
        );
    }
}
