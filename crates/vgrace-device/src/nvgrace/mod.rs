//! The nvgrace variant: device memory exposed as emulated 64-bit prefetchable BARs sized to the
//! next power of two, one sparse-mmap area over the real memory, all ones past it. Everything
//! else is the PCI core's.

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_AUTOMASKED,
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_INFO_NORESIZE,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfu::device::{CONFIG_REGION_INDEX, PCI_NUM_IRQS, PCI_NUM_REGIONS};
use vfu::irq::IrqTable;
use vfu::{Device, DeviceInfo, Errno, FileSpan, IrqInfo, RegionInfo, SetIrqs, SparseArea};

use crate::backing::Memory;
use crate::config::{GpuConfig, Layout, MemRegionLayout, Profile};
use crate::error::DeviceError;
use crate::pci::bar::{EmulatedBar, BAR_MEM_64, BAR_PREFETCH};
use crate::pci::config_space::{
    ConfigSpace, CAP_EXP, CAP_MSIX, CAP_PM, CONFIG_SIZE, EXT_CAP_DVSEC,
};
use crate::pci::registers::{Bar0, BAR0_SIZE};

/// MSI-X vectors offered.
pub const MSIX_VECTORS: u32 = 8;
/// MSI-X table offset in BAR0.
pub const MSIX_TABLE_OFFSET: u32 = 0x00fe_0000;
/// MSI-X PBA offset in BAR0.
pub const MSIX_PBA_OFFSET: u32 = 0x00ff_0000;
/// Subsystem id we report (any value; the guest driver does not key on it).
pub const SUBSYSTEM_ID: u16 = 0x16ee;
/// Offset of the NVIDIA DVSEC on gb200.
pub const DVSEC_OFFSET: usize = 0x100;
/// DVSEC id of the GPU capability register upstream looks for.
pub const GPU_CAP_DVSEC_ID: u16 = 3;
/// Offset of the capability bitmap inside the DVSEC.
pub const DVSEC_BITMAP_OFFSET: usize = 0xa;
/// Bitmap bit: MIG is supported with cached resmem (the hardware bug is fixed).
pub const MIG_SUPPORTED_WITH_CACHED_RESMEM: u16 = 1;

/// A software Grace GPU.
#[derive(Debug)]
pub struct NvGraceGpu {
    layout: Layout,
    memory: Memory,
    config: ConfigSpace,
    bar0: Bar0,
    irqs: IrqTable,
}

impl NvGraceGpu {
    /// Creates the device: validates the configuration, sets up memory (sparse), builds config
    /// space.
    pub fn new(cfg: &GpuConfig) -> Result<Self, DeviceError> {
        let layout = cfg.layout()?;
        let memory = Memory::new(&cfg.backing, layout.mem_size)?;
        let config = build_config_space(&layout);
        Ok(Self {
            config,
            memory,
            bar0: Bar0::new(cfg.ready_delay, cfg.fault),
            irqs: IrqTable::new(&irq_counts()),
            layout,
        })
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The variant's memory region for a VFIO region index, or `None` so the core handles it
    /// (upstream's `nvgrace_gpu_memregion`).
    fn memregion(&self, index: u32) -> Option<MemRegionLayout> {
        self.layout.region(index).copied()
    }

    fn mem_read(&self, r: &MemRegionLayout, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        let n = clip(r.bar_size, offset, buf.len())?;
        let buf = &mut buf[..n];
        let in_mem = mem_part(r.memlength, offset, n);
        if in_mem > 0 {
            self.memory
                .read(r.fd_offset + offset, &mut buf[..in_mem])
                .map_err(|e| e.errno())?;
        }
        // Past the real memory the BAR reads as all ones, as the hardware does.
        buf[in_mem..].fill(0xff);
        Ok(n)
    }

    fn mem_write(&self, r: &MemRegionLayout, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        let n = clip(r.bar_size, offset, data.len())?;
        let in_mem = mem_part(r.memlength, offset, n);
        if in_mem > 0 {
            self.memory
                .write(r.fd_offset + offset, &data[..in_mem])
                .map_err(|e| e.errno())?;
        }
        // Writes past the real memory are dropped silently (an errno would crash the guest).
        Ok(n)
    }

    /// A memory read as a span of the backing fd plus its all-ones tail.
    fn mem_span(
        &self,
        r: &MemRegionLayout,
        offset: u64,
        count: usize,
    ) -> Result<FileSpan<'_>, Errno> {
        let n = clip(r.bar_size, offset, count)?;
        let in_mem = mem_part(r.memlength, offset, n);
        let (fd, at) = self
            .memory
            .span(r.fd_offset + offset, in_mem)
            .map_err(|e| e.errno())?;
        Ok(FileSpan {
            fd,
            offset: at,
            len: in_mem,
            ones: n - in_mem,
        })
    }
}

/// Bytes of an access at `offset` of `len` that stay inside a BAR of `bar_size`; EINVAL when
/// the access starts at or past the end.
fn clip(bar_size: u64, offset: u64, len: usize) -> Result<usize, Errno> {
    if offset >= bar_size {
        return Err(Errno::EINVAL);
    }
    let room = bar_size - offset;
    Ok(usize::try_from(room).map_or(len, |r| r.min(len)))
}

/// Bytes of an access at `offset` of `n` that are real memory.
fn mem_part(memlength: u64, offset: u64, n: usize) -> usize {
    if offset >= memlength {
        return 0;
    }
    usize::try_from(memlength - offset).map_or(n, |r| r.min(n))
}

fn irq_counts() -> [u32; PCI_NUM_IRQS as usize] {
    [1, 0, MSIX_VECTORS, 1, 1]
}

fn build_config_space(layout: &Layout) -> ConfigSpace {
    let mut c = ConfigSpace::new();
    c.set_u16(0x00, 0x10de);
    c.set_u16(0x02, layout.device_id);
    // Command: I/O, memory, bus master, parity, SERR, INTx disable are the guest's.
    c.set(0x04, &[0, 0], &[0x47, 0x05]);
    // Status: capability list present.
    c.set_u16(0x06, 0x0010);
    // Revision, prog-if, subclass 0x02 (3D controller), class 0x03 (display).
    c.set(0x08, &[0xa1, 0x00, 0x02, 0x03], &[0; 4]);
    c.set(0x0c, &[0, 0, 0, 0], &[0xff, 0, 0, 0]);
    c.set_u16(0x2c, 0x10de);
    c.set_u16(0x2e, SUBSYSTEM_ID);
    // Interrupt line (the guest's) and pin INTA.
    c.set(0x3c, &[0, 1], &[0xff, 0]);
    c.set_bar(0, Some(EmulatedBar::new(BAR0_SIZE, BAR_MEM_64)));
    for r in &layout.regions {
        c.set_bar(
            r.bar as usize / 2,
            Some(EmulatedBar::new(r.bar_size, BAR_MEM_64 | BAR_PREFETCH)),
        );
    }
    // Power management v3, D0-D3hot under guest control.
    c.add_capability(
        0x40,
        CAP_PM,
        &[0x03, 0x00, 0x00, 0x00, 0x00, 0x00],
        &[0, 0, 0x03, 0, 0, 0],
    );
    // MSI-X: table and PBA in BAR0; enable and function-mask bits are the guest's.
    let ctrl = (MSIX_VECTORS - 1) as u16;
    let mut msix = Vec::new();
    msix.extend_from_slice(&ctrl.to_le_bytes());
    msix.extend_from_slice(&MSIX_TABLE_OFFSET.to_le_bytes());
    msix.extend_from_slice(&MSIX_PBA_OFFSET.to_le_bytes());
    c.add_capability(0x48, CAP_MSIX, &msix, &[0, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0]);
    // PCI Express v2 endpoint: device control and link control are the guest's.
    let mut exp = vec![0u8; 0x3a];
    exp[0..2].copy_from_slice(&0x0002u16.to_le_bytes());
    exp[2..6].copy_from_slice(&0x0000_8000u32.to_le_bytes());
    // Link capabilities: 16 GT/s x16.
    exp[0x0a..0x0e].copy_from_slice(&0x0000_0104u32.to_le_bytes());
    exp[0x10..0x12].copy_from_slice(&0x0104u16.to_le_bytes());
    let mut exp_w = vec![0u8; 0x3a];
    exp_w[0x06] = 0xff;
    exp_w[0x07] = 0x7f;
    exp_w[0x0e] = 0xff;
    exp_w[0x0f] = 0x0f;
    c.add_capability(0x60, CAP_EXP, &exp, &exp_w);
    if layout.profile == Profile::Gb200 {
        // NVIDIA DVSEC: header, DVSEC header 1 (vendor, rev 0, length 16), header 2 (id), then
        // the capability bitmap at +0xa saying resmem may be cached (the MIG bug is fixed).
        c.set_u32(DVSEC_OFFSET, u32::from(EXT_CAP_DVSEC) | (1 << 16));
        c.set_u32(DVSEC_OFFSET + 4, 0x10de | (16 << 20));
        c.set_u16(DVSEC_OFFSET + 8, GPU_CAP_DVSEC_ID);
        c.set_u16(
            DVSEC_OFFSET + DVSEC_BITMAP_OFFSET,
            MIG_SUPPORTED_WITH_CACHED_RESMEM,
        );
    }
    c.seal();
    c
}

impl Device for NvGraceGpu {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
            num_regions: PCI_NUM_REGIONS,
            num_irqs: PCI_NUM_IRQS,
        }
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo<'_>, Errno> {
        const RW: u32 = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        if let Some(r) = self.memregion(index) {
            return Ok(RegionInfo {
                flags: RW | VFIO_REGION_INFO_FLAG_MMAP,
                size: r.bar_size,
                fd_offset: r.fd_offset,
                // Only real memory may be mapped: never the rounding tail.
                sparse_areas: vec![SparseArea {
                    offset: 0,
                    size: r.memlength,
                }],
                fd: Some(self.memory.fd()),
            });
        }
        let (flags, size) = match index {
            0 => (RW, BAR0_SIZE),
            CONFIG_REGION_INDEX => (RW, CONFIG_SIZE as u64),
            i if i < PCI_NUM_REGIONS => (0, 0),
            _ => return Err(Errno::EINVAL),
        };
        Ok(RegionInfo {
            flags,
            size,
            fd_offset: 0,
            sparse_areas: Vec::new(),
            fd: None,
        })
    }

    fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        if let Some(r) = self.memregion(index) {
            return self.mem_read(&r, offset, buf);
        }
        match index {
            0 => self.bar0.read(offset, buf).ok_or(Errno::EINVAL),
            CONFIG_REGION_INDEX => {
                let off = usize::try_from(offset).map_err(|_| Errno::EINVAL)?;
                if off >= CONFIG_SIZE {
                    return Err(Errno::EINVAL);
                }
                Ok(self.config.read(off, buf))
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn region_read_span(
        &mut self,
        index: u32,
        offset: u64,
        count: usize,
    ) -> Result<Option<FileSpan<'_>>, Errno> {
        match self.memregion(index) {
            Some(r) => self.mem_span(&r, offset, count).map(Some),
            None => Ok(None),
        }
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        if let Some(r) = self.memregion(index) {
            return self.mem_write(&r, offset, data);
        }
        match index {
            0 => self.bar0.write(offset, data).ok_or(Errno::EINVAL),
            CONFIG_REGION_INDEX => {
                let off = usize::try_from(offset).map_err(|_| Errno::EINVAL)?;
                if off >= CONFIG_SIZE {
                    return Err(Errno::EINVAL);
                }
                Ok(self.config.write(off, data))
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo, Errno> {
        let counts = irq_counts();
        let count = *counts.get(index as usize).ok_or(Errno::EINVAL)?;
        let flags = match index {
            0 => VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED,
            2 => VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
            _ if count > 0 => VFIO_IRQ_INFO_EVENTFD,
            _ => 0,
        };
        Ok(IrqInfo { flags, count })
    }

    fn set_irqs(&mut self, req: SetIrqs) -> Result<(), Errno> {
        self.irqs.apply(req)
    }

    fn reset(&mut self) -> Result<(), Errno> {
        // Emulated BARs back to 0 and link training re-run; memory contents survive a reset,
        // as on the hardware.
        self.config.reset();
        self.bar0.reset();
        Ok(())
    }

    fn client_detached(&mut self) {
        self.irqs.clear();
    }
}
