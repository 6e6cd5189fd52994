//! Device memory: one fd (memfd, hugetlbfs memfd or file) mapped shared into our address space.
//! The client maps the same fd, so server-side accesses and guest accesses are coherent.
//! This module holds the crate's only `unsafe`.

use std::fs::OpenOptions;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use crate::config::Backing;
use crate::error::DeviceError;

/// Page size the fd length is rounded to.
const PAGE: u64 = 4096;
/// Huge page size assumed for hugetlbfs backing.
const HUGE_PAGE: u64 = 2 << 20;

/// Mapped device memory.
#[derive(Debug)]
pub struct Memory {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `Memory` owns its mapping; all access goes through bounds-checked copies in `&self` /
// `&mut self` methods, so sending it to another thread is sound.
unsafe impl Send for Memory {}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DeviceError {
    let what = what.into();
    move |source| DeviceError::Backing { what, source }
}

impl Memory {
    /// Creates (or opens) the backing for `size` bytes and maps it.
    pub fn new(backing: &Backing, size: u64) -> Result<Self, DeviceError> {
        // Clients map whole pages: a memory size that is not page aligned still gets a whole
        // last page in the fd, so touching its tail through a mapping cannot SIGBUS the client.
        let paged = size
            .checked_next_multiple_of(PAGE)
            .ok_or(DeviceError::Overflow { base: 0, size })?;
        let (fd, fd_len) = match backing {
            Backing::Memfd => {
                let m = memfd::MemfdOptions::default()
                    .close_on_exec(true)
                    .create("vgrace-gpu-mem")
                    .map_err(|e| DeviceError::Backing {
                        what: "a memfd".into(),
                        source: std::io::Error::other(e),
                    })?;
                let f = m.into_file();
                f.set_len(paged).map_err(io("the memfd size"))?;
                (OwnedFd::from(f), paged)
            }
            Backing::Hugetlbfs => {
                let len = size
                    .div_ceil(HUGE_PAGE)
                    .checked_mul(HUGE_PAGE)
                    .ok_or(DeviceError::Overflow { base: 0, size })?;
                let m = memfd::MemfdOptions::default()
                    .close_on_exec(true)
                    .hugetlb(Some(memfd::HugetlbSize::Huge2MB))
                    .create("vgrace-gpu-mem-huge")
                    .map_err(|e| DeviceError::Backing {
                        what: "a hugetlbfs memfd".into(),
                        source: std::io::Error::other(e),
                    })?;
                let f = m.into_file();
                f.set_len(len)
                    .map_err(io("the hugetlbfs memfd size (are huge pages reserved?)"))?;
                (OwnedFd::from(f), len)
            }
            Backing::File(path) => {
                let name = path.display().to_string();
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .map_err(io(format!("backing file {name}")))?;
                let actual = f
                    .metadata()
                    .map_err(io(format!("backing file {name}")))?
                    .len();
                // A new file gets whole pages; an existing one may also be exactly `size`
                // (e.g. made by hand), which the kernel maps up to the page end anyway.
                if actual == 0 {
                    f.set_len(paged)
                        .map_err(io(format!("backing file {name}")))?;
                } else if actual != size && actual != paged {
                    return Err(DeviceError::BackingSizeMismatch {
                        path: name,
                        actual,
                        expected: size,
                    });
                }
                (OwnedFd::from(f), paged)
            }
        };
        let len = usize::try_from(fd_len).map_err(|_| DeviceError::Overflow { base: 0, size })?;
        let nz = NonZeroUsize::new(len).ok_or(DeviceError::LinkDown)?;
        // NORESERVE keeps a huge sparse memfd or file from reserving swap. Huge pages must be
        // reserved up front instead: without the reservation a fault would SIGBUS the server
        // when no huge page is left; with it, a shortage is a clean error here.
        let flags = match backing {
            Backing::Hugetlbfs => MapFlags::MAP_SHARED,
            _ => MapFlags::MAP_SHARED | MapFlags::MAP_NORESERVE,
        };
        // SAFETY: a fresh shared mapping of our own fd at a kernel-chosen address; it aliases no
        // Rust object.
        let ptr = unsafe {
            mmap(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                flags,
                &fd,
                0,
            )
        }
        .map_err(|e| DeviceError::Backing {
            what: "the memory mapping (hugetlbfs: are enough huge pages reserved?)".into(),
            source: e.into(),
        })?;
        Ok(Self {
            fd,
            ptr: ptr.cast(),
            len,
        })
    }

    /// The fd clients map.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Mapped length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty (never, a device has memory).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: u64, len: usize) -> Option<usize> {
        let off = usize::try_from(offset).ok()?;
        (off.checked_add(len)? <= self.len).then_some(off)
    }

    /// Copies memory at `offset` into `buf`; false if out of range.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> bool {
        let Some(off) = self.check(offset, buf.len()) else {
            return false;
        };
        // SAFETY: `check` proved off+len <= mapping length. The guest may write concurrently
        // through its own mapping; a byte copy of shared memory tolerates that.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), buf.as_mut_ptr(), buf.len())
        };
        true
    }

    /// Copies `data` into memory at `offset`; false if out of range.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        let Some(off) = self.check(offset, data.len()) else {
            return false;
        };
        // SAFETY: as in `read`; the mapping is writable.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(off), data.len())
        };
        true
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping created in `new`, unmapped once.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}
