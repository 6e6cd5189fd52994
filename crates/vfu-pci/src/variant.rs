//! Delegation by structure, as Linux's ops tables point a variant driver's unfilled operations
//! at `vfio_pci_core_*`: a device written on the core implements [`PciVariant`] (the core it
//! extends, the regions it answers itself, and optional hooks), and [`Variant`] makes it a
//! `vfu::Device` that forwards everything else to the core (a wrapper, because `Device` is
//! vfu's trait). Such a device gets the core's lifecycle (open,
//! close, function reset), its interrupts and its config space without a line of its own, and
//! the range check of its own regions ("an offset at or past the end is EINVAL, then clip")
//! is applied here once, from the BAR sizes its description declared.

use vfu::{Device, DeviceInfo, Errno, IrqInfo, RegionInfo, SetIrqs};

use super::core::{clip, PciCore};

/// A device made of a [`PciCore`] and the regions it answers itself.
pub trait PciVariant: Send {
    /// The core this device extends.
    fn core(&self) -> &PciCore;

    /// The core, to change.
    fn core_mut(&mut self) -> &mut PciCore;

    /// Whether the device answers region `index` itself (a BAR its description declared; the
    /// core still answers its REGION_INFO unless [`PciVariant::owned_info`] says otherwise).
    fn owns(&self, index: u32) -> bool {
        let _ = index;
        false
    }

    /// REGION_INFO of an owned region; `None` (the default) keeps the core's (size and
    /// READ|WRITE from the description).
    fn owned_info(&self, index: u32) -> Option<RegionInfo<'_>> {
        let _ = index;
        None
    }

    /// Reads an owned region: `buf` is already clipped at the region's end and `offset` is
    /// inside it.
    fn owned_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno>;

    /// Writes an owned region; `data` is clipped and `offset` inside, as for reads.
    fn owned_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno>;

    /// After the core served a write of `len` bytes at `offset` of its region `index` (a
    /// doorbell in a core BAR). Default: nothing.
    fn after_core_write(&mut self, index: u32, offset: u64, len: usize) -> Result<(), Errno> {
        let _ = (index, offset, len);
        Ok(())
    }
}

/// The bytes of an access of `len` at `offset` that owned region `index` serves.
fn owned_len<V: PciVariant>(v: &V, index: u32, offset: u64, len: usize) -> Result<usize, Errno> {
    let size = v.core().region_info(index)?.size;
    clip(size, offset, len)
}

/// A [`PciVariant`] served as a `vfu::Device`: `Server::new(Variant(device), ..)`.
#[derive(Debug)]
pub struct Variant<V>(pub V);

impl<V: PciVariant> Device for Variant<V> {
    fn device_info(&self) -> DeviceInfo {
        self.0.core().device_info()
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo<'_>, Errno> {
        match self
            .0
            .owns(index)
            .then(|| self.0.owned_info(index))
            .flatten()
        {
            Some(info) => Ok(info),
            None => self.0.core().region_info(index),
        }
    }

    fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        if !self.0.owns(index) {
            return self.0.core_mut().region_read(index, offset, buf);
        }
        let n = owned_len(&self.0, index, offset, buf.len())?;
        self.0.owned_read(index, offset, &mut buf[..n])?;
        Ok(n)
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        if !self.0.owns(index) {
            let n = self.0.core_mut().region_write(index, offset, data)?;
            self.0.after_core_write(index, offset, n)?;
            return Ok(n);
        }
        let n = owned_len(&self.0, index, offset, data.len())?;
        self.0.owned_write(index, offset, &data[..n])?;
        Ok(n)
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo, Errno> {
        self.0.core().irq_info(index)
    }

    fn set_irqs(&mut self, req: SetIrqs) -> Result<(), Errno> {
        self.0.core_mut().set_irqs(req)
    }

    fn reset(&mut self) -> Result<(), Errno> {
        self.0.core_mut().reset()
    }

    fn request_release(&mut self) -> bool {
        self.0.core_mut().request_release()
    }

    fn client_attached(&mut self) {
        self.0.core_mut().client_attached();
    }

    fn client_detached(&mut self) {
        self.0.core_mut().client_detached();
    }
}
