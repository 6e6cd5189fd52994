//! A BAR served as a plain register file: every offset holds what was last written there and
//! never-written offsets read 0. It lives in a sparse sealed memfd (pages are allocated on first
//! write, so a hostile client costs at most the BAR's size), which the client may map: the core
//! offers the pages that hold no computed register as sparse-mmap areas, as the kernel offers a
//! BAR's pages outside its MSI-X table (`vfio_pci_ioctl_get_region_info`). The core clips
//! accesses at the BAR end and keeps an MSI-X table and a variant's read-only registers out of it
//! (see [`crate::core`]); variants put device-specific registers on top (vgrace's readiness
//! registers).

use std::os::fd::BorrowedFd;

use nix::fcntl::{fallocate, FallocateFlags};
use tracing::warn;

use crate::error::MemfdError;
use crate::memfd::SealedMemfd;

/// A register file of a fixed size on a sparse memfd.
#[derive(Debug)]
pub(crate) struct RegFile {
    memory: SealedMemfd,
    size: u64,
}

impl RegFile {
    /// An all-zero register file of `size` bytes (nothing is allocated until written).
    pub(crate) fn new(size: u64) -> Result<Self, MemfdError> {
        Ok(Self {
            // A BAR size is a power of two: a whole page at least, so a client's mapping of a
            // small BAR cannot run past the end of the file.
            memory: SealedMemfd::new("vfu-pci-bar0", size.max(4096), false)?,
            size,
        })
    }

    /// Its size in bytes (the BAR size).
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The memfd a client maps.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.memory.fd()
    }

    /// Back to all zero (device reset): the pages are given back (a hole punched over the
    /// whole file), which a client's mapping sees at once.
    pub(crate) fn reset(&mut self) {
        let Ok(len) = i64::try_from(self.size) else {
            return;
        };
        let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        if let Err(e) = fallocate(self.memory.fd(), punch, 0, len) {
            // Only a kernel without hole punching on shmem gets here; zero what was written.
            warn!("cannot punch the register file: {e}; writing zeros");
            let zeros = vec![0u8; 1 << 16];
            let mut at = 0;
            while at < self.size {
                let n = (self.size - at).min(zeros.len() as u64) as usize;
                let _ = self.memory.write(at, &zeros[..n]);
                at += n as u64;
            }
        }
    }

    /// Reads `buf.len()` bytes at `offset`; `None` for an access that does not fit entirely
    /// below the size.
    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) -> Option<usize> {
        self.check(offset, buf.len())?;
        self.memory.read(offset, buf).ok()?;
        Some(buf.len())
    }

    /// Writes `data` at `offset`; `None` as for [`RegFile::read`].
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> Option<usize> {
        self.check(offset, data.len())?;
        self.memory.write(offset, data).ok()?;
        Some(data.len())
    }

    /// End of a valid access: inside the file (no wrapping).
    fn check(&self, offset: u64, len: usize) -> Option<u64> {
        let end = offset.checked_add(len as u64)?;
        (end <= self.size).then_some(end)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keeps_writes_and_reads_unwritten_as_zero() {
        let mut r = RegFile::new(1 << 20).unwrap();
        assert_eq!(r.write(0x1234, &[1, 2, 3, 4]), Some(4));
        let mut b = [0xaa; 8];
        assert_eq!(r.read(0x1230, &mut b), Some(8));
        assert_eq!(b, [0, 0, 0, 0, 1, 2, 3, 4]);
        r.reset();
        assert_eq!(r.read(0x1234, &mut b[..4]), Some(4));
        assert_eq!(b[..4], [0; 4]);
    }

    #[test]
    fn takes_any_length_and_refuses_straddling_and_wrapping_accesses() {
        let mut r = RegFile::new(4096).unwrap();
        let mut b = [0u8; 8];
        assert_eq!(r.read(0, &mut b[..3]), Some(3));
        assert_eq!(r.read(4094, &mut b[..4]), None);
        assert_eq!(r.write(u64::MAX - 1, &[0; 4]), None);
        assert_eq!(r.read(4092, &mut b[..4]), Some(4));
    }
}
