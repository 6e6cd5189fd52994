//! The nvgrace variant, our `nvgrace-gpu-vfio-pci`: device memory exposed as emulated 64-bit
//! prefetchable BARs sized to the next power of two, one sparse-mmap area over the real memory,
//! all ones past it (`memregion`); the readiness registers over BAR0 ([`readiness`]); on
//! gb200 the NVIDIA DVSEC ([`dvsec`]). Every other region, the IRQs and config space are the
//! [`PciCore`]'s, built from this variant's [`PciDescription`]: the GPU is a [`vfu::Variant`]
//! of the core, served by vfu's blanket `Device` implementation, which range-checks the regions
//! the GPU owns and forwards the rest.

mod memregion;

pub mod bar1;
pub mod cxl;
pub mod dvsec;
pub mod live;
pub mod readiness;

use std::sync::Arc;

use vfu::device::{BAR0_REGION_INDEX, CONFIG_REGION_INDEX};
use vfu::{clip, AccessWait, Errno, FileSpan, RegionInfo, Variant};
use vfu_pci::BarDesc;
use vfu_pci::COMMAND_MEMORY;
use vfu_pci::{Capability, Header, PciCore, PciDescription};

use self::bar1::{Bar1, BAR1_REGION_INDEX};
use self::cxl::CxlReadiness;
use self::live::LiveFaults;
use self::memregion::{memregion, MemRegion};
use self::readiness::Readiness;
use crate::backing::Memory;
use crate::config::{Backing, GpuConfig, Layout, LinuxVersion, Profile, READY_POLL};
use crate::error::DeviceError;

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

/// Where a device's memory lives.
#[derive(Debug)]
enum DeviceMemory {
    /// None: a core-only device (link down, no memory properties).
    None,
    /// One file in the host's layout (usemem at 0, resmem after it), each region at its
    /// `fd_offset`.
    Shared(Memory),
    /// A memfd of its own per region index, each region at offset 0.
    PerRegion(Vec<(u32, Memory)>),
}

/// A software Grace GPU: a [`PciCore`] plus the memory regions, readiness registers and DVSEC.
#[derive(Debug)]
pub struct NvGraceGpu {
    core: PciCore,
    layout: Layout,
    /// Device memory; `None` when the device is served by the core alone (link down).
    memory: DeviceMemory,
    /// Blackwell's real BAR1 at region 2, when shown.
    bar1: Option<Bar1>,
    readiness: Readiness,
    /// The CXL DVSEC's live register, on a Blackwell-Next part.
    cxl: Option<CxlReadiness>,
    /// 6.19+: set by a reset, cleared by the first memory access that found the device ready.
    reset_done: bool,
    /// How long that access polls readiness before ETIME.
    ready_timeout: std::time::Duration,
    /// Faults applied at run time, shared with the control plane.
    live: Arc<LiveFaults>,
}

impl NvGraceGpu {
    /// Creates the device: validates the configuration, builds the PCI core from the layout's
    /// description, sets up memory (sparse).
    pub fn new(cfg: &GpuConfig) -> Result<Self, DeviceError> {
        let layout = cfg.layout()?;
        let mut core = PciCore::new(&description(&layout))?;
        for range in Readiness::ranges() {
            core.set_bar0_read_only(range);
        }
        let memory = match (layout.core_only, &cfg.backing) {
            (Some(_), _) => DeviceMemory::None,
            // A file holds the whole memory in the host's layout, so it persists as one image.
            (None, Backing::File(_)) => {
                DeviceMemory::Shared(Memory::new(&cfg.backing, layout.mem_size)?)
            }
            // A memfd per region, sized to its memory: a client mapping one region's fd can
            // never reach another region's memory (with one shared fd, mapping BAR4 past usemem
            // would alias resmem).
            (None, backing) => DeviceMemory::PerRegion(
                layout
                    .regions
                    .iter()
                    .map(|r| Ok((r.region_index, Memory::new(backing, r.memlength)?)))
                    .collect::<Result<_, DeviceError>>()?,
            ),
        };
        let bar1 = layout.bar1_size.map(Bar1::new).transpose()?;
        let live = Arc::new(LiveFaults::default());
        Ok(Self {
            core,
            memory,
            bar1,
            readiness: Readiness::new(
                cfg.ready_delay,
                cfg.reset_ready_delay,
                cfg.fault,
                live.clone(),
            ),
            live,
            cxl: cfg.cxl.map(|c| CxlReadiness::new(c, cfg.fault)),
            reset_done: false,
            ready_timeout: cfg.ready_timeout,
            layout,
        })
    }

    /// The probe's readiness poll (6.14+): both BAR0 registers must read ready within the
    /// timeout, polled every second; otherwise the device is not offered (ETIME).
    pub fn probe_ready(&self) -> Result<(), DeviceError> {
        if self.wait_ready() {
            Ok(())
        } else {
            Err(DeviceError::NotReady(self.ready_timeout))
        }
    }

    /// Waits for readiness as the driver of this version does: from 7.2 a part with a CXL
    /// Device DVSEC is read there ("valid" within 1 s, then "active" within its encoded
    /// timeout); otherwise the BAR0 pair, polled every second up to the timeout.
    fn wait_ready(&self) -> bool {
        match &self.cxl {
            Some(cxl) if self.layout.linux >= LinuxVersion::V7_2 => cxl.wait_ready(READY_POLL),
            _ => self.readiness.wait_ready(READY_POLL, self.ready_timeout),
        }
    }

    /// The variant's memory region at `index`, if it owns one.
    fn memregion(&self, index: u32) -> Option<MemRegion<'_>> {
        let (memory, base) = match &self.memory {
            DeviceMemory::None => return None,
            DeviceMemory::Shared(m) => (m, self.layout.region(index)?.fd_offset),
            DeviceMemory::PerRegion(all) => (&all.iter().find(|(i, _)| *i == index)?.1, 0),
        };
        memregion(&self.layout, memory, base, index)
    }

    /// The region the GPU answers at `index` (a memory region or Blackwell's BAR1), if any.
    fn owned(&self, index: u32) -> Option<Owned<'_>> {
        if let Some(m) = self.memregion(index) {
            return Some(Owned::Mem(m));
        }
        let bar1 = self.bar1.as_ref().filter(|_| index == BAR1_REGION_INDEX)?;
        Some(Owned::Bar1(bar1))
    }

    /// 6.19+: the first memory access after a reset finds memory decode off (EIO) or waits for
    /// the readiness registers (ETIME if they never read ready), as upstream's
    /// `nvgrace_gpu_check_device_ready`. The wait blocks this device's session, as the kernel
    /// blocks the VMM's read.
    fn check_ready_after_reset(&mut self) -> Result<(), Errno> {
        if !self.reset_done {
            return Ok(());
        }
        if self.core.command() & COMMAND_MEMORY == 0 {
            return Err(Errno::EIO);
        }
        if !self.wait_ready() {
            return Err(Errno::ETIME);
        }
        self.reset_done = false;
        Ok(())
    }

    /// For a file backing, a second handle on the file for flushing it to disk at exit (see
    /// [`Memory::file_for_sync`]); `None` for a memfd or a device without memory.
    pub fn file_for_sync(&self) -> Result<Option<crate::backing::FileSync>, DeviceError> {
        match &self.memory {
            DeviceMemory::Shared(m) => m.file_for_sync(),
            _ => Ok(None),
        }
    }

    /// Signals the client's error interrupt (a fatal PCIe error was detected, as when the C2C
    /// link goes down). Returns whether the client had wired one.
    pub fn report_error(&mut self) -> bool {
        self.core
            .trigger(vfu::device::ERR_IRQ_INDEX, 0)
            .unwrap_or(false)
    }

    /// The faults a control plane switches while the device runs.
    pub fn live_faults(&self) -> Arc<LiveFaults> {
        self.live.clone()
    }

    /// The readiness registers' state in words ("ready", "C2C link down", ...).
    pub fn readiness_state(&self) -> &'static str {
        self.readiness.state()
    }

    /// Reads region `index` as a debugger would (`vgrace ctl peek`): like a client's read, but
    /// without the after-reset readiness check or poison, which belong to the client's path.
    pub fn backdoor_read(
        &mut self,
        index: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, Errno> {
        if let Some(region) = self.owned(index) {
            let n = clip(region.size(), offset, buf.len())?;
            region.read(offset, &mut buf[..n])?;
            return Ok(n);
        }
        let n = self.core.backdoor_read(index, offset, buf)?;
        self.overlay(index, offset, &mut buf[..n]);
        Ok(n)
    }

    /// Writes region `index` as a debugger would (`vgrace ctl poke`); see
    /// [`NvGraceGpu::backdoor_read`]. Config space keeps its write masks.
    pub fn backdoor_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        if let Some(region) = self.owned(index) {
            let n = clip(region.size(), offset, data.len())?;
            region.write(offset, &data[..n])?;
            return Ok(n);
        }
        self.core.backdoor_write(index, offset, data)
    }

    /// The memory layout the device was built from: profile, device id, and which region holds
    /// which part of memory with its BAR size.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
}

/// The PCI function a layout describes: NVIDIA 3D controller with PM, MSI-X (table and PBA in
/// BAR0) and a PCI Express v2 endpoint at 16 GT/s x16; BAR0 plus one BAR per memory region;
/// on gb200 the DVSEC.
fn description(layout: &Layout) -> PciDescription {
    let mut bars = vec![BarDesc::mem64(BAR0_REGION_INDEX, BAR0_SIZE, false)];
    bars.extend(layout.regions.iter().map(memregion::bar));
    if let Some(size) = layout.bar1_size {
        bars.push(BarDesc::mem64(BAR1_REGION_INDEX, size, true));
    }
    let mut ext_capabilities = Vec::new();
    if layout.profile == Profile::Gb200 {
        ext_capabilities.push(dvsec::gpu_capability(NVIDIA_VENDOR_ID));
    }
    if let Some(c) = &layout.cxl {
        ext_capabilities.push(cxl::device_dvsec(c));
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

/// A region the GPU answers itself.
enum Owned<'a> {
    /// Device memory (`nvgrace_gpu_memregion`).
    Mem(MemRegion<'a>),
    /// Blackwell's real BAR1.
    Bar1(&'a Bar1),
}

impl<'a> Owned<'a> {
    /// Its REGION_INFO.
    fn info(&self) -> RegionInfo<'a> {
        match self {
            Owned::Mem(m) => m.info(),
            Owned::Bar1(b) => b.info(),
        }
    }

    /// `n` bytes at `offset` as a span of the backing file.
    fn span(&self, offset: u64, n: usize) -> Result<FileSpan<'a>, Errno> {
        match self {
            Owned::Mem(m) => m.span(offset, n),
            Owned::Bar1(b) => b.span(offset, n),
        }
    }

    /// The BAR size (the one the core declares for the region).
    fn size(&self) -> u64 {
        match self {
            Owned::Mem(m) => m.bar_size(),
            Owned::Bar1(b) => b.size(),
        }
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        match self {
            Owned::Mem(m) => m.read(offset, buf),
            Owned::Bar1(b) => b.read(offset, buf),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        match self {
            Owned::Mem(m) => m.write(offset, data),
            Owned::Bar1(b) => b.write(offset, data),
        }
    }
}

/// The GPU's own regions (memory, BAR1) with their rules; everything else is the core's, with
/// the GPU's registers computed over it and its reset work after the core's.
impl Variant for NvGraceGpu {
    type Core = PciCore;

    fn core(&self) -> &PciCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut PciCore {
        &mut self.core
    }

    fn owns(&self, index: u32) -> bool {
        self.owned(index).is_some()
    }

    fn owned_info(&self, index: u32) -> Option<RegionInfo<'_>> {
        self.owned(index).map(|r| r.info())
    }

    fn owned_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.check_owned_access(index, offset, buf.len(), false)?;
        self.owned(index).ok_or(Errno::EINVAL)?.read(offset, buf)
    }

    fn owned_read_span(
        &mut self,
        index: u32,
        offset: u64,
        count: usize,
    ) -> Result<Option<FileSpan<'_>>, Errno> {
        self.check_owned_access(index, offset, count, false)?;
        self.owned(index).map(|r| r.span(offset, count)).transpose()
    }

    fn owned_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.check_owned_access(index, offset, data.len(), true)?;
        self.owned(index).ok_or(Errno::EINVAL)?.write(offset, data)
    }

    fn owned_access_wait(
        &mut self,
        index: u32,
        offset: u64,
        write: bool,
    ) -> Option<Box<dyn AccessWait>> {
        // 7.2 waits for CXL readiness before it takes its memory lock; the check under the
        // lock (`check_ready_after_reset`) then finds the device ready at once. The access
        // decides as the check does: reads anywhere in the BAR, writes only below memlength
        // (vfu has made an offset past the BAR EINVAL, without a wait).
        let Some(Owned::Mem(region)) = self.owned(index) else {
            return None;
        };
        let reaches = !write || offset < region.memlength();
        if !self.reset_done || self.layout.linux < LinuxVersion::V7_2 || !reaches {
            return None;
        }
        let cxl = self.cxl.clone()?;
        Some(Box::new(cxl))
    }

    fn after_core_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) {
        self.overlay(index, offset, buf);
    }

    fn after_core_write(&mut self, index: u32, _: u64, _: usize) -> Result<(), Errno> {
        // A guest FLR written to Device Control runs the GPU's part of the reset too.
        if index == CONFIG_REGION_INDEX && self.core.take_function_reset() {
            self.reset_done();
        }
        Ok(())
    }

    fn after_reset(&mut self) -> Result<(), Errno> {
        // VFIO_DEVICE_RESET: `nvgrace_gpu_ioctl` zeroes the emulated BARs
        // (`nvgrace_gpu_init_fake_bar_emu_regs`); the core has reset the function and left the
        // rest of the virtual config (COMMAND, BAR0, Blackwell's real BAR1) as it was. Memory
        // contents survive, as on the hardware.
        for region in &self.layout.regions {
            self.core.clear_bar(region.region_index);
        }
        self.reset_done();
        Ok(())
    }

    fn after_client_attached(&mut self) {
        // `nvgrace_gpu_open_device`: the core's `vfio_pci_core_enable` (enable, function reset,
        // config rebuilt with memory decode on and the emulated BARs at 0), then the reset's
        // `reset_done`.
        self.reset_done();
    }

    fn after_client_detached(&mut self) {
        // The core's `vfio_pci_core_disable` (interrupts off, the close-time function reset),
        // then the reset's `reset_done`.
        self.reset_done();
    }
}

impl NvGraceGpu {
    /// The variant's computed registers over a read of the core's region `index`: readiness
    /// in BAR0, the CXL DVSEC's live register in config space.
    fn overlay(&self, index: u32, offset: u64, buf: &mut [u8]) {
        if index == BAR0_REGION_INDEX {
            self.readiness.overlay(offset, buf);
        }
        if index == CONFIG_REGION_INDEX {
            self.one_emulated_bar_per_read(offset, buf);
        }
        if let (CONFIG_REGION_INDEX, Some(cxl)) = (index, &self.cxl) {
            cxl.overlay(offset, buf);
        }
    }

    /// `nvgrace_gpu_read_config_emu` overlays one emulated BAR per config read, the BAR2 pair
    /// before the BAR4 pair: a read that spans both shows the BAR4 pair as the core has it,
    /// which for a BAR the physical function does not have is 0.
    fn one_emulated_bar_per_read(&self, offset: u64, buf: &mut [u8]) {
        const BAR2: std::ops::Range<u64> = 0x18..0x20;
        const BAR4: std::ops::Range<u64> = 0x20..0x28;
        let touches = |r: &std::ops::Range<u64>| {
            offset < r.end && r.start < offset.saturating_add(buf.len() as u64)
        };
        if self.layout.region(4).is_none() || !touches(&BAR2) || !touches(&BAR4) {
            return;
        }
        for (i, b) in buf.iter_mut().enumerate() {
            if BAR4.contains(&(offset + i as u64)) {
                *b = 0;
            }
        }
    }

    /// What every function reset (open, close, VFIO_DEVICE_RESET, FLR) does to the GPU behind
    /// the core: link training re-runs (readiness re-armed with `--reset-ready-delay`, the CXL
    /// DVSEC's too) and, from 6.19, the PCI `reset_done` callback
    /// (`nvgrace_gpu_vfio_pci_reset_done`) makes the next memory access check readiness.
    fn reset_done(&mut self) {
        self.readiness.reset();
        if let Some(cxl) = &mut self.cxl {
            cxl.reset();
        }
        self.reset_done = self.layout.linux >= LinuxVersion::V6_19;
    }

    /// 6.19+: a read that touches a poisoned page fails as upstream's does: the copy out of
    /// device memory faults (`copy_to_user` in `nvgrace_gpu_map_and_read`, `-EFAULT`). Writes
    /// are not checked (a store does not consume poison).
    fn check_poison(&self, index: u32, offset: u64, len: usize) -> Result<(), Errno> {
        let hit = self
            .layout
            .poisoned
            .iter()
            .any(|p| p.touches(index, offset, len));
        if hit || self.live.touches_poison(index, offset, len) {
            return Err(Errno::EFAULT);
        }
        Ok(())
    }

    /// What a client's access to an owned region checks before it touches memory (vfu has
    /// already checked the offset against the BAR and clipped `len`): BAR1 is a core BAR,
    /// EIO while memory decode is off or the function is in D3hot (`vfio_pci_bar_rw`); device
    /// memory checks readiness after a reset (6.19+) for reads anywhere in the BAR and writes
    /// that reach memory, then poison for reads.
    fn check_owned_access(
        &mut self,
        index: u32,
        offset: u64,
        len: usize,
        write: bool,
    ) -> Result<(), Errno> {
        let memlength = match self.owned(index) {
            Some(Owned::Mem(m)) => m.memlength(),
            Some(Owned::Bar1(_)) if !self.core.memory_enabled() => return Err(Errno::EIO),
            _ => return Ok(()),
        };
        if !write || offset < memlength {
            self.check_ready_after_reset()?;
        }
        if !write {
            self.check_poison(index, offset, len)?;
        }
        Ok(())
    }
}
