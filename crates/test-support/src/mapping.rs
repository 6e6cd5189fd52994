//! A client's shared mapping of a region fd: a vm-memory [`MmapRegion`] reached only through
//! bounds-checked volatile copies (the server writes the same pages), so callers need no
//! `unsafe` and no alignment assumptions.

use std::fs::File;
use std::os::fd::BorrowedFd;

use vm_memory::{FileOffset, MmapRegion, VolatileMemory, VolatileSlice};

/// A MAP_SHARED read/write mapping of `len` bytes of an fd, unmapped on drop.
#[derive(Debug)]
pub struct SharedMapping {
    region: MmapRegion<()>,
}

impl SharedMapping {
    /// Maps `len` bytes of `fd` from `offset` (page aligned). The mapping keeps a duplicate of
    /// the fd while it lives.
    pub fn new(fd: BorrowedFd<'_>, offset: u64, len: usize) -> std::io::Result<Self> {
        if i64::try_from(offset).is_err() {
            return Err(std::io::Error::from_raw_os_error(libc::EOVERFLOW));
        }
        let file = File::from(fd.try_clone_to_owned()?);
        let region = MmapRegion::build(
            Some(FileOffset::new(file, offset)),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .map_err(std::io::Error::other)?;
        Ok(Self { region })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// True for an empty mapping (never: mmap refuses length 0).
    pub fn is_empty(&self) -> bool {
        self.region.len() == 0
    }

    /// The whole mapping as a volatile slice (`copy_from`/`copy_to` are memcpy-fast for bytes).
    pub fn whole(&self) -> VolatileSlice<'_, ()> {
        self.region.as_volatile_slice()
    }

    /// `len` bytes at `at`; panics if they are not inside the mapping.
    pub fn slice(&self, at: usize, len: usize) -> VolatileSlice<'_, ()> {
        self.region
            .get_slice(at, len)
            .unwrap_or_else(|e| panic!("{len} bytes at {at:#x} of the mapping: {e}"))
    }

    /// Copies `buf.len()` bytes at `at` into `buf`.
    pub fn read(&self, at: usize, buf: &mut [u8]) {
        self.slice(at, buf.len()).copy_to(buf);
    }

    /// Copies `data` to `at`.
    pub fn write(&self, at: usize, data: &[u8]) {
        self.slice(at, data.len()).copy_from(data);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;

    use super::*;

    #[test]
    fn reads_and_writes_at_any_offset_reach_the_file() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(8192).unwrap();
        let map = SharedMapping::new(f.as_fd(), 4096, 4096).unwrap();
        assert_eq!(map.len(), 4096);
        map.write(5, b"vgrace");
        let mut back = [0u8; 6];
        f.read_exact_at(&mut back, 4096 + 5).unwrap();
        assert_eq!(&back, b"vgrace");
        f.write_all_at(b"grace", 4096 + 4090).unwrap();
        let mut seen = [0u8; 5];
        map.read(4090, &mut seen);
        assert_eq!(&seen, b"grace");
        map.whole().copy_from(&[0xa5u8; 4096]);
        f.read_exact_at(&mut seen, 4096 + 4091).unwrap();
        assert_eq!(seen, [0xa5; 5]);
    }

    #[test]
    #[should_panic(expected = "of the mapping")]
    fn an_access_past_the_end_panics_instead_of_faulting() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(4096).unwrap();
        let map = SharedMapping::new(f.as_fd(), 0, 4096).unwrap();
        map.write(4093, b"four");
    }
}
