//! Blackwell's real BAR1 (the GPUDirect RDMA aperture), shown at region 2 since 6.14 when the
//! DVSEC says there is no resmem. Upstream the core serves it as an ordinary BAR of the physical
//! device; here the memory behind it is a sparse memfd of its own: READ|WRITE|MMAP over the whole
//! size (no sparse areas, no all-ones tail), EINVAL at or past the end, clipped before it.

use vfio_bindings::bindings::vfio::{
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfu::{Errno, FileSpan, RegionInfo};

use crate::backing::Memory;
use crate::config::Backing;
use crate::error::DeviceError;
use crate::pci::core::clip;

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

    /// REGION_READ.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        let n = clip(self.size, offset, buf.len())?;
        self.memory
            .read(offset, &mut buf[..n])
            .map_err(|e| e.errno())?;
        Ok(n)
    }

    /// REGION_WRITE.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        let n = clip(self.size, offset, data.len())?;
        self.memory
            .write(offset, &data[..n])
            .map_err(|e| e.errno())?;
        Ok(n)
    }

    /// A large read as a span of the memfd.
    pub fn span(&self, offset: u64, count: usize) -> Result<FileSpan<'_>, Errno> {
        let n = clip(self.size, offset, count)?;
        let (fd, at) = self.memory.span(offset, n).map_err(|e| e.errno())?;
        Ok(FileSpan {
            fd,
            offset: at,
            len: n,
            ones: 0,
        })
    }
}
