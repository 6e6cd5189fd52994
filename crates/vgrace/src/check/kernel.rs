//! The checks' target for a device under the kernel's VFIO (`vgrace check --vfio-device`): the
//! same rules against the real `nvgrace-gpu-vfio-pci`, in an L1 guest or on a Grace host.

use std::os::fd::AsFd;

use anyhow::Result;
use vfu::SparseArea;

use super::{CheckError, RegionView, Target, FLAG_MMAP};
use crate::kvfio::KernelDevice;

/// An open device and its region offsets.
pub(super) struct KernelTarget {
    dev: KernelDevice,
    offsets: Vec<Option<u64>>,
}

impl KernelTarget {
    /// Opens `bdf` through its VFIO group.
    pub(super) fn open(bdf: &str) -> Result<Self> {
        let dev = KernelDevice::open(bdf).map_err(anyhow::Error::msg)?;
        Ok(Self {
            dev,
            offsets: Vec::new(),
        })
    }

    /// Where region `index` starts in the device fd (asked once).
    fn offset(&mut self, index: u32) -> Result<u64, CheckError> {
        if let Some(Some(o)) = self.offsets.get(index as usize) {
            return Ok(*o);
        }
        let r = self.dev.region_info(index).map_err(CheckError::Errno)?;
        self.remember(index, r.offset);
        Ok(r.offset)
    }

    fn remember(&mut self, index: u32, offset: u64) {
        let i = index as usize;
        if self.offsets.len() <= i {
            self.offsets.resize(i + 1, None);
        }
        self.offsets[i] = Some(offset);
    }
}

impl Target for KernelTarget {
    fn region_info(&mut self, index: u32) -> Result<RegionView> {
        let r = self
            .dev
            .region_info(index)
            .map_err(|e| anyhow::anyhow!("VFIO_DEVICE_GET_REGION_INFO {index}: {e}"))?;
        self.remember(index, r.offset);
        // The kernel maps regions through the device fd itself, at the region's offset.
        let fd = if r.flags & FLAG_MMAP != 0 {
            Some(self.dev.as_fd().try_clone_to_owned()?)
        } else {
            None
        };
        Ok(RegionView {
            flags: r.flags,
            size: r.size,
            fd_offset: r.offset,
            sparse: r
                .sparse
                .unwrap_or_default()
                .into_iter()
                .map(|(offset, size)| SparseArea { offset, size })
                .collect(),
            fd,
        })
    }

    fn read(&mut self, index: u32, offset: u64, count: u32) -> Result<Vec<u8>, CheckError> {
        let at = self
            .offset(index)?
            .checked_add(offset)
            .ok_or(CheckError::Errno(vfu::Errno::EOVERFLOW))?;
        self.dev.read(at, count as usize).map_err(CheckError::Errno)
    }

    fn write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), CheckError> {
        let at = self
            .offset(index)?
            .checked_add(offset)
            .ok_or(CheckError::Errno(vfu::Errno::EOVERFLOW))?;
        self.dev
            .write(at, data)
            .map(|_| ())
            .map_err(CheckError::Errno)
    }

    fn reset(&mut self) -> Result<()> {
        self.dev
            .reset()
            .map_err(|e| anyhow::anyhow!("VFIO_DEVICE_RESET: {e}"))
    }
}
