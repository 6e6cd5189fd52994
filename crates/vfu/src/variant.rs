//! Delegation by structure, as Linux's ops tables point a variant driver's unfilled operations
//! at `vfio_pci_core_*` and crosvm implements its bus trait once for every PCI device: a device
//! written on a core device (for PCI, `vfu_pci::PciCore`) implements [`Variant`] (the core it
//! extends, the regions it answers itself, and hooks), and the one blanket implementation of
//! [`Device`] here serves it, forwarding every region and every method it does not take over to
//! the core. Such a device gets the core's lifecycle, interrupts and config space without a line
//! of its own.
//!
//! The range check of an owned region ("an offset at or past the end is EINVAL, then clip the
//! count", in the kernel's order) is made here once, from the size the core declares for that
//! region (as libvfio-user checks an access against what `vfu_setup_region` was given), before
//! the variant's handler runs; the core checks its own regions with the same [`clip`].

use crate::dma::DmaHandle;
use crate::errno::Errno;
use crate::seam::FileSpan;
use crate::seam::{AccessWait, Device, DeviceInfo, IrqInfo, RegionInfo, SetIrqs};

/// Bytes of an access of `len` at `offset` that a region of `size` serves, in the kernel's
/// order: EINVAL when the access starts at or past the end (whatever `len`, so `offset + len`
/// is never computed), else `len` clipped at the end.
pub fn clip(size: u64, offset: u64, len: usize) -> Result<usize, Errno> {
    if offset >= size {
        return Err(Errno::EINVAL);
    }
    let room = size - offset;
    Ok(usize::try_from(room).map_or(len, |r| r.min(len)))
}

/// A device made of a core device and the regions it answers itself. Every method but the
/// core accessors has a default, so a variant states only what differs.
pub trait Variant: Send {
    /// The device this one extends.
    type Core: Device;

    /// The core this device extends.
    fn core(&self) -> &Self::Core;

    /// The core, to change.
    fn core_mut(&mut self) -> &mut Self::Core;

    /// Whether the device answers region `index` itself. Its size is still the one the core
    /// declares for `index` (its REGION_INFO size), which the range check uses.
    fn owns(&self, index: u32) -> bool {
        let _ = index;
        false
    }

    /// REGION_INFO of an owned region; `None` (the default) keeps the core's.
    fn owned_info(&self, index: u32) -> Option<RegionInfo<'_>> {
        let _ = index;
        None
    }

    /// Reads an owned region: `offset` is inside it and `buf` is already clipped at its end.
    fn owned_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let _ = (index, offset, buf);
        Err(Errno::EINVAL)
    }

    /// Writes an owned region; `offset` is inside and `data` clipped, as for reads.
    fn owned_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let _ = (index, offset, data);
        Err(Errno::EINVAL)
    }

    /// [`Device::region_read_span`] of an owned region, `offset` inside and `count` clipped.
    /// Default: `Ok(None)`, the server reads through [`Variant::owned_read`].
    fn owned_read_span(
        &mut self,
        index: u32,
        offset: u64,
        count: usize,
    ) -> Result<Option<FileSpan<'_>>, Errno> {
        let _ = (index, offset, count);
        Ok(None)
    }

    /// [`Device::access_wait`] of an owned region, for an `offset` inside it (an access past
    /// the end is EINVAL without a wait). Default: nothing to wait for.
    fn owned_access_wait(
        &mut self,
        index: u32,
        offset: u64,
        write: bool,
    ) -> Option<Box<dyn AccessWait>> {
        let _ = (index, offset, write);
        None
    }

    /// After the core served a read of region `index` into `buf` (the bytes it returned): a
    /// variant's computed registers over the core's. Not called for a span the core answers.
    fn after_core_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) {
        let _ = (index, offset, buf);
    }

    /// After the core served a write of `len` bytes at `offset` of its region `index` (a
    /// doorbell, or a reset the guest started through config space). Default: nothing.
    fn after_core_write(&mut self, index: u32, offset: u64, len: usize) -> Result<(), Errno> {
        let _ = (index, offset, len);
        Ok(())
    }

    /// After the core's [`Device::reset`]. Default: nothing.
    fn after_reset(&mut self) -> Result<(), Errno> {
        Ok(())
    }

    /// After the core's [`Device::client_attached`]. Default: nothing.
    fn after_client_attached(&mut self) {}

    /// After the core's [`Device::client_detached`]. Default: nothing.
    fn after_client_detached(&mut self) {}
}

/// The bytes of an access of `len` at `offset` that owned region `index` serves.
fn owned_len<V: Variant>(v: &V, index: u32, offset: u64, len: usize) -> Result<usize, Errno> {
    clip(v.core().region_info(index)?.size, offset, len)
}

impl<V: Variant> Device for V {
    fn device_info(&self) -> DeviceInfo {
        self.core().device_info()
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo<'_>, Errno> {
        match self.owns(index).then(|| self.owned_info(index)).flatten() {
            Some(info) => Ok(info),
            None => self.core().region_info(index),
        }
    }

    fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        if !self.owns(index) {
            let n = self.core_mut().region_read(index, offset, buf)?;
            self.after_core_read(index, offset, &mut buf[..n]);
            return Ok(n);
        }
        let n = owned_len(self, index, offset, buf.len())?;
        self.owned_read(index, offset, &mut buf[..n])?;
        Ok(n)
    }

    fn region_read_span(
        &mut self,
        index: u32,
        offset: u64,
        count: usize,
    ) -> Result<Option<FileSpan<'_>>, Errno> {
        if !self.owns(index) {
            return self.core_mut().region_read_span(index, offset, count);
        }
        let n = owned_len(self, index, offset, count)?;
        self.owned_read_span(index, offset, n)
    }

    fn region_io_fds(&self, index: u32) -> Errno {
        self.core().region_io_fds(index)
    }

    fn access_wait(&mut self, index: u32, offset: u64, write: bool) -> Option<Box<dyn AccessWait>> {
        if !self.owns(index) {
            return self.core_mut().access_wait(index, offset, write);
        }
        owned_len(self, index, offset, 1).ok()?;
        self.owned_access_wait(index, offset, write)
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        if !self.owns(index) {
            let n = self.core_mut().region_write(index, offset, data)?;
            self.after_core_write(index, offset, n)?;
            return Ok(n);
        }
        let n = owned_len(self, index, offset, data.len())?;
        self.owned_write(index, offset, &data[..n])?;
        Ok(n)
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo, Errno> {
        self.core().irq_info(index)
    }

    fn set_irqs(&mut self, req: SetIrqs) -> Result<(), Errno> {
        self.core_mut().set_irqs(req)
    }

    fn reset(&mut self) -> Result<(), Errno> {
        self.core_mut().reset()?;
        self.after_reset()
    }

    fn device_feature(&mut self, flags: u32, data: &[u8]) -> Result<Vec<u8>, Errno> {
        self.core_mut().device_feature(flags, data)
    }

    fn mig_data_read(&mut self, size: u32) -> Result<Vec<u8>, Errno> {
        self.core_mut().mig_data_read(size)
    }

    fn mig_data_write(&mut self, data: &[u8]) -> Result<(), Errno> {
        self.core_mut().mig_data_write(data)
    }

    fn dma_attached(&mut self, dma: DmaHandle) {
        self.core_mut().dma_attached(dma);
    }

    fn dma_mapped(&mut self, iova: u64, size: u64) {
        self.core_mut().dma_mapped(iova, size);
    }

    fn dma_unmapped(&mut self, iova: u64, size: u64) {
        self.core_mut().dma_unmapped(iova, size);
    }

    fn request_release(&mut self) -> bool {
        self.core_mut().request_release()
    }

    fn client_attached(&mut self) {
        self.core_mut().client_attached();
        self.after_client_attached();
    }

    fn client_detached(&mut self) {
        self.core_mut().client_detached();
        self.after_client_detached();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_is_einval_at_the_end_whatever_the_count_then_clips() {
        assert_eq!(clip(16, 16, 0), Err(Errno::EINVAL));
        assert_eq!(clip(16, u64::MAX, usize::MAX), Err(Errno::EINVAL));
        assert_eq!(clip(16, 12, usize::MAX), Ok(4));
        assert_eq!(clip(u64::MAX, 0, 8), Ok(8));
    }
}
