//! The client's DMA regions: a bounded table, fd-backed regions mapped into our address space,
//! and bounds-checked reads and writes of guest memory.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use crate::errno::Errno;
use crate::wire::{DmaMap, DMA_FLAG_READ, DMA_FLAG_WRITE};

/// A shared mapping of a client fd, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; access goes through
// `DmaTable` methods that take `&self`/`&mut self` and copy bytes, so moving it between threads
// is sound.
unsafe impl Send for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned and this is the only unmap.
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
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
    mapping: Option<Mapping>,
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
            let mut req = Vec::with_capacity(16);
            crate::wire::DmaAccess { address, count }.encode_into(&mut req);
            let reply = self.call(crate::wire::cmd::DMA_READ, &[&req])?;
            let (a, data) =
                crate::wire::DmaAccess::decode(&reply, self.max_xfer).map_err(|_| Errno::EIO)?;
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
            let mut req = Vec::with_capacity(16);
            crate::wire::DmaAccess { address, count }.encode_into(&mut req);
            let reply = self.call(crate::wire::cmd::DMA_WRITE, &[&req, chunk])?;
            let done = crate::wire::DmaWriteReply::decode(&reply).map_err(|_| Errno::EIO)?;
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

fn relock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock is recovered: neither value holds invariants a panic could break halfway.
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

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
        let mapping = match fd {
            None => None,
            Some(fd) => Some(map_fd(&fd, map)?),
        };
        self.regions.insert(
            map.address,
            DmaRegion {
                address: map.address,
                size: map.size,
                flags: map.flags,
                mapping,
            },
        );
        Ok(())
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

    /// The mapped region containing `[address, address+len)` and the offset into it.
    fn locate(&self, address: u64, len: usize, need: u32) -> Result<(&Mapping, usize), Errno> {
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
        let m = r.mapping.as_ref().ok_or(Errno::ENOTSUP)?;
        let off = usize::try_from(address - r.address).map_err(|_| Errno::EFAULT)?;
        Ok((m, off))
    }

    /// Reads guest memory at `address` into `buf`; the range must lie in one mapped region.
    pub fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let (m, off) = self.locate(address, buf.len(), DMA_FLAG_READ)?;
        // SAFETY: `locate` proved off+len <= region size == mapping length; the source is shared
        // memory the guest may change concurrently, which a byte copy tolerates.
        unsafe {
            std::ptr::copy_nonoverlapping(
                m.ptr.as_ptr().cast::<u8>().add(off),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        Ok(())
    }

    /// Writes `data` to guest memory at `address`; the range must lie in one mapped region.
    pub fn write(&self, address: u64, data: &[u8]) -> Result<(), Errno> {
        let (m, off) = self.locate(address, data.len(), DMA_FLAG_WRITE)?;
        // SAFETY: as in `read`; the mapping was made writable because the region has WRITE.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                m.ptr.as_ptr().cast::<u8>().add(off),
                data.len(),
            )
        };
        Ok(())
    }
}

fn map_fd(fd: &OwnedFd, map: &DmaMap) -> Result<Mapping, Errno> {
    let len = usize::try_from(map.size).map_err(|_| Errno::EINVAL)?;
    let nz = NonZeroUsize::new(len).ok_or(Errno::EINVAL)?;
    let offset = libc::off_t::try_from(map.offset).map_err(|_| Errno::EINVAL)?;
    let mut prot = ProtFlags::empty();
    if map.flags & DMA_FLAG_READ != 0 {
        prot |= ProtFlags::PROT_READ;
    }
    if map.flags & DMA_FLAG_WRITE != 0 {
        prot |= ProtFlags::PROT_WRITE;
    }
    // SAFETY: a new shared mapping at a kernel-chosen address; it aliases no Rust object and is
    // only accessed through bounds-checked copies.
    let ptr = unsafe {
        mmap(
            None,
            nz,
            prot,
            MapFlags::MAP_SHARED | MapFlags::MAP_NORESERVE,
            fd,
            offset,
        )
    }?;
    Ok(Mapping { ptr, len })
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
}
