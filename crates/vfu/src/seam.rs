//! The seam between the protocol server and a device model.
//!
//! The server decodes and validates every message, then calls one of these methods. A device never
//! sees raw wire bytes, and it never needs to know about sockets or fds beyond the ones it hands out
//! (region fds) or receives (interrupt eventfds). Everything here is exported at the crate root.

use std::os::fd::{BorrowedFd, OwnedFd};

use crate::errno::Errno;

/// The data of a REGION_READ as a span of a file, so the server can send it to the socket with
/// `sendfile` instead of copying it through a buffer: `len` bytes of `fd` from `offset`, then
/// `ones` bytes of 0xff (the part of the access past what the file holds, read as all ones as
/// PCI reads of nothing are).
#[derive(Debug, Clone, Copy)]
pub struct FileSpan<'a> {
    /// The file holding the bytes.
    pub fd: BorrowedFd<'a>,
    /// Where they start in the file.
    pub offset: u64,
    /// How many bytes come from the file.
    pub len: usize,
    /// How many 0xff bytes follow.
    pub ones: usize,
}

/// What DEVICE_GET_INFO reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `VFIO_DEVICE_FLAGS_*` bits (PCI, RESET, ...).
    pub flags: u32,
    /// Number of regions (9 for a PCI device).
    pub num_regions: u32,
    /// Number of IRQ indices (5 for a PCI device).
    pub num_irqs: u32,
}

/// One mmap-able window of a region, relative to the region's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseArea {
    /// Offset of the area from the start of the region.
    pub offset: u64,
    /// Length of the area in bytes.
    pub size: u64,
}

/// What DEVICE_GET_REGION_INFO reports for one region, and the fd that travels with it.
#[derive(Debug, Clone)]
pub struct RegionInfo<'a> {
    /// `VFIO_REGION_INFO_FLAG_*` bits (READ, WRITE, MMAP; CAPS is added by the server when
    /// `sparse_areas` is non-empty).
    pub flags: u32,
    /// Region size in bytes (for a BAR: the BAR size, a power of two).
    pub size: u64,
    /// Offset into `fd` at which the region starts (`vfio_region_info.offset`).
    pub fd_offset: u64,
    /// Sparse-mmap areas; when non-empty the server emits a sparse-mmap capability.
    pub sparse_areas: Vec<SparseArea>,
    /// The single fd that backs the mmap-able part of the region, sent with the reply.
    pub fd: Option<BorrowedFd<'a>>,
}

/// What DEVICE_GET_IRQ_INFO reports for one IRQ index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfo {
    /// `VFIO_IRQ_INFO_*` bits (EVENTFD, MASKABLE, AUTOMASKED, NORESIZE).
    pub flags: u32,
    /// Number of vectors behind this index (0 when unsupported).
    pub count: u32,
}

/// A decoded DEVICE_SET_IRQS request, already range-checked by the server against `irq_info`.
#[derive(Debug)]
pub struct SetIrqs {
    /// Full `VFIO_IRQ_SET_*` flags (one DATA_* and one ACTION_* bit).
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
    /// With DATA_BOOL: one byte per vector.
    pub bools: Vec<u8>,
    /// With DATA_EVENTFD: one fd per vector, `None` for a vector whose fd is -1 (unassign).
    pub eventfds: Vec<Option<OwnedFd>>,
}

/// A wait an access must make before the device can serve it, which the server runs outside
/// the device lock: a readiness wait of minutes must keep neither the control plane nor a stop
/// waiting.
pub trait AccessWait: Send {
    /// Waits until the device is ready. `cancelled` turns true when the client is dropped or
    /// the server stops; an error is the access's answer (ETIME, or EINTR when cancelled).
    fn wait(&self, cancelled: &dyn Fn() -> bool) -> Result<(), Errno>;
}

/// A device served over vfio-user.
///
/// Every method returns an [`Errno`] on failure; the server turns it into an error reply with that
/// errno. Counts are already checked against the negotiated `max_data_xfer_size`, and `index` is
/// below `device_info().num_regions`. Range checks are the device's job, in the kernel's order:
/// an offset at or past the region's size is EINVAL whatever the count (so `offset + count` may
/// wrap and must not be computed unchecked), then the count may be clipped at the end
/// ([`crate::clip`]). A device built as a [`crate::Variant`] of a core gets this trait from the
/// blanket implementation, which checks the variant's regions for it.
pub trait Device: Send {
    /// DEVICE_GET_INFO.
    fn device_info(&self) -> DeviceInfo;

    /// DEVICE_GET_REGION_INFO for `index`. An absent region reports size 0 and flags 0.
    fn region_info(&self, index: u32) -> Result<RegionInfo<'_>, Errno>;

    /// REGION_READ: fill `buf` from `offset` of region `index`. Returns how many bytes were read,
    /// which may be fewer than `buf.len()` when the device clips at the region end.
    fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<usize, Errno>;

    /// REGION_READ of `count` bytes answered as a span of a file (see [`FileSpan`]), for large
    /// reads the server sends without copying. `Ok(None)` (the default) makes the server call
    /// [`Device::region_read`] instead; errors are answered as from `region_read`.
    fn region_read_span(
        &mut self,
        index: u32,
        offset: u64,
        count: usize,
    ) -> Result<Option<FileSpan<'_>>, Errno> {
        let _ = (index, offset, count);
        Ok(None)
    }

    /// DEVICE_GET_REGION_IO_FDS for a valid region index: the errno to answer. No device here
    /// offers ioeventfds yet, so the only answer is an error; the default is ENOTTY, as the
    /// kernel's nvgrace driver answers.
    fn region_io_fds(&self, index: u32) -> Errno {
        let _ = index;
        Errno::ENOTTY
    }

    /// What a REGION_READ (or, `write`, a REGION_WRITE) at `offset` of region `index` must wait
    /// for first, outside the
    /// device lock (the 7.2 nvgrace driver waits for CXL readiness before it takes its memory
    /// lock, `nvgrace_gpu_wait_device_ready_cxl`). The access itself still checks under the lock.
    /// Default: nothing to wait for.
    fn access_wait(&mut self, index: u32, offset: u64, write: bool) -> Option<Box<dyn AccessWait>> {
        let _ = (index, offset, write);
        None
    }

    /// REGION_WRITE: write `data` at `offset` of region `index`. Returns how many bytes were
    /// consumed (may be fewer when the device clips at the region end).
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<usize, Errno>;

    /// DEVICE_GET_IRQ_INFO for `index`.
    fn irq_info(&self, index: u32) -> Result<IrqInfo, Errno>;

    /// DEVICE_SET_IRQS. The default accepts the request and ignores it.
    fn set_irqs(&mut self, req: SetIrqs) -> Result<(), Errno> {
        let _ = req;
        Ok(())
    }

    /// DEVICE_RESET.
    fn reset(&mut self) -> Result<(), Errno>;

    /// DEVICE_FEATURE: `flags` as on the wire (feature index in bits 0-15, GET/SET/PROBE bits),
    /// `data` the payload after `argsz, flags`. Returns the reply payload (after `argsz, flags`).
    /// The default says the feature is not supported.
    fn device_feature(&mut self, flags: u32, data: &[u8]) -> Result<Vec<u8>, Errno> {
        let _ = (flags, data);
        Err(Errno::ENOTTY)
    }

    /// MIG_DATA_READ of up to `size` bytes. Default: migration not supported.
    fn mig_data_read(&mut self, size: u32) -> Result<Vec<u8>, Errno> {
        let _ = size;
        Err(Errno::ENOTTY)
    }

    /// MIG_DATA_WRITE. Default: migration not supported.
    fn mig_data_write(&mut self, data: &[u8]) -> Result<(), Errno> {
        let _ = data;
        Err(Errno::ENOTTY)
    }

    /// A new client's session starts: `dma` gives bounds-checked access to the guest memory it
    /// maps (fd-backed regions). Devices that do DMA keep the handle. Default: ignore it.
    fn dma_attached(&mut self, dma: crate::dma::DmaHandle) {
        let _ = dma;
    }

    /// The client mapped DMA region `[iova, iova+size)`. Default: nothing to do.
    fn dma_mapped(&mut self, iova: u64, size: u64) {
        let _ = (iova, size);
    }

    /// The client unmapped DMA region `[iova, iova+size)`. Default: nothing to do.
    fn dma_unmapped(&mut self, iova: u64, size: u64) {
        let _ = (iova, size);
    }

    /// The server is about to stop: ask the client to release the device (VFIO's request
    /// interrupt, as the kernel signals it from `vfio_pci_core_request` when the device is
    /// being removed). Returns whether the client was asked (it wired a request eventfd), so
    /// the server can give it a moment. Default: nothing to ask with.
    fn request_release(&mut self) -> bool {
        false
    }

    /// A client connected: VFIO's `open_device` (for PCI, `vfio_pci_core_enable`: the function
    /// enabled and reset, its virtual config rebuilt). Called before the client's first
    /// message. Default: nothing to do.
    fn client_attached(&mut self) {}

    /// The client went away: VFIO's `close_device`. Drop per-client state (eventfds,
    /// interrupts); what a device keeps for the next client (its memory) is its own choice.
    /// Default: nothing to do.
    fn client_detached(&mut self) {}
}
