//! A client-side shared mapping of a region fd, for the conformance check's coherence rule.
//!
//! The mapping is a [`vm_memory::MmapRegion`] and every access is a bounds-checked volatile copy
//! through a [`vm_memory::VolatileSlice`] (the server writes the same memory from another
//! process), so this module has no `unsafe` and no alignment assumption: a word may sit at any
//! byte offset.

use std::fs::File;
use std::os::fd::OwnedFd;

use anyhow::{bail, Context, Result};
use vm_memory::{FileOffset, MmapRegion, VolatileMemory};

/// A MAP_SHARED read/write mapping, unmapped on drop.
pub struct Mapping {
    region: MmapRegion<()>,
}

impl Mapping {
    /// Maps `len` bytes of `fd` from `offset` (which must be page aligned).
    pub fn new(fd: &OwnedFd, offset: u64, len: u64) -> Result<Self> {
        let len = usize::try_from(len).context("mapping length does not fit in usize")?;
        if len == 0 {
            bail!("empty mapping")
        }
        if len < 8 {
            bail!("mapping shorter than one word");
        }
        if i64::try_from(offset).is_err() {
            bail!("fd offset too large");
        }
        let file = File::from(fd.try_clone().context("cannot duplicate the region fd")?);
        let region = MmapRegion::build(
            Some(FileOffset::new(file, offset)),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .context("mmap of the region fd failed")?;
        Ok(Self { region })
    }

    /// The 8 bytes at byte `offset`, clamped into the mapping (vm-memory checks the bounds).
    fn word(&self, offset: usize) -> Result<vm_memory::VolatileSlice<'_, ()>> {
        let at = offset.min(self.region.len() - 8);
        self.region
            .get_slice(at, 8)
            .with_context(|| format!("8 bytes at {at:#x} of the mapping"))
    }

    /// Reads the little-endian u64 at byte `offset` (clamped into the mapping).
    pub fn read_u64(&self, offset: usize) -> Result<u64> {
        let mut bytes = [0u8; 8];
        self.word(offset)?.copy_to(&mut bytes);
        Ok(u64::from_le_bytes(bytes))
    }

    /// Writes `value` as a little-endian u64 at byte `offset` (clamped into the mapping).
    pub fn write_u64(&self, offset: usize, value: u64) -> Result<()> {
        self.word(offset)?.copy_from(&value.to_le_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::FileExt;

    use super::*;

    fn file(len: u64) -> (File, OwnedFd) {
        let f = tempfile::tempfile().unwrap();
        f.set_len(len).unwrap();
        let fd = OwnedFd::from(f.try_clone().unwrap());
        (f, fd)
    }

    #[test]
    fn words_at_unaligned_offsets_reach_the_file() {
        let (f, fd) = file(8192);
        let map = Mapping::new(&fd, 4096, 4096).unwrap();
        map.write_u64(3, 0x0123_4567_89ab_cdef).unwrap();
        let mut back = [0u8; 8];
        f.read_exact_at(&mut back, 4096 + 3).unwrap();
        assert_eq!(back, 0x0123_4567_89ab_cdef_u64.to_le_bytes());
        f.write_all_at(&0x5a5a_1234_dead_beef_u64.to_le_bytes(), 4096 + 101)
            .unwrap();
        assert_eq!(map.read_u64(101).unwrap(), 0x5a5a_1234_dead_beef);
    }

    #[test]
    fn offsets_past_the_end_are_clamped_to_the_last_word() {
        let (f, fd) = file(4096);
        let map = Mapping::new(&fd, 0, 4096).unwrap();
        map.write_u64(usize::MAX, 7).unwrap();
        let mut back = [0u8; 8];
        f.read_exact_at(&mut back, 4088).unwrap();
        assert_eq!(u64::from_le_bytes(back), 7);
        assert_eq!(map.read_u64(4093).unwrap(), 7);
    }

    #[test]
    fn short_and_empty_mappings_are_refused() {
        let (_f, fd) = file(4096);
        assert!(Mapping::new(&fd, 0, 0).is_err());
        assert!(Mapping::new(&fd, 0, 7).is_err());
        assert!(Mapping::new(&fd, 1 << 63, 4096).is_err());
    }
}
