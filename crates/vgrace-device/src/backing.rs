//! Device memory: one fd (memfd, hugetlbfs memfd or file) that clients map, and the server's own
//! way to reach it, chosen so that **nothing any process does to the fd can make the server take
//! SIGBUS**:
//!
//! - memfd and hugetlbfs memfd are a [`SealedMemfd`] of the PCI core: sealed against shrinking
//!   and growing before any client sees them, and mapped by the server.
//! - A regular file cannot be sealed: a client holding the fd, or any process that may write the
//!   file, can truncate it. The server therefore never maps it; it reaches the file with
//!   `pread`/`pwrite` (and `sendfile` for bulk reads), which report a short file or a full
//!   filesystem as an errno. The file is locked (`flock`, exclusive) through a descriptor of its
//!   own that never leaves the process, so two servers cannot share one device memory.
//! - A file that shrinks under the server (a client `ftruncate`s the region fd it was given) is
//!   grown back to its size as soon as the server sees it: the lost range reads as zeros, as if
//!   the client had written them, and the next start finds a file of the right size. Seeing it
//!   costs nothing on the hot path: a short `pread` finds it at once, bulk reads `fstat` anyway
//!   before `sendfile`, writes look at most once a second ([`SHRINK_CHECK_MS`]), and the device's
//!   drop looks a last time.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use nix::fcntl::{Flock, FlockArg};
use tracing::warn;
use vfu_pci::MemfdError;
use vfu_pci::SealedMemfd;

use crate::config::Backing;
use crate::error::DeviceError;

/// Page size the fd length is rounded to.
const PAGE: u64 = 4096;
/// Huge page size assumed for hugetlbfs backing.
const HUGE_PAGE: u64 = 2 << 20;
/// Writes to a file backing look for a shrunk file at most this often (a `pwrite` past the end
/// of a shrunk file succeeds and leaves it short, so only an `fstat` sees it).
pub const SHRINK_CHECK_MS: u64 = 1000;

/// Why an access to device memory failed. Never a signal: every way the backing can fail is one
/// of these.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The access lies outside the memory (a bug in the caller's clipping).
    #[error("access of {len} bytes at {offset:#x} is outside the device memory")]
    OutOfRange {
        /// Offset of the access.
        offset: u64,
        /// Its length.
        len: usize,
    },
    /// The backing file is shorter than the device memory (shrunk again while it was being
    /// grown back).
    #[error("the backing file is {file_len} bytes, too short for an access at {offset:#x}")]
    FileTooShort {
        /// Offset of the access.
        offset: u64,
        /// The file's current length.
        file_len: u64,
    },
    /// The file system refused the access (e.g. out of space).
    #[error("backing file i/o failed")]
    Io(#[source] std::io::Error),
}

impl AccessError {
    /// The errno a client is answered with: EIO for a file that no longer covers the access,
    /// the system's own errno (ENOSPC, ...) for a refused write.
    pub fn errno(&self) -> vfu::Errno {
        match self {
            AccessError::OutOfRange { .. } => vfu::Errno::EFAULT,
            AccessError::FileTooShort { .. } => vfu::Errno::EIO,
            AccessError::Io(e) => e
                .raw_os_error()
                .map_or(vfu::Errno::EIO, vfu::Errno::from_raw),
        }
    }
}

/// How the server itself reaches the memory.
#[derive(Debug)]
enum Access {
    /// A shared mapping of a sealed memfd: it can never lose its pages.
    Mapped(SealedMemfd),
    /// pread/pwrite on a file that others may truncate; `_lock` holds the exclusive flock.
    FileIo {
        file: File,
        _lock: Flock<File>,
        /// Set once a shrink has been logged: a client that truncates in a loop costs one line.
        shrink_logged: AtomicBool,
        /// Set while writes fail (a full file system), so the condition is logged once, not per
        /// access.
        failing: AtomicBool,
        /// Milliseconds after `epoch` when a write next looks at the file's size.
        next_check: AtomicU64,
        epoch: Instant,
    },
}

/// Device memory and the fd clients map.
#[derive(Debug)]
pub struct Memory {
    len: u64,
    access: Access,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DeviceError {
    let what = what.into();
    move |source| DeviceError::Backing { what, source }
}

fn memfd_err(e: MemfdError) -> DeviceError {
    DeviceError::Backing {
        what: e.what.into(),
        source: e.source,
    }
}

impl Memory {
    /// Creates (or opens) the backing for `size` bytes.
    pub fn new(backing: &Backing, size: u64) -> Result<Self, DeviceError> {
        // Clients map whole pages: a memory size that is not page aligned still gets a whole
        // last page in the fd, so touching its tail through a mapping cannot SIGBUS the client.
        let paged = size
            .checked_next_multiple_of(PAGE)
            .ok_or(DeviceError::Overflow { base: 0, size })?;
        match backing {
            Backing::Memfd => Self::sealed_memfd(paged, false),
            Backing::Hugetlbfs => {
                let len = size
                    .checked_next_multiple_of(HUGE_PAGE)
                    .ok_or(DeviceError::Overflow { base: 0, size })?;
                Self::sealed_memfd(len, true)
            }
            Backing::File(path) => Self::file(path, size, paged),
        }
    }

    fn sealed_memfd(len: u64, huge: bool) -> Result<Self, DeviceError> {
        let name = if huge {
            "vgrace-gpu-mem-huge"
        } else {
            "vgrace-gpu-mem"
        };
        let memfd = SealedMemfd::new(name, len, huge).map_err(memfd_err)?;
        Ok(Self {
            len,
            access: Access::Mapped(memfd),
        })
    }

    fn file(path: &Path, size: u64, paged: u64) -> Result<Self, DeviceError> {
        let name = path.display().to_string();
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                // Guest memory is private to the server, like its sockets and traces.
                .mode(0o600)
                .open(path)
                .map_err(io(format!("backing file {name}")))
        };
        // The lock lives on an open file description of its own: clients receive (a duplicate
        // of) the other one, and an `flock(LOCK_UN)` on theirs cannot release ours.
        let lock = Flock::lock(open()?, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            if e == nix::errno::Errno::EWOULDBLOCK {
                DeviceError::BackingInUse(name.clone())
            } else {
                DeviceError::Backing {
                    what: format!("a lock on backing file {name}"),
                    source: e.into(),
                }
            }
        })?;
        let file = open()?;
        let actual = file
            .metadata()
            .map_err(io(format!("backing file {name}")))?
            .len();
        // A new file gets whole pages; an existing one may also be exactly `size` (made by
        // hand), which the kernel maps up to the page end anyway.
        if actual == 0 {
            file.set_len(paged)
                .map_err(io(format!("backing file {name}")))?;
        } else if actual < size {
            return Err(DeviceError::BackingSizeMismatch {
                path: name,
                actual,
                expected: size,
            });
        } else if actual > paged {
            // A client holding the fd can grow the file; the bytes past the memory are not
            // device memory, so they do not stop a restart.
            warn!(
                "backing file {name} is {actual} bytes, larger than the {size}-byte device \
                 memory: serving the first {size} bytes and ignoring the rest"
            );
        }
        Ok(Self {
            len: paged,
            access: Access::FileIo {
                file,
                _lock: lock,
                shrink_logged: AtomicBool::new(false),
                failing: AtomicBool::new(false),
                next_check: AtomicU64::new(SHRINK_CHECK_MS),
                epoch: Instant::now(),
            },
        })
    }

    /// The fd clients map.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.handle().as_fd()
    }

    /// The file clients map.
    fn handle(&self) -> &File {
        match &self.access {
            Access::Mapped(memfd) => memfd.file(),
            Access::FileIo { file, .. } => file,
        }
    }

    /// For a file backing, a second handle on the file, to set it right and flush it to disk
    /// at exit without the device (whose lock a stuck session may hold); `None` for a memfd,
    /// which has no disk.
    pub fn file_for_sync(&self) -> Result<Option<FileSync>, DeviceError> {
        match &self.access {
            Access::FileIo { file, .. } => file
                .try_clone()
                .map(|file| {
                    Some(FileSync {
                        file,
                        len: self.len,
                    })
                })
                .map_err(io("the backing file")),
            Access::Mapped(_) => Ok(None),
        }
    }

    /// Length of the memory in the fd (whole pages).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when empty (never, a device has memory).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: u64, len: usize) -> Result<(), AccessError> {
        let end = offset.checked_add(len as u64);
        match end {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(AccessError::OutOfRange { offset, len }),
        }
    }

    /// For file backing: grows a file that someone shrank back to the memory's length, so the
    /// lost range reads as zeros (as if the client had written them) and a restart finds the
    /// file it made. Logged the first time only. Returns whether the file was short.
    pub fn restore(&self) -> Result<bool, AccessError> {
        let Access::FileIo { shrink_logged, .. } = &self.access else {
            return Ok(false);
        };
        let file_len = self.handle().metadata().map_err(AccessError::Io)?.len();
        if file_len >= self.len {
            return Ok(false);
        }
        if !shrink_logged.swap(true, Ordering::Relaxed) {
            warn!(
                file_len,
                len = self.len,
                "the backing file was shrunk (a client holding its fd?): growing it back to its \
                 size, the lost range reads as zeros (later shrinks are repaired without a log \
                 line)"
            );
        }
        self.handle().set_len(self.len).map_err(AccessError::Io)?;
        Ok(true)
    }

    /// For writes to a file backing: [`Memory::restore`] at most every [`SHRINK_CHECK_MS`]. The
    /// write itself succeeded, so a failed repair (e.g. a file-size limit) is not its error: it
    /// is tried again at the next check, and a read past the end reports it.
    fn restore_now_and_then(&self) {
        let Access::FileIo {
            next_check, epoch, ..
        } = &self.access
        else {
            return;
        };
        let now = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let due = next_check.load(Ordering::Relaxed);
        if now >= due
            && next_check
                .compare_exchange(
                    due,
                    now.saturating_add(SHRINK_CHECK_MS),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            let _ = self.restore();
        }
    }

    /// pread of the whole of `buf`; a short read is a shrunk file, grown back before one retry.
    fn read_file(&self, offset: u64, buf: &mut [u8]) -> Result<(), AccessError> {
        match self.handle().read_exact_at(buf, offset) {
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.restore()?;
                self.handle()
                    .read_exact_at(buf, offset)
                    .map_err(|e| match e.kind() {
                        // Shrunk again between the repair and the read.
                        std::io::ErrorKind::UnexpectedEof => AccessError::FileTooShort {
                            offset,
                            file_len: self.handle().metadata().map_or(0, |m| m.len()),
                        },
                        _ => AccessError::Io(e),
                    })
            }
            other => other.map_err(AccessError::Io),
        }
    }

    /// Copies memory at `offset` into `buf`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), AccessError> {
        self.check(offset, buf.len())?;
        match &self.access {
            Access::Mapped(memfd) => memfd.read(offset, buf).map_err(out_of_range),
            Access::FileIo { .. } => self.read_file(offset, buf),
        }
    }

    /// Copies `data` into memory at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        self.check(offset, data.len())?;
        match &self.access {
            Access::Mapped(memfd) => memfd.write(offset, data).map_err(out_of_range),
            Access::FileIo { failing, .. } => {
                // A write into a shrunk file succeeds (and grows it only to its own end): the
                // size is looked at now and then, not per write.
                match self.handle().write_all_at(data, offset) {
                    Ok(()) => {
                        failing.store(false, Ordering::Relaxed);
                        self.restore_now_and_then();
                        Ok(())
                    }
                    Err(e) => {
                        if !failing.swap(true, Ordering::Relaxed) {
                            warn!(
                                "writes to the backing file fail ({e}): answering with the errno"
                            );
                        }
                        Err(AccessError::Io(e))
                    }
                }
            }
        }
    }

    /// The fd and offset from which `len` bytes at `offset` can be sent without copying them
    /// through a buffer (`sendfile`). A shrunk file is grown back first (one `fstat` per bulk
    /// read); shrunk again during the send, the rest goes out as all ones.
    pub fn span(&self, offset: u64, len: usize) -> Result<(BorrowedFd<'_>, u64), AccessError> {
        self.check(offset, len)?;
        self.restore()?;
        Ok((self.fd(), offset))
    }
}

/// A file backing as the way out sees it: its own handle on the file and the size it must have.
#[derive(Debug)]
pub struct FileSync {
    file: File,
    len: u64,
}

impl FileSync {
    /// Grows the file back if a client shrank it since the last look (the next start must find
    /// its size; the lost range reads as zeros, as at run time), then flushes it to disk.
    pub fn finish(&self) -> std::io::Result<()> {
        if self.file.metadata()?.len() < self.len {
            warn!("the backing file was shrunk by a client; growing it back at exit");
            self.file.set_len(self.len)?;
        }
        self.file.sync_data()
    }
}

impl Drop for Memory {
    /// A file shrunk since the last look is grown back before the server lets go of it, so the
    /// next start on it finds the size it expects.
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            warn!("cannot grow the shrunk backing file back: {e}");
        }
    }
}

fn out_of_range(e: vfu_pci::OutOfRange) -> AccessError {
    AccessError::OutOfRange {
        offset: e.offset,
        len: e.len,
    }
}
