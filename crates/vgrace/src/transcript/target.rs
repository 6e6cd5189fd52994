//! What the transcript talks to: a vfio-user server (`--socket`) or a device under the kernel's
//! VFIO (`--vfio-device`), behind one interface that keeps only what both can answer.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::errno::Errno;
use vfu::client::Client;
use vfu::Error as VfuError;

use crate::kvfio::KernelDevice;

/// A region as both transports describe it (the offset of the region in the device fd is the
/// transport's business and left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// VFIO_REGION_INFO_FLAG_*.
    pub flags: u32,
    /// Size.
    pub size: u64,
    /// Sparse-mmap areas (offset, size), if the region has the capability.
    pub sparse: Option<Vec<(u64, u64)>>,
}

/// One device, reached one way or the other.
pub enum Target {
    /// A vfio-user server.
    User {
        /// Its socket, to reconnect.
        path: PathBuf,
        /// The connection (None only between a close and the reconnect).
        client: Option<Box<Client>>,
    },
    /// A device under kernel VFIO.
    Kernel {
        /// The open device.
        dev: KernelDevice,
        /// Region offsets in the device fd, by index (from REGION_INFO).
        offsets: Vec<Option<u64>>,
    },
}

/// The live connection (EPIPE when a reconnect failed).
fn user(client: &mut Option<Box<Client>>) -> Result<&mut Client, Errno> {
    client.as_deref_mut().ok_or(Errno::EPIPE)
}

/// The errno of a vfio-user client error (a transport failure is EPIPE).
fn errno(e: VfuError) -> Errno {
    match e {
        VfuError::Remote { errno, .. } => errno,
        _ => Errno::EPIPE,
    }
}

impl Target {
    /// Connects to a vfio-user server.
    pub fn user(path: PathBuf) -> anyhow::Result<Self> {
        let client = Client::connect(&path)?;
        Ok(Self::User {
            path,
            client: Some(Box::new(client)),
        })
    }

    /// Opens a device under kernel VFIO.
    pub fn kernel(bdf: &str) -> anyhow::Result<Self> {
        let dev = KernelDevice::open(bdf).map_err(anyhow::Error::msg)?;
        Ok(Self::Kernel {
            dev,
            offsets: Vec::new(),
        })
    }

    /// DEVICE_GET_INFO: (flags, regions, irqs).
    pub fn device_info(&mut self) -> Result<(u32, u32, u32), Errno> {
        match self {
            Self::User { client, .. } => {
                let i = user(client)?.device_info().map_err(errno)?;
                Ok((i.flags, i.num_regions, i.num_irqs))
            }
            Self::Kernel { dev, .. } => dev.device_info(),
        }
    }

    /// DEVICE_GET_REGION_INFO.
    pub fn region_info(&mut self, index: u32) -> Result<Region, Errno> {
        match self {
            Self::User { client, .. } => {
                let r = user(client)?.region_info(index).map_err(errno)?;
                let sparse = (r.info.cap_offset != 0 && !r.sparse_areas.is_empty())
                    .then(|| r.sparse_areas.iter().map(|a| (a.offset, a.size)).collect());
                Ok(Region {
                    flags: r.info.flags,
                    size: r.info.size,
                    sparse,
                })
            }
            Self::Kernel { dev, offsets } => {
                let r = dev.region_info(index)?;
                let i = index as usize;
                if offsets.len() <= i {
                    offsets.resize(i + 1, None);
                }
                offsets[i] = Some(r.offset);
                Ok(Region {
                    flags: r.flags,
                    size: r.size,
                    sparse: r.sparse,
                })
            }
        }
    }

    /// DEVICE_GET_IRQ_INFO: (flags, count).
    pub fn irq_info(&mut self, index: u32) -> Result<(u32, u32), Errno> {
        match self {
            Self::User { client, .. } => {
                let i = user(client)?.irq_info(index).map_err(errno)?;
                Ok((i.flags, i.count))
            }
            Self::Kernel { dev, .. } => dev.irq_info(index),
        }
    }

    /// The kernel's fd offset of region `index` (VFIO_PCI_OFFSET_SHIFT when never asked).
    fn offset(offsets: &[Option<u64>], index: u32, at: u64) -> Result<u64, Errno> {
        let base = offsets
            .get(index as usize)
            .copied()
            .flatten()
            .unwrap_or(u64::from(index) << 40);
        base.checked_add(at).ok_or(Errno::EOVERFLOW)
    }

    /// REGION_READ (pread): the bytes returned.
    pub fn read(&mut self, index: u32, offset: u64, len: u32) -> Result<Vec<u8>, Errno> {
        match self {
            Self::User { client, .. } => {
                user(client)?.region_read(index, offset, len).map_err(errno)
            }
            Self::Kernel { dev, offsets } => {
                dev.read(Self::offset(offsets, index, offset)?, len as usize)
            }
        }
    }

    /// REGION_WRITE (pwrite): the count written.
    pub fn write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        match self {
            Self::User { client, .. } => user(client)?
                .region_write(index, offset, data)
                .map(|n| n as usize)
                .map_err(errno),
            Self::Kernel { dev, offsets } => dev.write(Self::offset(offsets, index, offset)?, data),
        }
    }

    /// DEVICE_RESET.
    pub fn reset(&mut self) -> Result<(), Errno> {
        match self {
            Self::User { client, .. } => user(client)?.reset().map_err(errno),
            Self::Kernel { dev, .. } => dev.reset(),
        }
    }

    /// DEVICE_SET_IRQS with no data, bools, or eventfds.
    pub fn set_irqs(
        &mut self,
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        data: &IrqData,
    ) -> Result<(), Errno> {
        match self {
            Self::User { client, .. } => {
                let (bools, fds): (&[u8], Vec<_>) = match data {
                    IrqData::None => (&[], Vec::new()),
                    IrqData::Bool(b) => (b.as_slice(), Vec::new()),
                    IrqData::Eventfd(fds) => (&[], fds.iter().map(|f| f.as_fd()).collect()),
                };
                user(client)?
                    .set_irqs(flags, index, start, count, bools, &fds)
                    .map_err(errno)
            }
            Self::Kernel { dev, .. } => {
                let bytes: Vec<u8> = match data {
                    IrqData::None => Vec::new(),
                    IrqData::Bool(b) => b.clone(),
                    IrqData::Eventfd(fds) => fds
                        .iter()
                        .flat_map(|f| f.as_raw_fd().to_ne_bytes())
                        .collect(),
                };
                dev.set_irqs(flags, index, start, count, &bytes)
            }
        }
    }

    /// Closes and reopens the device (vfio-user: a new connection).
    pub fn reopen(&mut self) -> Result<(), Errno> {
        match self {
            Self::User { path, client } => {
                // The old session must end first, as the kernel's last close must; give the
                // server a moment to see it end before the new one starts.
                *client = None;
                std::thread::sleep(std::time::Duration::from_millis(200));
                *client = Some(Box::new(Client::connect(path).map_err(errno)?));
                Ok(())
            }
            Self::Kernel { dev, .. } => dev.reopen().map_err(|_| Errno::EIO),
        }
    }
}

/// The data of a SET_IRQS.
pub enum IrqData {
    /// DATA_NONE.
    None,
    /// DATA_BOOL, one byte per vector.
    Bool(Vec<u8>),
    /// DATA_EVENTFD.
    Eventfd(Vec<OwnedFd>),
}
