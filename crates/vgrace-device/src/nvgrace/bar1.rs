//! Blackwell's real BAR1 (the GPUDirect RDMA aperture), shown at region 2 since 6.14 when the
//! DVSEC says there is no resmem. Upstream the core serves it as an ordinary BAR of the physical
//! device; here the memory behind it is a sparse memfd of its own: READ|WRITE|MMAP over the whole
//! size (no sparse areas, no all-ones tail). vfu's `Variant` checks each access against the
//! BAR's size first (EINVAL at or past the end, clipped before it).

use vfio_bindings::bindings::vfio::{
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfu::{Errno, FileSpan, RegionInfo};

use crate::backing::Memory;
use crate::config::Backing;
use crate::error::DeviceError;

/// VFIO region index of BAR1 (the second 64-bit BAR's registers at config 0x18).
pub const BAR1_REGION_INDEX: u32 = 2;

/// BAR1 and its memory.
#[derive(Debug)]
pub struct Bar1 {
    size: u64,
    memory: Memory,
}

impl Bar1 {
    /// A BAR1 of `size` bytes (a power of two) on a sparse memfd.
    pub fn new(size: u64) -> Result<Self, DeviceError> {
        Ok(Self {
            size,
            memory: Memory::new(&Backing::Memfd, size)?,
        })
    }

    /// The BAR size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// REGION_INFO: the whole BAR, mappable through the memfd.
    pub fn info(&self) -> RegionInfo<'_> {
        RegionInfo {
            flags: VFIO_REGION_INFO_FLAG_READ
                | VFIO_REGION_INFO_FLAG_WRITE
                | VFIO_REGION_INFO_FLAG_MMAP,
            size: self.size,
            fd_offset: 0,
            sparse_areas: Vec::new(),
            fd: Some(self.memory.fd()),
        }
    }

    /// REGION_READ of `buf.len()` bytes at `offset`, both checked against the BAR.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.memory.read(offset, buf).map_err(|e| e.errno())
    }

    /// REGION_WRITE, checked as for reads.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.memory.write(offset, data).map_err(|e| e.errno())
    }

    /// A read of `n` bytes, checked as for reads, as a span of the memfd.
    pub fn span(&self, offset: u64, n: usize) -> Result<FileSpan<'_>, Errno> {
        let (fd, at) = self.memory.span(offset, n).map_err(|e| e.errno())?;
        Ok(FileSpan {
            fd,
            offset: at,
            len: n,
            ones: 0,
        })
    }
}
