//! A small test device and a server harness shared by the protocol tests.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vfu::irq::IrqTable;
use vfu::server::{bind_socket, Server, ServerConfig, Shutdown};
use vfu::{Device, DeviceInfo, Errno, IrqInfo, RegionInfo, SetIrqs, SparseArea};

/// Region 0: 4 KiB register file. Region 1: 64 KiB of memfd RAM, first 32 KiB mmap-able.
pub const REGS: u32 = 0;
pub const RAM: u32 = 1;
pub const RAM_SIZE: u64 = 64 << 10;
pub const RAM_MMAP: u64 = 32 << 10;

#[derive(Default)]
pub struct Counters {
    pub resets: AtomicUsize,
    pub detached: AtomicUsize,
    pub dma_maps: AtomicUsize,
}

/// Writing a guest address (8 bytes) here makes the device copy 8 bytes of guest memory from it
/// to `DMA_DATA` (a DMA read), or fail the write with the DMA errno.
pub const DMA_DOORBELL: u64 = 0x100;
pub const DMA_DATA: u64 = 0x108;
/// Writing a guest address here makes the device copy `DMA_DATA` to guest memory (a DMA write).
pub const DMA_WRITE_DOORBELL: u64 = 0x110;

pub struct TestDevice {
    regs: Vec<u8>,
    dma: Option<vfu::dma::DmaHandle>,
    ram: std::fs::File,
    pub irqs: Arc<Mutex<IrqTable>>,
    pub counters: Arc<Counters>,
}

impl Default for TestDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl TestDevice {
    pub fn new() -> Self {
        let ram = tempfile::tempfile().unwrap();
        ram.set_len(RAM_SIZE).unwrap();
        Self {
            regs: vec![0; 4096],
            dma: None,
            ram,
            irqs: Arc::new(Mutex::new(IrqTable::new(&[1, 0, 4, 1, 1]))),
            counters: Arc::default(),
        }
    }
}

impl Device for TestDevice {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: 3,
            num_regions: 2,
            num_irqs: 5,
        }
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo<'_>, Errno> {
        match index {
            REGS => Ok(RegionInfo {
                flags: 3,
                size: 4096,
                fd_offset: 0,
                sparse_areas: vec![],
                fd: None,
            }),
            RAM => Ok(RegionInfo {
                flags: 7,
                size: RAM_SIZE,
                fd_offset: 0,
                sparse_areas: vec![SparseArea {
                    offset: 0,
                    size: RAM_MMAP,
                }],
                fd: Some(self.ram.as_fd()),
            }),
            _ => Err(Errno::EINVAL),
        }
    }

    fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        use std::os::unix::fs::FileExt;
        match index {
            REGS => {
                let o = within(offset, buf.len(), self.regs.len() as u64)?;
                let src = &self.regs[o..o + buf.len()];
                buf.copy_from_slice(src);
                Ok(buf.len())
            }
            RAM => {
                within(offset, buf.len(), RAM_SIZE)?;
                self.ram
                    .read_exact_at(buf, offset)
                    .map_err(|_| Errno::EIO)?;
                Ok(buf.len())
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        use std::os::unix::fs::FileExt;
        match index {
            REGS if offset == DMA_DOORBELL && data.len() == 8 => {
                let iova = u64::from_le_bytes(data.try_into().unwrap());
                let mut buf = [0u8; 8];
                self.dma
                    .as_ref()
                    .ok_or(Errno::ENODEV)?
                    .read(iova, &mut buf)?;
                self.regs[DMA_DATA as usize..DMA_DATA as usize + 8].copy_from_slice(&buf);
                Ok(8)
            }
            REGS if offset == DMA_WRITE_DOORBELL && data.len() == 8 => {
                let iova = u64::from_le_bytes(data.try_into().unwrap());
                let src = self.regs[DMA_DATA as usize..DMA_DATA as usize + 8].to_vec();
                self.dma.as_ref().ok_or(Errno::ENODEV)?.write(iova, &src)?;
                Ok(8)
            }
            REGS => {
                let o = within(offset, data.len(), self.regs.len() as u64)?;
                let dst = &mut self.regs[o..o + data.len()];
                dst.copy_from_slice(data);
                Ok(data.len())
            }
            RAM => {
                within(offset, data.len(), RAM_SIZE)?;
                self.ram
                    .write_all_at(data, offset)
                    .map_err(|_| Errno::EIO)?;
                Ok(data.len())
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo, Errno> {
        let counts = [1, 0, 4, 1, 1];
        Ok(IrqInfo {
            flags: 1,
            count: *counts.get(index as usize).ok_or(Errno::EINVAL)?,
        })
    }

    fn set_irqs(&mut self, req: SetIrqs) -> Result<(), Errno> {
        self.irqs.lock().unwrap().apply(req)
    }

    fn reset(&mut self) -> Result<(), Errno> {
        self.counters.resets.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn dma_attached(&mut self, dma: vfu::dma::DmaHandle) {
        self.dma = Some(dma);
    }

    fn dma_mapped(&mut self, _iova: u64, _size: u64) {
        self.counters.dma_maps.fetch_add(1, Ordering::SeqCst);
    }

    fn client_detached(&mut self) {
        self.counters.detached.fetch_add(1, Ordering::SeqCst);
        self.irqs.lock().unwrap().clear();
    }
}

/// A server on a thread, listening on a socket in a temp dir; stopped on drop.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub shutdown: Shutdown,
    pub irqs: Arc<Mutex<IrqTable>>,
    pub counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl Harness {
    pub fn start() -> Self {
        Self::with_config(ServerConfig::default())
    }

    pub fn with_config(config: ServerConfig) -> Self {
        Self::build(config, |s| s)
    }

    /// A harness whose server `setup` adjusts first (an observer, controls).
    pub fn build(
        config: ServerConfig,
        setup: impl FnOnce(Server<TestDevice>) -> Server<TestDevice> + Send + 'static,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.sock");
        let (listener, _bound) = bind_socket(&path).unwrap();
        let device = TestDevice::new();
        let irqs = device.irqs.clone();
        let counters = device.counters.clone();
        let shutdown = Shutdown::new().unwrap();
        let sd = shutdown.clone();
        let thread = std::thread::spawn(move || {
            setup(Server::new(device, config))
                .serve(listener, &sd)
                .unwrap();
        });
        Self {
            dir,
            path,
            shutdown,
            irqs,
            counters,
            thread: Some(thread),
        }
    }

    pub fn client(&self) -> vfu::client::Client {
        vfu::client::Client::connect(&self.path).unwrap()
    }

    pub fn raw(&self) -> vfu::client::Client {
        vfu::client::Client::unnegotiated(
            std::os::unix::net::UnixStream::connect(&self.path).unwrap(),
        )
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

pub fn memfd(size: u64) -> OwnedFd {
    let f = tempfile::tempfile().unwrap();
    f.set_len(size).unwrap();
    f.into()
}

/// `offset` as an index when `[offset, offset + len)` lies inside a region of `size` bytes; EINVAL
/// otherwise, without overflowing (offsets come from the wire).
fn within(offset: u64, len: usize, size: u64) -> Result<usize, Errno> {
    let end = offset.checked_add(len as u64).ok_or(Errno::EINVAL)?;
    if offset >= size || end > size {
        return Err(Errno::EINVAL);
    }
    usize::try_from(offset).map_err(|_| Errno::EINVAL)
}
