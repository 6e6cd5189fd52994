//! A client-side shared mapping of a region fd, for the conformance check's coherence rule.
//! This and `serve`'s inherited-fd takeover are the binary's only `unsafe`.

use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use anyhow::{bail, Context, Result};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// A MAP_SHARED read/write mapping, unmapped on drop.
pub struct Mapping {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes of `fd` from `offset` (which must be page aligned).
    pub fn new(fd: &OwnedFd, offset: u64, len: u64) -> Result<Self> {
        let len = usize::try_from(len).context("mapping length does not fit in usize")?;
        let Some(nz) = NonZeroUsize::new(len) else {
            bail!("empty mapping")
        };
        if len < 8 {
            bail!("mapping shorter than one word");
        }
        let offset = libc::off_t::try_from(offset).context("fd offset too large")?;
        // SAFETY: a fresh shared mapping at an address the kernel picks; it aliases no Rust object.
        let ptr = unsafe {
            mmap(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                offset,
            )
        }
        .context("mmap of the region fd failed")?;
        Ok(Self { ptr, len })
    }

    /// Reads the u64 at byte `offset` (clamped into the mapping).
    pub fn read_u64(&self, offset: usize) -> u64 {
        let at = offset.min(self.len - 8);
        // SAFETY: `at + 8 <= len`, so the read stays inside the live mapping; volatile because
        // another process (the server) writes the same memory.
        unsafe {
            self.ptr
                .as_ptr()
                .cast::<u8>()
                .add(at)
                .cast::<u64>()
                .read_volatile()
        }
    }

    /// Writes the u64 at byte `offset` (clamped into the mapping).
    pub fn write_u64(&self, offset: usize, value: u64) {
        let at = offset.min(self.len - 8);
        // SAFETY: as in `read_u64`; the mapping is writable and shared with the server by design.
        unsafe {
            self.ptr
                .as_ptr()
                .cast::<u8>()
                .add(at)
                .cast::<u64>()
                .write_volatile(value)
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping made in `new`, unmapped once here.
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}
