//! The PCI core, our `vfio-pci-core`: one object that answers every VFIO region and IRQ index
//! of a PCI function built from a [`PciDescription`]. A variant (a [`vfu::Variant`] with
//! `Core = PciCore`) keeps a `PciCore`, answers the regions it owns and leaves everything else
//! here.
//!
//! What the core serves:
//! - config space (region 7): the described header and capabilities, BAR registers with the
//!   sizing probe, guest-writable bits as described;
//! - BAR0, when described: a [`RegFile`] of the BAR's size on a memfd the client may map (but
//!   the pages of the MSI-X table and of trapped registers), accesses of any length;
//! - any other described BAR: a region of the BAR's size that nothing backs, so reads are all
//!   ones and writes are dropped (a variant normally owns such a BAR);
//! - every other index below [`PCI_NUM_REGIONS`]: an absent region (size 0, flags 0);
//! - IRQ_INFO and SET_IRQS from the IRQ counts the description implies;
//! - the three moments of the kernel's lifecycle, which a variant extends: **open** (a client
//!   connects: `vfio_pci_core_enable` enables the function, resets it and rebuilds the virtual
//!   config, so COMMAND has memory decode on and every BAR register reads 0), **close** (the
//!   client leaves: `vfio_pci_core_disable` turns interrupts off and resets the function) and
//!   **function reset** (VFIO_DEVICE_RESET through `vfio_pci_ioctl_reset`, or a guest's FLR
//!   through `vfio_exp_config_write`: the device's own state, here the BAR0 register file, is
//!   reset while the virtual config space is left as the guest set it).

use std::ops::Range;

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_AUTOMASKED,
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_INFO_NORESIZE,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfu::device::{
    BAR0_REGION_INDEX, CONFIG_REGION_INDEX, ERR_IRQ_INDEX, INTX_IRQ_INDEX, PCI_NUM_IRQS,
    PCI_NUM_REGIONS, REQ_IRQ_INDEX, VGA_REGION_INDEX,
};
use vfu::{clip, Device, DeviceInfo, Errno, IrqInfo, RegionInfo, SetIrqs, SparseArea};

use super::config_space::{ConfigSpace, CONFIG_SIZE};
use super::description::{Capability, PciDescription, DEVCTL_INITIATE_FLR, EXP_DEVCTL, PM_PMCSR};
use super::intrs::Interrupts;
use super::regfile::RegFile;
use crate::error::PciError;

/// Offset of the COMMAND register.
const COMMAND: usize = 0x04;
/// COMMAND bit 1: memory space decode.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// COMMAND bit 2: bus master.
const COMMAND_MASTER: u16 = 1 << 2;
/// COMMAND bit 10: INTx disable.
const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// PMCSR bits 1:0: the power state (0 = D0, 3 = D3hot).
const PMCSR_STATE: u16 = 0x3;
/// The D3hot power state.
const PMCSR_D3HOT: u16 = 0x3;
/// The page size the mappable areas are cut to.
const PAGE: u64 = 4096;
/// Bytes of one MSI-X table entry.
const MSIX_ENTRY: u64 = 16;

/// REGION_INFO flags of every region the core serves.
const RW: u32 = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;

/// A PCI function: config space, BAR registers, the BAR0 register file and the IRQ table.
#[derive(Debug)]
pub struct PciCore {
    config: ConfigSpace,
    bar0: Option<RegFile>,
    irq_counts: [u32; PCI_NUM_IRQS as usize],
    irqs: Interrupts,
    /// Config offset of the PCI Express capability (for FLR), if described.
    express: Option<usize>,
    /// Config offset of the power management capability (for D0 at reset), if described.
    pm: Option<usize>,
    /// Set by a function reset the guest started through config space (FLR), until the
    /// variant takes it with [`PciCore::take_function_reset`].
    flr_done: bool,
    /// The MSI-X table: (region index, byte range). Reads of it through the BAR are all ones
    /// and writes are dropped (`vfio_pci_bar_rw` passes it to `vfio_pci_core_do_io_rw` as the
    /// excluded range): the VMM emulates the table.
    msix_table: Option<(u32, Range<u64>)>,
    /// BAR0 ranges whose bytes a client write must not change (a variant's computed registers).
    read_only: Vec<Range<u64>>,
    /// BAR0 ranges every access to which must reach the device (left out of the mmap-able
    /// areas): the read-only ranges and registers with side effects.
    trapped: Vec<Range<u64>>,
}

impl PciCore {
    /// Builds the function `desc` describes; fails if a BAR cannot be emulated.
    pub fn new(desc: &PciDescription) -> Result<Self, PciError> {
        let config = desc.config_space()?;
        let bar0 = config
            .bars()
            .get(BAR0_REGION_INDEX)
            .map(|b| RegFile::new(b.size))
            .transpose()?;
        let irq_counts = desc.irq_counts();
        Ok(Self {
            config,
            bar0,
            irqs: Interrupts::default(),
            irq_counts,
            express: desc.capability_offset(|c| matches!(c, Capability::Express { .. })),
            pm: desc.capability_offset(|c| matches!(c, Capability::PowerManagement)),
            flr_done: false,
            msix_table: desc.capabilities.iter().find_map(|(_, c)| match *c {
                Capability::MsiX {
                    vectors,
                    table_bar,
                    table_offset,
                    ..
                } => {
                    let start = u64::from(table_offset);
                    Some((
                        u32::from(table_bar),
                        start..start + u64::from(vectors) * MSIX_ENTRY,
                    ))
                }
                _ => None,
            }),
            read_only: Vec::new(),
            trapped: Vec::new(),
        })
    }

    /// Marks BAR0 bytes in `range` as computed by the variant: client writes leave the file's
    /// bytes there untouched (the variant overlays their value on reads).
    pub fn set_bar0_read_only(&mut self, range: Range<u64>) {
        self.trapped.push(range.clone());
        self.read_only.push(range);
    }

    /// Marks BAR0 bytes in `range` as a register whose accesses the variant must see (a
    /// doorbell): the pages holding it are left out of the client's mappable areas.
    pub fn trap_bar0(&mut self, range: Range<u64>) {
        self.trapped.push(range);
    }

    /// The mappable areas of BAR0: every page but those holding the MSI-X table (as
    /// `msix_sparse_mmap_cap` leaves it out) or a trapped register.
    fn bar0_areas(&self, size: u64) -> Vec<SparseArea> {
        let mut holes: Vec<Range<u64>> = self
            .trapped
            .iter()
            .chain(
                self.msix_table
                    .iter()
                    .filter(|(bar, _)| *bar == BAR0_REGION_INDEX)
                    .map(|(_, t)| t),
            )
            .filter(|r| r.start < r.end)
            .map(|r| r.start / PAGE * PAGE..r.end.div_ceil(PAGE).saturating_mul(PAGE).min(size))
            .collect();
        holes.sort_by_key(|r| r.start);
        let mut areas = Vec::new();
        let mut at = 0;
        for hole in holes {
            if hole.start > at {
                areas.push(SparseArea {
                    offset: at,
                    size: hole.start - at,
                });
            }
            at = at.max(hole.end);
        }
        if at < size {
            areas.push(SparseArea {
                offset: at,
                size: size - at,
            });
        }
        areas
    }

    /// Memory space accesses reach the function: memory decode on in the virtual COMMAND and
    /// the function in D0 (`__vfio_pci_memory_enabled`).
    pub fn memory_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY != 0 && self.power_state() != PMCSR_D3HOT
    }

    /// The power state bits of the PMCSR (0 = D0); D0 for a function without PM.
    fn power_state(&self) -> u16 {
        self.pm
            .map_or(0, |p| self.config16(p + PM_PMCSR) & PMCSR_STATE)
    }

    fn config16(&self, at: usize) -> u16 {
        let mut value = [0u8; 2];
        self.config.read(at, &mut value);
        u16::from_le_bytes(value)
    }

    /// How many bytes of an access of `len` at `offset` of BAR `index` are served, as
    /// `vfio_pci_bar_rw` decides: EINVAL at or past the end, then clipped, then EIO while
    /// memory space is disabled (`vfio_pci_core_do_io_rw` with `test_mem`). `gated` false is a
    /// debugger's access, which the decode state does not stop.
    fn bar_access(&self, index: u32, offset: u64, len: usize, gated: bool) -> Result<usize, Errno> {
        let size = self.bar_size(index).ok_or(Errno::EINVAL)?;
        let n = clip(size, offset, len)?;
        if gated && !self.memory_enabled() {
            return Err(Errno::EIO);
        }
        Ok(n)
    }

    /// Reads BAR `index` (any BAR the description declared).
    fn bar_read(
        &self,
        index: u32,
        offset: u64,
        buf: &mut [u8],
        gated: bool,
    ) -> Result<usize, Errno> {
        let n = self.bar_access(index, offset, buf.len(), gated)?;
        let buf = &mut buf[..n];
        match (&self.bar0, index) {
            (Some(regs), BAR0_REGION_INDEX) => {
                regs.read(offset, buf).ok_or(Errno::EINVAL)?;
            }
            // A BAR nothing backs reads as a PCI read of nothing does.
            _ => buf.fill(0xff),
        }
        if let Some((_, table)) = self.msix_table.as_ref().filter(|(bar, _)| *bar == index) {
            fill_overlap(buf, offset, table, 0xff);
        }
        Ok(n)
    }

    /// Writes BAR `index`: bytes under the MSI-X table or a read-only range are dropped.
    fn bar_write(
        &mut self,
        index: u32,
        offset: u64,
        data: &[u8],
        gated: bool,
    ) -> Result<usize, Errno> {
        let n = self.bar_access(index, offset, data.len(), gated)?;
        let data = &data[..n];
        let Some(regs) = self.bar0.as_mut().filter(|_| index == BAR0_REGION_INDEX) else {
            return Ok(n);
        };
        let table = self
            .msix_table
            .as_ref()
            .filter(|(bar, _)| *bar == index)
            .map(|(_, t)| t.clone());
        let kept: Vec<&Range<u64>> = self.read_only.iter().chain(table.as_ref()).collect();
        if kept.iter().all(|r| !overlaps(r, offset, n)) {
            regs.write(offset, data).ok_or(Errno::EINVAL)?;
            return Ok(n);
        }
        let mut merged = vec![0u8; n];
        regs.read(offset, &mut merged).ok_or(Errno::EINVAL)?;
        for (i, (m, d)) in merged.iter_mut().zip(data).enumerate() {
            let at = offset + i as u64;
            if !kept.iter().any(|r| r.contains(&at)) {
                *m = *d;
            }
        }
        regs.write(offset, &merged).ok_or(Errno::EINVAL)?;
        Ok(n)
    }

    /// Reads region `index` as a debugger would (`vgrace ctl peek`): BARs are read whatever
    /// the decode and power state.
    pub fn backdoor_read(
        &mut self,
        index: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, Errno> {
        if self.bar_size(index).is_some() {
            return self.bar_read(index, offset, buf, false);
        }
        self.region_read(index, offset, buf)
    }

    /// Writes region `index` as a debugger would (`vgrace ctl poke`); see
    /// [`PciCore::backdoor_read`].
    pub fn backdoor_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        if self.bar_size(index).is_some() {
            return self.bar_write(index, offset, data, false);
        }
        self.region_write(index, offset, data)
    }

    /// Open (`vfio_pci_core_enable` + `vfio_config_init`): the function is enabled and reset,
    /// and the virtual config space is rebuilt from the function's own: every register at its
    /// reset value (BAR registers 0, MSI-X off, D0) except COMMAND, which has memory decode on
    /// (`pci_enable_device`) with bus mastering and INTx-disable off.
    pub fn open(&mut self) {
        self.irqs.clear();
        self.function_reset();
        self.config.reset();
        let command = self.command();
        let command = (command | COMMAND_MEMORY) & !(COMMAND_MASTER | COMMAND_INTX_DISABLE);
        self.config.write(COMMAND, &command.to_le_bytes());
        self.flr_done = false;
    }

    /// Close (`vfio_pci_core_disable`): interrupts off (their eventfds dropped) and the
    /// close-time function reset. The virtual config goes with the client; [`PciCore::open`]
    /// builds the next one.
    pub fn close(&mut self) {
        self.irqs.clear();
        self.function_reset();
    }

    /// The function's own reset (`pci_try_reset_function` on the hardware): the BAR0 register
    /// file goes back to zeros. The virtual config space is not touched.
    fn function_reset(&mut self) {
        if let Some(regs) = &mut self.bar0 {
            regs.reset();
        }
    }

    /// True once after the guest reset the function through config space (an FLR written to
    /// Device Control): the variant runs its own reset work then (the PCI `reset_done`
    /// callback in the kernel).
    pub fn take_function_reset(&mut self) -> bool {
        std::mem::take(&mut self.flr_done)
    }

    /// The BAR register pair of region `index` back to 0 (a variant that emulates a BAR
    /// clears it at VFIO_DEVICE_RESET, as `nvgrace_gpu_init_fake_bar_emu_regs` does).
    pub fn clear_bar(&mut self, index: u32) {
        self.config.clear_bar(index);
    }

    /// The virtual COMMAND register.
    pub fn command(&self) -> u16 {
        let mut command = [0u8; 2];
        self.config.read(COMMAND, &mut command);
        u16::from_le_bytes(command)
    }

    /// After a config write: a PMCSR write moves the function to D0 or D3hot
    /// (`vfio_pm_config_write`; D1 and D2 are not supported, so the state stays as it was
    /// `before`), and an initiate-FLR bit in Device Control reads back 0 and, since the
    /// function advertises FLR, resets it (`vfio_exp_config_write`).
    fn after_config_write(&mut self, offset: usize, len: usize, before: u16) {
        let written = offset..offset.saturating_add(len);
        if let Some(pmcsr) = self
            .pm
            .map(|p| p + PM_PMCSR)
            .filter(|p| written.contains(p))
        {
            let value = self.config16(pmcsr);
            if !matches!(value & PMCSR_STATE, 0 | PMCSR_D3HOT) {
                let kept = (value & !PMCSR_STATE) | before;
                self.config.write(pmcsr, &kept.to_le_bytes());
            }
        }
        self.after_devctl_write(offset, len);
    }

    /// The FLR half of [`PciCore::after_config_write`].
    fn after_devctl_write(&mut self, offset: usize, len: usize) {
        let Some(devctl) = self.express.map(|e| e + EXP_DEVCTL) else {
            return;
        };
        // Only a write that covers Device Control's upper byte can set the bit.
        if !(offset..offset.saturating_add(len)).contains(&(devctl + 1)) {
            return;
        }
        let mut value = [0u8; 2];
        self.config.read(devctl, &mut value);
        let value = u16::from_le_bytes(value);
        if value & DEVCTL_INITIATE_FLR == 0 {
            return;
        }
        self.config
            .write(devctl, &(value & !DEVCTL_INITIATE_FLR).to_le_bytes());
        self.function_reset();
        self.flr_done = true;
    }

    /// Power state back to D0 (`vfio_pci_set_power_state(vdev, PCI_D0)` before a reset).
    fn set_d0(&mut self) {
        if let Some(pmcsr) = self.pm.map(|p| p + PM_PMCSR) {
            let mut value = [0u8; 2];
            self.config.read(pmcsr, &mut value);
            let value = u16::from_le_bytes(value) & !PMCSR_STATE;
            self.config.write(pmcsr, &value.to_le_bytes());
        }
    }

    /// Raises interrupt `vector` of IRQ index `index` (signals its eventfd). False when the
    /// client has not wired that vector; EINVAL when the device has no such vector.
    pub fn trigger(&mut self, index: u32, vector: u32) -> Result<bool, Errno> {
        let count = self.irq_counts.get(index as usize).copied().unwrap_or(0);
        if vector >= count {
            return Err(Errno::EINVAL);
        }
        Ok(self.irqs.raise(index, vector))
    }

    /// Size of the BAR at region `index` if the description declared one.
    fn bar_size(&self, index: u32) -> Option<u64> {
        self.config.bars().get(index).map(|b| b.size)
    }

    /// Config space offset as an index: an access at or past the end of config space, or one
    /// crossing it, is EFAULT (`vfio_pci_config_rw_single`).
    fn config_offset(offset: u64, len: usize) -> Result<usize, Errno> {
        usize::try_from(offset)
            .ok()
            .filter(|o| {
                o.checked_add(len)
                    .is_some_and(|end| *o < CONFIG_SIZE && end <= CONFIG_SIZE)
            })
            .ok_or(Errno::EFAULT)
    }
}

/// True when `[offset, offset + len)` and `range` share a byte.
fn overlaps(range: &Range<u64>, offset: u64, len: usize) -> bool {
    let end = offset.saturating_add(len as u64);
    offset < range.end && range.start < end
}

/// Sets the bytes of `buf` (read at `offset`) that lie in `range` to `value`.
fn fill_overlap(buf: &mut [u8], offset: u64, range: &Range<u64>, value: u8) {
    for (i, b) in buf.iter_mut().enumerate() {
        if range.contains(&(offset + i as u64)) {
            *b = value;
        }
    }
}

impl Device for PciCore {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
            num_regions: PCI_NUM_REGIONS,
            num_irqs: PCI_NUM_IRQS,
        }
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo<'_>, Errno> {
        if let (BAR0_REGION_INDEX, Some(regs)) = (index, &self.bar0) {
            // `vfio_pci_ioctl_get_region_info`: a BAR is mappable, with the pages that must
            // trap left out.
            return Ok(RegionInfo {
                flags: RW | VFIO_REGION_INFO_FLAG_MMAP,
                size: regs.size(),
                fd_offset: 0,
                sparse_areas: self.bar0_areas(regs.size()),
                fd: Some(regs.fd()),
            });
        }
        // The legacy VGA range exists only for a VGA function (`vfio_pci_ioctl_get_region_info`
        // answers EINVAL without `has_vga`); none of ours is one.
        let (flags, size) = if index >= PCI_NUM_REGIONS || index == VGA_REGION_INDEX {
            return Err(Errno::EINVAL);
        } else if index == CONFIG_REGION_INDEX {
            (RW, CONFIG_SIZE as u64)
        } else if let Some(size) = self.bar_size(index) {
            (RW, size)
        } else {
            (0, 0)
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
        if index == CONFIG_REGION_INDEX {
            return Ok(self
                .config
                .read(Self::config_offset(offset, buf.len())?, buf));
        }
        self.bar_read(index, offset, buf, true)
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        if index == CONFIG_REGION_INDEX {
            let at = Self::config_offset(offset, data.len())?;
            let state = self.power_state();
            let n = self.config.write(at, data);
            self.after_config_write(at, n, state);
            return Ok(n);
        }
        self.bar_write(index, offset, data, true)
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo, Errno> {
        // `vfio_pci_ioctl_get_irq_info`: the error interrupt exists only on PCI Express; every
        // index signals through eventfds; INTx is maskable and automasked, the others cannot
        // be resized (MSI-X is offered without dynamic allocation).
        let count = *self.irq_counts.get(index as usize).ok_or(Errno::EINVAL)?;
        let flags = match index {
            ERR_IRQ_INDEX if self.express.is_none() => return Err(Errno::EINVAL),
            INTX_IRQ_INDEX => {
                VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED
            }
            _ => VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
        };
        Ok(IrqInfo { flags, count })
    }

    fn set_irqs(&mut self, req: SetIrqs) -> Result<(), Errno> {
        self.irqs.set(req)
    }

    fn reset(&mut self) -> Result<(), Errno> {
        // VFIO_DEVICE_RESET (`vfio_pci_ioctl_reset`): D0, then `pci_try_reset_function`, which
        // saves and restores the function's config around the reset; the virtual config the
        // client sees (COMMAND, BAR registers, DevCtl, ...) is not touched.
        self.set_d0();
        self.function_reset();
        Ok(())
    }

    fn client_attached(&mut self) {
        self.open();
    }

    fn request_release(&mut self) -> bool {
        self.irqs.raise(REQ_IRQ_INDEX, 0)
    }

    fn client_detached(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use vfu::device::ROM_REGION_INDEX;

    use super::*;
    use crate::bar::BarDesc;
    use crate::description::{Capability, Header};

    /// A made-up network function with a 64 KiB BAR0 and a 1 MiB BAR2, no variant at all,
    /// opened as a client finds it.
    fn plain_core() -> PciCore {
        let mut core = closed_core();
        core.open();
        core
    }

    fn closed_core() -> PciCore {
        PciCore::new(&PciDescription {
            header: Header {
                vendor_id: 0x1af4,
                device_id: 0x1041,
                revision: 1,
                class_code: 0x02_00_00,
                subsystem_vendor_id: 0x1af4,
                subsystem_id: 0x1100,
                interrupt_pin: 1,
            },
            capabilities: vec![(
                0x40,
                Capability::MsiX {
                    vectors: 4,
                    table_bar: 0,
                    table_offset: 0x8000,
                    pba_bar: 0,
                    pba_offset: 0x9000,
                },
            )],
            ext_capabilities: Vec::new(),
            bars: vec![
                BarDesc::mem64(BAR0_REGION_INDEX, 64 << 10, false),
                BarDesc::mem64(2, 1 << 20, true),
            ],
        })
        .unwrap()
    }

    fn cfg32(d: &mut PciCore, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        d.region_read(CONFIG_REGION_INDEX, offset, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    #[test]
    fn core_alone_serves_identity_bar0_absent_regions_and_sizing() {
        let mut d = plain_core();
        // Identity and the capability list.
        assert_eq!(cfg32(&mut d, 0), 0x1041_1af4);
        assert_eq!(cfg32(&mut d, 8) >> 8, 0x02_0000);
        assert_eq!(cfg32(&mut d, 0x34) & 0xff, 0x40);
        // BAR0 is a register file of the declared size.
        let bar0 = d.region_info(BAR0_REGION_INDEX).unwrap();
        assert_eq!(
            (bar0.flags, bar0.size),
            (RW | VFIO_REGION_INFO_FLAG_MMAP, 64 << 10)
        );
        // The MSI-X table's page (0x8000) is not offered for mapping.
        let areas: Vec<(u64, u64)> = bar0
            .sparse_areas
            .iter()
            .map(|a| (a.offset, a.size))
            .collect();
        assert_eq!(areas, [(0, 0x8000), (0x9000, 0x7000)]);
        d.region_write(BAR0_REGION_INDEX, 0x100, &0xfeed_u32.to_le_bytes())
            .unwrap();
        let mut b = [0u8; 4];
        d.region_read(BAR0_REGION_INDEX, 0x100, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0xfeed);
        assert_eq!(
            d.region_read(BAR0_REGION_INDEX, 64 << 10, &mut b),
            Err(Errno::EINVAL)
        );
        // Upper halves, BAR4 and ROM are absent; VGA (not a VGA function) and past the last
        // index are EINVAL.
        for index in [1, 3, 4, 5, ROM_REGION_INDEX] {
            let info = d.region_info(index).unwrap();
            assert_eq!((info.flags, info.size), (0, 0), "region {index}");
            assert_eq!(d.region_read(index, 0, &mut b), Err(Errno::EINVAL));
        }
        assert!(d.region_info(VGA_REGION_INDEX).is_err());
        assert!(d.region_info(PCI_NUM_REGIONS).is_err());
        // Sizing probe of the BAR it was given.
        d.region_write(CONFIG_REGION_INDEX, 0x18, &[0xff; 8])
            .unwrap();
        assert_eq!(cfg32(&mut d, 0x18), !((1u32 << 20) - 1) | 0xc);
        assert_eq!(cfg32(&mut d, 0x1c), u32::MAX);
    }

    #[test]
    fn function_reset_keeps_virtual_config_and_clears_the_register_file() {
        let mut d = plain_core();
        d.open();
        d.region_write(CONFIG_REGION_INDEX, 0x18, &0x8000_0000u32.to_le_bytes())
            .unwrap();
        d.region_write(BAR0_REGION_INDEX, 0x100, &0xfeed_u32.to_le_bytes())
            .unwrap();
        d.reset().unwrap();
        assert_eq!(cfg32(&mut d, 0x18), 0x8000_000c);
        assert_ne!(d.command() & COMMAND_MEMORY, 0);
        let mut b = [0xaau8; 4];
        d.region_read(BAR0_REGION_INDEX, 0x100, &mut b).unwrap();
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn open_rebuilds_config_with_memory_decode_on() {
        let mut d = closed_core();
        assert_eq!(d.command() & COMMAND_MEMORY, 0);
        d.region_write(CONFIG_REGION_INDEX, 0x04, &0x0406u16.to_le_bytes())
            .unwrap();
        d.region_write(CONFIG_REGION_INDEX, 0x18, &0x8000_0000u32.to_le_bytes())
            .unwrap();
        d.close();
        d.open();
        assert_eq!(d.command(), COMMAND_MEMORY);
        assert_eq!(cfg32(&mut d, 0x18), 0xc);
    }

    #[test]
    fn unbacked_bar_reads_ones_drops_writes_and_clips() {
        let mut d = plain_core();
        let mut b = [0u8; 8];
        assert_eq!(d.region_read(2, (1 << 20) - 2, &mut b), Ok(2));
        assert_eq!(b[..2], [0xff, 0xff]);
        assert_eq!(d.region_write(2, 0, &[1; 8]), Ok(8));
        assert_eq!(d.region_write(2, u64::MAX, &[1; 8]), Err(Errno::EINVAL));
    }

    #[test]
    fn irqs_follow_the_description() {
        let d = plain_core();
        assert_eq!(d.irq_info(INTX_IRQ_INDEX).unwrap().count, 1);
        let msix = d.irq_info(vfu::device::MSIX_IRQ_INDEX).unwrap();
        assert_eq!(msix.count, 4);
        assert_ne!(msix.flags & VFIO_IRQ_INFO_NORESIZE, 0);
        // MSI is not offered, yet its index reports EVENTFD as the kernel's does.
        let msi = d.irq_info(vfu::device::MSI_IRQ_INDEX).unwrap();
        assert_eq!(
            (msi.count, msi.flags),
            (0, VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE)
        );
        // No PCI Express capability: no error interrupt index at all.
        assert_eq!(d.irq_info(ERR_IRQ_INDEX), Err(Errno::EINVAL));
        assert!(d.irq_info(PCI_NUM_IRQS).is_err());
    }
}
