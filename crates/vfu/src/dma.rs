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

impl DmaRegion {
    /// True when the region is mapped into our address space.
    pub fn is_mapped(&self) -> bool {
        self.mapping.is_some()
    }
}

/// A device's view of the client's DMA regions: shared with the session that maintains them,
/// valid for the current client only (emptied when it goes).
#[derive(Debug, Clone)]
pub struct DmaHandle(std::sync::Arc<std::sync::Mutex<DmaTable>>);

impl DmaHandle {
    /// Wraps a table.
    pub fn new(table: DmaTable) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(table)))
    }

    /// Runs `f` on the table (a poisoned lock is recovered: the table holds no invariants a
    /// panic could break halfway).
    pub fn with<T>(&self, f: impl FnOnce(&mut DmaTable) -> T) -> T {
        let mut guard = match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut guard)
    }

    /// Reads guest memory (see [`DmaTable::read`]).
    pub fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.with(|t| t.read(address, buf))
    }

    /// Writes guest memory (see [`DmaTable::write`]).
    pub fn write(&self, address: u64, data: &[u8]) -> Result<(), Errno> {
        self.with(|t| t.write(address, data))
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
