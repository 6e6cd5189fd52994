//! The nvgrace variant, our `nvgrace-gpu-vfio-pci`: device memory exposed as emulated 64-bit
//! prefetchable BARs sized to the next power of two, one sparse-mmap area over the real memory,
//! all ones past it (`memregion`); the readiness registers over BAR0 ([`readiness`]); on
//! gb200 the NVIDIA DVSEC ([`dvsec`]). Every other region, the IRQs and config space are the
//! [`PciCore`]'s, built from this variant's [`PciDescription`].

mod memregion;

pub mod dvsec;
pub mod readiness;

use vfu::device::BAR0_REGION_INDEX;
use vfu::{Device, DeviceInfo, Errno, FileSpan, IrqInfo, RegionInfo, SetIrqs};

use self::memregion::memregion;
use self::readiness::Readiness;
use crate::backing::Memory;
use crate::config::{GpuConfig, Layout, Profile};
use crate::error::DeviceError;
use crate::pci::bar::BarDesc;
use crate::pci::{Capability, Header, PciCore, PciDescription};

/// PCI vendor id of NVIDIA.
pub const NVIDIA_VENDOR_ID: u16 = 0x10de;
/// BAR0 size: a 16 MiB non-prefetchable register BAR.
pub const BAR0_SIZE: u64 = 16 << 20;
/// MSI-X vectors offered.
pub const MSIX_VECTORS: u16 = 8;
/// MSI-X table offset in BAR0.
pub const MSIX_TABLE_OFFSET: u32 = 0x00fe_0000;
/// MSI-X PBA offset in BAR0.
pub const MSIX_PBA_OFFSET: u32 = 0x00ff_0000;
/// Subsystem id we report (any value; the guest driver does not key on it).
pub const SUBSYSTEM_ID: u16 = 0x16ee;

/// A software Grace GPU: a [`PciCore`] plus the memory regions, readiness registers and DVSEC.
#[derive(Debug)]
pub struct NvGraceGpu {
    core: PciCore,
    layout: Layout,
    memory: Memory,
    readiness: Readiness,
}

impl NvGraceGpu {
    /// Creates the device: validates the configuration, builds the PCI core from the layout's
    /// description, sets up memory (sparse).
    pub fn new(cfg: &GpuConfig) -> Result<Self, DeviceError> {
        let layout = cfg.layout()?;
        let core = PciCore::new(&description(&layout))?;
        let memory = Memory::new(&cfg.backing, layout.mem_size)?;
        Ok(Self {
            core,
            memory,
            readiness: Readiness::new(cfg.ready_delay, cfg.fault),
            layout,
        })
    }

    /// The memory layout the device was built from: profile, device id, and which region holds
    /// which part of memory with its BAR size.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// A BAR0 write through to the core's register file, except that bytes of the read-only
    /// readiness registers keep what the file holds under them.
    fn bar0_write(&mut self, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        if !Readiness::touches(offset, data.len()) {
            return self.core.region_write(BAR0_REGION_INDEX, offset, data);
        }
        let mut merged = [0u8; 8];
        let merged = merged.get_mut(..data.len()).ok_or(Errno::EINVAL)?;
        self.core.region_read(BAR0_REGION_INDEX, offset, merged)?;
        for (i, (m, d)) in merged.iter_mut().zip(data).enumerate() {
            if !Readiness::touches(offset.saturating_add(i as u64), 1) {
                *m = *d;
            }
        }
        self.core.region_write(BAR0_REGION_INDEX, offset, merged)
    }
}

/// The PCI function a layout describes: NVIDIA 3D controller with PM, MSI-X (table and PBA in
/// BAR0) and a PCI Express v2 endpoint at 16 GT/s x16; BAR0 plus one BAR per memory region;
/// on gb200 the DVSEC.
fn description(layout: &Layout) -> PciDescription {
    let mut bars = vec![BarDesc::mem64(BAR0_REGION_INDEX, BAR0_SIZE, false)];
    bars.extend(layout.regions.iter().map(memregion::bar));
    let mut ext_capabilities = Vec::new();
    if layout.profile == Profile::Gb200 {
        ext_capabilities.push(dvsec::gpu_capability(NVIDIA_VENDOR_ID));
    }
    PciDescription {
        header: Header {
            vendor_id: NVIDIA_VENDOR_ID,
            device_id: layout.device_id,
            revision: 0xa1,
            class_code: 0x03_02_00,
            subsystem_vendor_id: NVIDIA_VENDOR_ID,
            subsystem_id: SUBSYSTEM_ID,
            interrupt_pin: 1,
        },
        capabilities: vec![
            (0x40, Capability::PowerManagement),
            (
                0x48,
                Capability::MsiX {
                    vectors: MSIX_VECTORS,
                    table_bar: BAR0_REGION_INDEX as u8,
                    table_offset: MSIX_TABLE_OFFSET,
                    pba_bar: BAR0_REGION_INDEX as u8,
                    pba_offset: MSIX_PBA_OFFSET,
                },
            ),
            (
                0x60,
                Capability::Express {
                    link_speed: 4,
                    link_width: 16,
                },
            ),
        ],
        ext_capabilities,
        bars,
    }
}

impl Device for NvGraceGpu {
    fn device_info(&self) -> DeviceInfo {
        self.core.device_info()
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo<'_>, Errno> {
        match memregion(&self.layout, &self.memory, index) {
            Some(m) => Ok(m.info()),
            None => self.core.region_info(index),
        }
    }

    fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        if let Some(m) = memregion(&self.layout, &self.memory, index) {
            return m.read(offset, buf);
        }
        let n = self.core.region_read(index, offset, buf)?;
        if index == BAR0_REGION_INDEX {
            self.readiness.overlay(offset, &mut buf[..n]);
        }
        Ok(n)
    }

    fn region_read_span(
        &mut self,
        index: u32,
        offset: u64,
        count: usize,
    ) -> Result<Option<FileSpan<'_>>, Errno> {
        match memregion(&self.layout, &self.memory, index) {
            Some(m) => m.span(offset, count).map(Some),
            None => self.core.region_read_span(index, offset, count),
        }
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        if let Some(m) = memregion(&self.layout, &self.memory, index) {
            return m.write(offset, data);
        }
        if index == BAR0_REGION_INDEX {
            return self.bar0_write(offset, data);
        }
        self.core.region_write(index, offset, data)
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo, Errno> {
        self.core.irq_info(index)
    }

    fn set_irqs(&mut self, req: SetIrqs) -> Result<(), Errno> {
        self.core.set_irqs(req)
    }

    fn reset(&mut self) -> Result<(), Errno> {
        // Emulated BARs back to 0, the register file cleared and link training re-run; memory
        // contents survive a reset, as on the hardware.
        self.core.reset()?;
        self.readiness.reset();
        Ok(())
    }

    fn client_detached(&mut self) {
        self.core.client_detached();
    }
}
