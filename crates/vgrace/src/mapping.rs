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
