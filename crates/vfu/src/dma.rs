//! The client's DMA regions: a bounded table, fd-backed regions mapped into our address space,
//! and bounds-checked reads and writes of guest memory.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::statfs::{self, FsType};
use vm_memory::{FileOffset, MmapRegion, VolatileMemory};

use crate::errno::Errno;
use crate::sync::relock;
use crate::wire::{DmaMap, DMA_FLAG_READ, DMA_FLAG_WRITE};

/// What one client may make the server hold through DMA_MAP; past any bound the map is
/// ENOSPC. fds are counted per distinct file (every map of one memfd shares one fd), mappings
/// and mapped bytes per region with a mapping (sealed fds; other fds are reached with
/// pread/pwrite and cost no address space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DmaLimits {
    /// Most regions, with or without an fd (the `max_dma_maps` capability).
    pub max_regions: u32,
    /// Most distinct files (so fds) held open.
    pub max_files: usize,
    /// Most regions mapped into our address space (each one mapping).
    pub max_mappings: usize,
    /// Most bytes mapped into our address space.
    pub max_mapped_bytes: u64,
}

/// Default [`DmaLimits::max_files`]: a VMM maps guest RAM from a few memory backends.
pub(crate) const MAX_DMA_FILES: usize = 64;
/// Default [`DmaLimits::max_mappings`]: QEMU maps one region per RAM section (a virtio-mem
/// device adds one per plugged block).
pub(crate) const MAX_DMA_MAPPINGS: usize = 4096;
/// Default [`DmaLimits::max_mapped_bytes`]: 4 TiB of guest RAM.
pub(crate) const MAX_DMA_MAPPED_BYTES: u64 = 4 << 40;
/// All clients of the process together map at most this much (half of x86-64's 128 TiB of
/// user address space), whatever each one's limit.
pub(crate) const PROCESS_MAPPED_BYTES: u64 = 64 << 40;
/// All clients of the process together hold at most this share of the soft fd limit
/// (RLIMIT_NOFILE) in DMA files; the rest stays for sockets, control connections and files.
const PROCESS_FILE_SHARE: u64 = 4;

impl DmaLimits {
    /// The default bounds with at most `max_regions` regions.
    pub(crate) fn new(max_regions: u32) -> Self {
        Self {
            max_regions,
            max_files: MAX_DMA_FILES,
            max_mappings: MAX_DMA_MAPPINGS,
            max_mapped_bytes: MAX_DMA_MAPPED_BYTES,
        }
    }
}

/// What every client of the process holds together: DMA files and mapped bytes. Each client's
/// share is reserved here as well as in its own table, so many clients (one per device of a
/// node) cannot together take the fds the accept loops and the control socket need.
mod pool {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static FILES: AtomicU64 = AtomicU64::new(0);
    static BYTES: AtomicU64 = AtomicU64::new(0);

    /// A quarter of the soft fd limit as the process starts using DMA files.
    fn file_cap() -> u64 {
        static CAP: OnceLock<u64> = OnceLock::new();
        *CAP.get_or_init(|| {
            let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_or(1024, |(soft, _)| soft);
            (soft / super::PROCESS_FILE_SHARE).max(1)
        })
    }

    fn take(counter: &AtomicU64, n: u64, cap: u64) -> bool {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|&t| t <= cap)
            })
            .is_ok()
    }

    /// A share of the process-wide pool, given back on drop.
    #[derive(Debug)]
    pub(super) struct Share {
        files: u64,
        bytes: u64,
    }

    impl Share {
        /// One file, or `None` when the process holds its share of fds already.
        pub(super) fn file() -> Option<Self> {
            take(&FILES, 1, file_cap()).then_some(Self { files: 1, bytes: 0 })
        }

        /// `bytes` of address space, or `None` past the process bound.
        pub(super) fn bytes(bytes: u64) -> Option<Self> {
            take(&BYTES, bytes, super::PROCESS_MAPPED_BYTES).then_some(Self { files: 0, bytes })
        }
    }

    impl Drop for Share {
        fn drop(&mut self) {
            FILES.fetch_sub(self.files, Ordering::AcqRel);
            BYTES.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// A client's open file, shared by every region that maps it (same inode, same access mode),
/// with its share of the process's fd pool.
#[derive(Debug)]
struct HeldFile {
    file: Arc<std::fs::File>,
    regions: usize,
    _share: pool::Share,
}

/// Identifies one file for sharing: device, inode and access mode (a read-only fd must not
/// stand in for a writable one).
type FileKey = (u64, u64, i32);

/// How the server reaches a region's memory. A mapping faults (SIGBUS) if its file shrinks, so
/// only fds sealed against shrinking (QEMU's memfd guest RAM is) are mapped; any other fd is
/// reached with pread/pwrite, where a shrunk file is an errno, never a signal.
#[derive(Debug)]
enum Access {
    /// A shared mapping of a sealed fd, copied through volatile slices (the guest writes it),
    /// with its share of the process's address-space pool.
    Mapped {
        region: MmapRegion<()>,
        _share: pool::Share,
    },
    /// The fd itself at `offset`.
    FileIo {
        file: Arc<std::fs::File>,
        offset: u64,
    },
}

/// One DMA region.
#[derive(Debug)]
pub(crate) struct DmaRegion {
    /// DMA address.
    pub address: u64,
    /// Size.
    pub size: u64,
    /// DMA_FLAG_READ / DMA_FLAG_WRITE.
    pub flags: u32,
    access: Option<Access>,
    /// The held file this region uses (released with the region).
    file: Option<FileKey>,
}

/// Where reads and writes go for regions without an fd: the server's twin-socket channel
/// (DMA_READ/DMA_WRITE messages). A trait so that this table stays free of protocol I/O.
pub(crate) trait DmaTransfer: std::fmt::Debug + Send {
    /// Reads `buf.len()` bytes of guest memory at `address`.
    fn read(&mut self, address: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Writes `data` to guest memory at `address`.
    fn write(&mut self, address: u64, data: &[u8]) -> Result<(), Errno>;
}

/// How long one DMA_READ/DMA_WRITE on the twin socket may wait to be sent or answered. The
/// device lock may be held meanwhile, so this stays under the control plane's wait for it.
pub const CHANNEL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug)]
struct HandleInner {
    table: std::sync::Mutex<DmaTable>,
    channel: std::sync::Mutex<Option<Box<dyn DmaTransfer>>>,
}

/// A device's view of the client's DMA regions: shared with the session that maintains them,
/// valid for the current client only (emptied when it goes). Regions with an fd are accessed
/// through our mapping; regions without one through DMA_READ/DMA_WRITE messages on the twin
/// socket, when the client set one up (else ENOTSUP).
#[derive(Debug, Clone)]
pub struct DmaHandle(std::sync::Arc<HandleInner>);

impl DmaHandle {
    /// Wraps a table.
    pub(crate) fn new(table: DmaTable) -> Self {
        Self(std::sync::Arc::new(HandleInner {
            table: std::sync::Mutex::new(table),
            channel: std::sync::Mutex::new(None),
        }))
    }

    /// Runs `f` on the table.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut DmaTable) -> T) -> T {
        f(&mut relock(&self.0.table))
    }

    /// Sets (or clears) the twin-socket channel for regions without an fd.
    pub(crate) fn set_channel(&self, channel: Option<Box<dyn DmaTransfer>>) {
        *relock(&self.0.channel) = channel;
    }

    /// Reads guest memory at `address` into `buf`; the range must lie in one region the client
    /// made readable.
    pub fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let mapped = self.with(|t| t.read(address, buf));
        match mapped {
            Err(Errno::ENOTSUP) => relock(&self.0.channel)
                .as_mut()
                .ok_or(Errno::ENOTSUP)?
                .read(address, buf),
            other => other,
        }
    }

    /// Writes `data` to guest memory at `address`; the range must lie in one region the client
    /// made writable.
    pub fn write(&self, address: u64, data: &[u8]) -> Result<(), Errno> {
        let mapped = self.with(|t| t.write(address, data));
        match mapped {
            Err(Errno::ENOTSUP) => relock(&self.0.channel)
                .as_mut()
                .ok_or(Errno::ENOTSUP)?
                .write(address, data),
            other => other,
        }
    }
}

/// The DMA regions of one client.
#[derive(Debug)]
pub(crate) struct DmaTable {
    regions: BTreeMap<u64, DmaRegion>,
    limits: DmaLimits,
    files: HashMap<FileKey, HeldFile>,
    mappings: usize,
    mapped_bytes: u64,
}

impl DmaTable {
    /// An empty table holding at most `max` regions, with the default bounds otherwise.
    pub(crate) fn new(max: u32) -> Self {
        Self::with_limits(DmaLimits::new(max))
    }

    /// An empty table with `limits`.
    pub(crate) fn with_limits(limits: DmaLimits) -> Self {
        Self {
            regions: BTreeMap::new(),
            limits,
            files: HashMap::new(),
            mappings: 0,
            mapped_bytes: 0,
        }
    }

    /// True when empty.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Distinct files (so fds) held open for the regions.
    #[cfg(test)]
    fn files(&self) -> usize {
        self.files.len()
    }

    /// Adds a region; with an fd, maps it (sealed) or keeps it for pread/pwrite. Overlap is
    /// EEXIST; a full table, or a map past the fd, mapping or mapped-bytes bound (the client's
    /// or the process's), ENOSPC; an fd offset at or past 2^63 (or one the size carries past
    /// it) EINVAL, as no file reaches there; an fd that cannot be mapped returns mmap's errno.
    pub(crate) fn add(&mut self, map: &DmaMap, fd: Option<OwnedFd>) -> Result<(), Errno> {
        let end = map.address.checked_add(map.size).ok_or(Errno::EOVERFLOW)?;
        if self.regions.len() >= self.limits.max_regions as usize {
            return Err(Errno::ENOSPC);
        }
        let overlaps = self
            .regions
            .range(..end)
            .next_back()
            .is_some_and(|(_, r)| r.address + r.size > map.address);
        if overlaps {
            return Err(Errno::EEXIST);
        }
        let (access, file) = match fd {
            None => (None, None),
            Some(fd) => {
                let file_end = map.offset.checked_add(map.size).ok_or(Errno::EINVAL)?;
                if file_end > i64::MAX as u64 {
                    return Err(Errno::EINVAL);
                }
                let (key, file) = self.hold(fd)?;
                match self.access(file, map) {
                    Ok(access) => (Some(access), Some(key)),
                    Err(e) => {
                        self.release(key);
                        return Err(e);
                    }
                }
            }
        };
        if let Some(Access::Mapped { .. }) = access {
            self.mappings += 1;
            self.mapped_bytes += map.size;
        }
        self.regions.insert(
            map.address,
            DmaRegion {
                address: map.address,
                size: map.size,
                flags: map.flags,
                access,
                file,
            },
        );
        Ok(())
    }

    /// The open file for `fd`: one already held for the same file and access mode (the new fd
    /// is closed), or `fd` itself, counted against the client's and the process's fd bounds.
    fn hold(&mut self, fd: OwnedFd) -> Result<(FileKey, Arc<std::fs::File>), Errno> {
        let st = nix::sys::stat::fstat(&fd)?;
        let mode = fcntl(&fd, FcntlArg::F_GETFL)? & nix::libc::O_ACCMODE;
        let key = (st.st_dev, st.st_ino, mode);
        if let Some(held) = self.files.get_mut(&key) {
            held.regions += 1;
            return Ok((key, held.file.clone()));
        }
        if self.files.len() >= self.limits.max_files {
            return Err(Errno::ENOSPC);
        }
        let share = pool::Share::file().ok_or(Errno::ENOSPC)?;
        let file = Arc::new(std::fs::File::from(fd));
        self.files.insert(
            key,
            HeldFile {
                file: file.clone(),
                regions: 1,
                _share: share,
            },
        );
        Ok((key, file))
    }

    /// One region less uses the file `key`; the last one closes it.
    fn release(&mut self, key: FileKey) {
        if let Some(held) = self.files.get_mut(&key) {
            held.regions -= 1;
            if held.regions == 0 {
                self.files.remove(&key);
            }
        }
    }

    /// How the region of `map` reaches `file`: mapped when sealed (within the mapping bounds),
    /// else pread/pwrite.
    fn access(&self, file: Arc<std::fs::File>, map: &DmaMap) -> Result<Access, Errno> {
        if !sealed_against_shrinking(&*file) {
            return file_io(file, map);
        }
        if self.mappings >= self.limits.max_mappings
            || self.mapped_bytes.saturating_add(map.size) > self.limits.max_mapped_bytes
        {
            return Err(Errno::ENOSPC);
        }
        let share = pool::Share::bytes(map.size).ok_or(Errno::ENOSPC)?;
        map_sealed(file, map).map(|region| Access::Mapped {
            region,
            _share: share,
        })
    }

    /// Drops a region's hold on its file and mapping.
    fn forget(&mut self, r: &DmaRegion) {
        if let Some(Access::Mapped { .. }) = r.access {
            self.mappings -= 1;
            self.mapped_bytes -= r.size;
        }
        if let Some(key) = r.file {
            self.release(key);
        }
    }

    /// Removes exactly the region `[address, address+size)`; anything else is ENOENT.
    pub(crate) fn remove(&mut self, address: u64, size: u64) -> Result<(), Errno> {
        match self.regions.get(&address) {
            Some(r) if r.size == size => {
                if let Some(r) = self.regions.remove(&address) {
                    self.forget(&r);
                }
                Ok(())
            }
            _ => Err(Errno::ENOENT),
        }
    }

    /// Drops every region (client went away).
    pub(crate) fn clear(&mut self) {
        self.regions.clear();
        self.files.clear();
        self.mappings = 0;
        self.mapped_bytes = 0;
    }

    /// The region containing `[address, address+len)` with the access `need`s, its memory and
    /// the offset into it.
    fn locate(&self, address: u64, len: usize, need: u32) -> Result<(&Access, u64), Errno> {
        let len64 = u64::try_from(len).map_err(|_| Errno::EINVAL)?;
        let end = address.checked_add(len64).ok_or(Errno::EOVERFLOW)?;
        let (_, r) = self
            .regions
            .range(..=address)
            .next_back()
            .ok_or(Errno::EFAULT)?;
        if end > r.address + r.size {
            return Err(Errno::EFAULT);
        }
        if r.flags & need != need {
            return Err(Errno::EPERM);
        }
        let access = r.access.as_ref().ok_or(Errno::ENOTSUP)?;
        Ok((access, address - r.address))
    }

    /// Reads guest memory at `address` into `buf`; the range must lie in one region with an fd.
    pub(crate) fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), Errno> {
        match self.locate(address, buf.len(), DMA_FLAG_READ)? {
            (Access::Mapped { region: m, .. }, off) => {
                volatile(m, off, buf.len())?.copy_to(buf);
                Ok(())
            }
            (Access::FileIo { file, offset }, off) => file
                .read_exact_at(buf, offset + off)
                .map_err(|e| io_errno(&e)),
        }
    }

    /// Writes `data` to guest memory at `address`; the range must lie in one region with an fd.
    pub(crate) fn write(&self, address: u64, data: &[u8]) -> Result<(), Errno> {
        match self.locate(address, data.len(), DMA_FLAG_WRITE)? {
            (Access::Mapped { region: m, .. }, off) => {
                volatile(m, off, data.len())?.copy_from(data);
                Ok(())
            }
            (Access::FileIo { file, offset }, off) => {
                // Never grow the client's file: a write past its end is a fault, as a read is.
                let file_len = file.metadata().map_err(|e| io_errno(&e))?.len();
                if offset + off + data.len() as u64 > file_len {
                    return Err(Errno::EFAULT);
                }
                file.write_all_at(data, offset + off)
                    .map_err(|e| io_errno(&e))
            }
        }
    }
}

/// The volatile view of `len` bytes at `off` of a mapping (bounds-checked by vm-memory).
fn volatile(
    m: &MmapRegion<()>,
    off: u64,
    len: usize,
) -> Result<vm_memory::VolatileSlice<'_, ()>, Errno> {
    usize::try_from(off)
        .ok()
        .and_then(|at| m.get_slice(at, len).ok())
        .ok_or(Errno::EFAULT)
}

/// An i/o error as the errno a device should see: a file that ended is a fault.
fn io_errno(e: &std::io::Error) -> Errno {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Errno::EFAULT,
        _ => e.raw_os_error().map_or(Errno::EIO, Errno::from_raw),
    }
}

/// True when nobody can shrink `fd` (a memfd sealed with F_SEAL_SHRINK); other files, or fds
/// that cannot be sealed, answer false.
fn sealed_against_shrinking(fd: &impl std::os::fd::AsFd) -> bool {
    fcntl(fd, FcntlArg::F_GET_SEALS)
        .map(|bits| SealFlag::from_bits_truncate(bits).contains(SealFlag::F_SEAL_SHRINK))
        .unwrap_or(false)
}

/// File systems whose I/O can wait without bound on someone else (a FUSE daemon the client
/// runs, a network server): a DMA fd there would let a client stall the device lock.
const UNBOUNDED_FILE_SYSTEMS: [FsType; 6] = [
    statfs::FUSE_SUPER_MAGIC,
    statfs::NFS_SUPER_MAGIC,
    statfs::SMB_SUPER_MAGIC,
    FsType(0xff53_4d42), // CIFS
    FsType(0xfe53_4d42), // SMB2
    FsType(0x0102_1997), // 9P
];

/// An unsealed fd, reached with pread/pwrite: it must be a regular file on a local file system.
fn file_io(file: Arc<std::fs::File>, map: &DmaMap) -> Result<Access, Errno> {
    if map.size == 0 {
        return Err(Errno::EINVAL);
    }
    // Refuse what cannot be read or written as a file at all (a pipe, a socket, a FIFO).
    let meta = file.metadata().map_err(|e| io_errno(&e))?;
    if !meta.is_file() {
        return Err(Errno::EINVAL);
    }
    let fs = statfs::fstatfs(&*file)?.filesystem_type();
    if UNBOUNDED_FILE_SYSTEMS.contains(&fs) {
        return Err(Errno::EINVAL);
    }
    Ok(Access::FileIo {
        file,
        offset: map.offset,
    })
}

/// A sealed fd, mapped. Sealed against shrinking, the file can only keep or grow its length:
/// a mapping inside it now stays backed for good; one reaching past its end would fault at once.
fn map_sealed(file: Arc<std::fs::File>, map: &DmaMap) -> Result<MmapRegion<()>, Errno> {
    let len = usize::try_from(map.size).map_err(|_| Errno::EINVAL)?;
    if len == 0 {
        return Err(Errno::EINVAL);
    }
    let file_len = file.metadata().map_err(|e| io_errno(&e))?.len();
    let end = map.offset.checked_add(map.size).ok_or(Errno::EINVAL)?;
    if end > file_len {
        return Err(Errno::EINVAL);
    }
    let mut prot = 0;
    if map.flags & DMA_FLAG_READ != 0 {
        prot |= nix::libc::PROT_READ;
    }
    if map.flags & DMA_FLAG_WRITE != 0 {
        prot |= nix::libc::PROT_WRITE;
    }
    MmapRegion::build(
        Some(FileOffset::from_arc(file, map.offset)),
        len,
        prot,
        nix::libc::MAP_SHARED | nix::libc::MAP_NORESERVE,
    )
    .map_err(|e| match e {
        vm_memory::mmap::MmapRegionError::Mmap(io) => io_errno(&io),
        _ => Errno::EINVAL,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn memfd(size: u64) -> OwnedFd {
        let f = tempfile::tempfile().unwrap();
        f.set_len(size).unwrap();
        f.into()
    }

    fn map(address: u64, size: u64) -> DmaMap {
        DmaMap {
            argsz: 32,
            flags: DMA_FLAG_READ | DMA_FLAG_WRITE,
            offset: 0,
            address,
            size,
        }
    }

    #[test]
    fn overlapping_map_is_eexist() {
        let mut t = DmaTable::new(8);
        t.add(&map(0x1000, 0x2000), None).unwrap();
        assert_eq!(t.add(&map(0x2000, 0x1000), None), Err(Errno::EEXIST));
    }

    #[test]
    fn unmap_must_match_exactly() {
        let mut t = DmaTable::new(8);
        t.add(&map(0x1000, 0x2000), None).unwrap();
        assert_eq!(t.remove(0x1000, 0x1000), Err(Errno::ENOENT));
        assert_eq!(t.remove(0x1000, 0x2000), Ok(()));
    }

    #[test]
    fn table_is_bounded() {
        let mut t = DmaTable::new(1);
        t.add(&map(0, 0x1000), None).unwrap();
        assert_eq!(t.add(&map(0x1000, 0x1000), None), Err(Errno::ENOSPC));
    }

    #[test]
    fn mapped_region_reads_back_writes_and_is_bounds_checked() {
        let mut t = DmaTable::new(8);
        t.add(&map(0x10000, 0x1000), Some(memfd(0x1000))).unwrap();
        t.write(0x10ff8, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        let mut b = [0u8; 8];
        t.read(0x10ff8, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(t.read(0x10ffc, &mut b), Err(Errno::EFAULT));
    }

    #[test]
    fn pipe_fd_cannot_be_mapped() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let mut t = DmaTable::new(8);
        assert!(t.add(&map(0, 0x1000), Some(r)).is_err());
        assert!(t.is_empty());
    }

    fn sealed_memfd(size: u64) -> OwnedFd {
        let m = memfd::MemfdOptions::default()
            .allow_sealing(true)
            .create("dma-test")
            .unwrap();
        m.as_file().set_len(size).unwrap();
        m.add_seals(&[memfd::FileSeal::SealShrink, memfd::FileSeal::SealGrow])
            .unwrap();
        m.into_file().into()
    }

    #[test]
    fn sealed_memfd_is_mapped_and_unsealed_fd_is_reached_with_file_io() {
        let mut t = DmaTable::new(8);
        t.add(&map(0x10000, 0x1000), Some(sealed_memfd(0x1000)))
            .unwrap();
        t.add(&map(0x20000, 0x1000), Some(memfd(0x1000))).unwrap();
        let kinds: Vec<bool> = t
            .regions
            .values()
            .map(|r| matches!(r.access, Some(Access::Mapped { .. })))
            .collect();
        assert_eq!(kinds, vec![true, false]);
        for base in [0x10000u64, 0x20000] {
            t.write(base + 8, b"guestmem").unwrap();
            let mut b = [0u8; 8];
            t.read(base + 8, &mut b).unwrap();
            assert_eq!(&b, b"guestmem");
        }
    }

    /// A client that shrinks the (unsealed) file it mapped after DMA_MAP gets a fault errno on
    /// the next DMA access instead of a SIGBUS in the server, and the file does not grow back.
    #[test]
    fn shrunk_unsealed_dma_fd_is_efault_not_sigbus() {
        let fd = memfd(0x2000);
        let client_copy = fd.try_clone().unwrap();
        let mut t = DmaTable::new(8);
        t.add(&map(0x10000, 0x2000), Some(fd)).unwrap();
        nix::unistd::ftruncate(&client_copy, 0x1000).unwrap();
        let mut b = [0u8; 8];
        assert_eq!(t.read(0x11800, &mut b), Err(Errno::EFAULT));
        assert_eq!(t.write(0x11800, &b), Err(Errno::EFAULT));
        assert_eq!(
            std::fs::File::from(client_copy).metadata().unwrap().len(),
            0x1000
        );
        t.read(0x10000, &mut b).unwrap();
    }

    /// Every map of one file shares one held fd; distinct files are bounded (ENOSPC), and
    /// unmapping the last region of a file closes it.
    #[test]
    fn dma_files_are_counted_once_and_bounded() {
        let mut t = DmaTable::new(u32::MAX);
        let f = memfd(0x1000);
        for i in 0..1000u64 {
            t.add(&map(i << 12, 0x1000), Some(f.try_clone().unwrap()))
                .unwrap();
        }
        assert_eq!(t.files(), 1);
        let base = 1000u64 << 12;
        for i in 1..MAX_DMA_FILES as u64 {
            t.add(&map(base + (i << 12), 0x1000), Some(memfd(0x1000)))
                .unwrap();
        }
        assert_eq!(t.files(), MAX_DMA_FILES);
        let next = base + ((MAX_DMA_FILES as u64) << 12);
        assert_eq!(
            t.add(&map(next, 0x1000), Some(memfd(0x1000))),
            Err(Errno::ENOSPC)
        );
        t.add(&map(next, 0x1000), None).unwrap();
        t.remove(base + (1 << 12), 0x1000).unwrap();
        assert_eq!(t.files(), MAX_DMA_FILES - 1);
    }

    /// Mapped bytes and mappings are bounded per client: one sealed 64 TiB sparse memfd mapped
    /// again and again stops at the bound with ENOSPC.
    #[test]
    fn mapped_bytes_and_mappings_are_bounded() {
        let mut t = DmaTable::new(u32::MAX);
        let fd = sealed_memfd(64 << 40);
        let tib = 1u64 << 40;
        for i in 0..4u64 {
            t.add(&map(i * tib, tib), Some(fd.try_clone().unwrap()))
                .unwrap();
        }
        assert_eq!(
            t.add(&map(4 * tib, 0x1000), Some(fd.try_clone().unwrap())),
            Err(Errno::ENOSPC),
            "4 TiB is the bound"
        );
        let mut small = DmaTable::with_limits(DmaLimits {
            max_mappings: 3,
            ..DmaLimits::new(u32::MAX)
        });
        for i in 0..3u64 {
            small
                .add(&map(i << 12, 0x1000), Some(fd.try_clone().unwrap()))
                .unwrap();
        }
        assert_eq!(
            small.add(&map(3 << 12, 0x1000), Some(fd.try_clone().unwrap())),
            Err(Errno::ENOSPC)
        );
        small.remove(0, 0x1000).unwrap();
        small
            .add(&map(3 << 12, 0x1000), Some(fd.try_clone().unwrap()))
            .unwrap();
    }

    #[test]
    fn fd_offset_at_or_past_2_63_is_einval() {
        let mut t = DmaTable::new(8);
        let fd = sealed_memfd(0x1000);
        for (offset, size) in [
            (1u64 << 63, 0x1000u64),
            ((1 << 63) - 0x1000, 0x2000),
            (u64::MAX, 1),
        ] {
            let m = DmaMap {
                offset,
                ..map(0, size)
            };
            assert_eq!(t.add(&m, Some(fd.try_clone().unwrap())), Err(Errno::EINVAL));
            assert_eq!(t.add(&m, Some(memfd(0x1000))), Err(Errno::EINVAL));
        }
        assert!(t.is_empty());
        assert_eq!(t.files(), 0);
    }

    #[test]
    fn sealed_fd_shorter_than_the_map_is_refused() {
        let mut t = DmaTable::new(8);
        assert_eq!(
            t.add(&map(0x10000, 0x2000), Some(sealed_memfd(0x1000))),
            Err(Errno::EINVAL)
        );
    }
}
