//! Memory a client may map without being able to make the server take SIGBUS: a memfd sealed
//! against shrinking and growing before any client sees it, so `ftruncate` fails for every
//! holder of the fd and the server's own mapping (a [`vm_memory::MmapRegion`], read and written
//! with volatile copies because the guest writes the same pages concurrently) always stays
//! backed. BAR0's register file lives in one; a device's memory BAR may too.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};

use memfd::{FileSeal, HugetlbSize, MemfdOptions};
use vm_memory::{FileOffset, MmapRegion, VolatileMemory, VolatileSlice};

use crate::error::{MemfdError, OutOfRange};

/// A sealed memfd of a fixed length and the server's mapping of it.
#[derive(Debug)]
pub struct SealedMemfd {
    file: File,
    region: MmapRegion<()>,
}

fn err<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    what: &'static str,
) -> impl FnOnce(E) -> MemfdError {
    move |e| MemfdError {
        what,
        source: std::io::Error::other(e),
    }
}

impl SealedMemfd {
    /// A zeroed memfd called `name` of `len` bytes (a multiple of the page size, or of 2 MiB
    /// when `huge`). Sparse: nothing is allocated until written, and no swap is reserved. Huge
    /// pages are reserved up front instead: without the reservation a fault would SIGBUS the
    /// server when no huge page is left; with it, a shortage is an error here.
    pub fn new(name: &str, len: u64, huge: bool) -> Result<Self, MemfdError> {
        let (what, size_what) = if huge {
            (
                "a hugetlbfs memfd",
                "the hugetlbfs memfd size (are huge pages reserved?)",
            )
        } else {
            ("a memfd", "the memfd size")
        };
        let m = MemfdOptions::default()
            .close_on_exec(true)
            .allow_sealing(true)
            .hugetlb(huge.then_some(HugetlbSize::Huge2MB))
            .create(name)
            .map_err(err(what))?;
        m.as_file().set_len(len).map_err(|source| MemfdError {
            what: size_what,
            source,
        })?;
        // Sealed before any client can hold the fd: from here on nobody can change its size.
        m.add_seals(&[FileSeal::SealShrink, FileSeal::SealGrow, FileSeal::SealSeal])
            .map_err(err("the memfd seals"))?;
        let file = m.into_file();
        let mut flags = nix::libc::MAP_SHARED;
        if !huge {
            flags |= nix::libc::MAP_NORESERVE;
        }
        let too_big = || std::io::Error::from_raw_os_error(nix::libc::EOVERFLOW);
        let map_len = usize::try_from(len).map_err(|_| MemfdError {
            what: "the memory mapping",
            source: too_big(),
        })?;
        let mapping_fd = file.try_clone().map_err(|source| MemfdError {
            what: "the memfd",
            source,
        })?;
        let region = MmapRegion::build(
            Some(FileOffset::new(mapping_fd, 0)),
            map_len,
            nix::libc::PROT_READ | nix::libc::PROT_WRITE,
            flags,
        )
        .map_err(err(
            "the memory mapping (hugetlbfs: are enough huge pages reserved?)",
        ))?;
        Ok(Self { file, region })
    }

    /// The fd clients map.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The memfd as a file (for `fallocate`, `sendfile`, ...).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Copies memory at `offset` into `buf`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        self.slice(offset, buf.len())?.copy_to(buf);
        Ok(())
    }

    /// Copies `data` into memory at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        self.slice(offset, data.len())?.copy_from(data);
        Ok(())
    }

    /// The volatile view of `len` bytes at `offset` of the mapping (vm-memory checks the
    /// bounds).
    fn slice(&self, offset: u64, len: usize) -> Result<VolatileSlice<'_, ()>, OutOfRange> {
        usize::try_from(offset)
            .ok()
            .and_then(|at| self.region.get_slice(at, len).ok())
            .ok_or(OutOfRange { offset, len })
    }
}
