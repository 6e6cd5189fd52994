//! The variant's memory regions (upstream's `nvgrace_gpu_memregion`): a BAR of
//! roundup_pow_of_two(memlength) bytes whose first memlength bytes are device memory and mmap-able
//! through one sparse area; the rest reads as all ones and drops writes. A region's
//! [`MemRegionLayout`] is the single source for its REGION_INFO, its sparse area and its emulated
//! BAR register.

use vfio_bindings::bindings::vfio::{
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfu::{Errno, FileSpan, RegionInfo, SparseArea};

use crate::backing::Memory;
use crate::config::{Layout, MemRegionLayout};
use vfu_pci::BarDesc;

/// The emulated BAR register of a memory region: 64-bit, prefetchable, the BAR size.
pub(crate) fn bar(r: &MemRegionLayout) -> BarDesc {
    BarDesc::mem64(r.region_index, r.bar_size, true)
}

/// The memory region at VFIO region `index`, or `None` when the index is the core's.
/// Borrows only the layout and the memory, so the caller may still use its core.
pub(crate) fn memregion<'a>(
    layout: &Layout,
    memory: &'a Memory,
    base: u64,
    index: u32,
) -> Option<MemRegion<'a>> {
    layout.region(index).map(|r| MemRegion {
        layout: *r,
        memory,
        base,
    })
}

/// One memory region and the memory behind it.
pub(crate) struct MemRegion<'a> {
    layout: MemRegionLayout,
    memory: &'a Memory,
    /// Where the region starts in `memory`'s fd.
    base: u64,
}

impl<'a> MemRegion<'a> {
    /// REGION_INFO: the BAR size, read/write/mmap, and one sparse area over the real memory
    /// only (never the rounding tail), with the backing fd.
    pub(crate) fn info(&self) -> RegionInfo<'a> {
        let r = &self.layout;
        RegionInfo {
            flags: VFIO_REGION_INFO_FLAG_READ
                | VFIO_REGION_INFO_FLAG_WRITE
                | VFIO_REGION_INFO_FLAG_MMAP,
            size: bar(r).size,
            fd_offset: self.base,
            sparse_areas: vec![SparseArea {
                offset: 0,
                size: r.memlength,
            }],
            fd: Some(self.memory.fd()),
        }
    }

    /// Bytes of real memory in the region.
    pub(crate) fn memlength(&self) -> u64 {
        self.layout.memlength
    }

    /// The region's BAR size.
    pub(crate) fn bar_size(&self) -> u64 {
        self.layout.bar_size
    }

    /// REGION_READ of `buf.len()` bytes at `offset`, both already checked against the BAR
    /// (vfu's `Variant`): memory, then all ones up to the BAR end.
    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let in_mem = mem_part(self.layout.memlength, offset, buf.len());
        if in_mem > 0 {
            self.memory
                .read(self.base + offset, &mut buf[..in_mem])
                .map_err(|e| e.errno())?;
        }
        // Past the real memory the BAR reads as all ones, as the hardware does.
        buf[in_mem..].fill(0xff);
        Ok(())
    }

    /// REGION_WRITE, checked as for reads: into memory, dropped past it.
    pub(crate) fn write(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let in_mem = mem_part(self.layout.memlength, offset, data.len());
        if in_mem > 0 {
            self.memory
                .write(self.base + offset, &data[..in_mem])
                .map_err(|e| e.errno())?;
        }
        // Writes past the real memory are dropped silently (an errno would crash the guest).
        Ok(())
    }

    /// A read of `n` bytes, checked as for reads, as a span of the backing fd plus its
    /// all-ones tail.
    pub(crate) fn span(&self, offset: u64, n: usize) -> Result<FileSpan<'a>, Errno> {
        let in_mem = mem_part(self.layout.memlength, offset, n);
        let (fd, at) = self
            .memory
            .span(self.base + offset, in_mem)
            .map_err(|e| e.errno())?;
        Ok(FileSpan {
            fd,
            offset: at,
            len: in_mem,
            ones: n - in_mem,
        })
    }
}

/// Bytes of an access at `offset` of `n` that are real memory.
fn mem_part(memlength: u64, offset: u64, n: usize) -> usize {
    if offset >= memlength {
        return 0;
    }
    usize::try_from(memlength - offset).map_or(n, |r| r.min(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_part_stops_at_memlength() {
        assert_eq!(mem_part(100, 96, 8), 4);
        assert_eq!(mem_part(100, 100, 8), 0);
        assert_eq!(mem_part(100, u64::MAX, 8), 0);
        assert_eq!(mem_part(u64::MAX, 0, 8), 8);
    }
}
