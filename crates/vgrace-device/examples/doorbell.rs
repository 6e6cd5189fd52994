//! A second device on vfu and the PCI core, in well under 100 lines: a 4 KiB register file at
//! BAR0 whose doorbell register (offset 0) raises INTx, and 64 KiB of memory at BAR2.
//!
//! `cargo run -p vgrace-device --example doorbell -- /tmp/doorbell.sock` serves it until
//! Ctrl-C; any vfio-user client (QEMU's `vfio-user-pci`, `vgrace`'s client) can attach.

use vfu::device::INTX_IRQ_INDEX;
use vfu::server::{bind_socket, Server, ServerConfig, Shutdown};
use vfu::{Device, DeviceInfo, Errno, IrqInfo, RegionInfo, SetIrqs};
use vgrace_device::pci::bar::BarDesc;
use vgrace_device::pci::{Header, PciCore, PciDescription};

/// Writing any value here raises INTx.
pub const DOORBELL: u64 = 0;
/// BAR2 memory size.
pub const RAM: usize = 64 << 10;

/// The device: the core serves everything but BAR2, which is ours.
pub struct Doorbell {
    core: PciCore,
    ram: Vec<u8>,
}

/// A fresh device (vendor 0x1b36, a QEMU test id; class "other system peripheral").
pub fn doorbell() -> Result<Doorbell, vgrace_device::DeviceError> {
    let desc = PciDescription {
        header: Header {
            vendor_id: 0x1b36,
            device_id: 0x0005,
            class_code: 0x08_8000,
            interrupt_pin: 1,
            ..Header::default()
        },
        bars: vec![
            BarDesc::mem64(0, 4096, false),
            BarDesc::mem64(2, RAM as u64, true),
        ],
        ..PciDescription::default()
    };
    let mut core = PciCore::new(&desc)?;
    // The doorbell must reach us: its page is not offered for mapping.
    core.trap_bar0(DOORBELL..DOORBELL + 4);
    Ok(Doorbell {
        core,
        ram: vec![0; RAM],
    })
}

impl Doorbell {
    /// The part of BAR2 an access touches; EINVAL at or past its end, clipped before it.
    fn window(&mut self, offset: u64, len: usize) -> Result<&mut [u8], Errno> {
        let at = usize::try_from(offset)
            .ok()
            .filter(|o| *o < RAM)
            .ok_or(Errno::EINVAL)?;
        Ok(&mut self.ram[at..(at + len).min(RAM)])
    }
}

impl Device for Doorbell {
    fn device_info(&self) -> DeviceInfo {
        self.core.device_info()
    }
    fn region_info(&self, index: u32) -> Result<RegionInfo<'_>, Errno> {
        self.core.region_info(index) // BAR2 too: its size and READ|WRITE come from the core
    }
    fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        if index != 2 {
            return self.core.region_read(index, offset, buf);
        }
        let w = self.window(offset, buf.len())?;
        buf[..w.len()].copy_from_slice(w);
        Ok(w.len())
    }
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        if index == 2 {
            let w = self.window(offset, data.len())?;
            let n = w.len();
            w.copy_from_slice(&data[..n]);
            return Ok(n);
        }
        let n = self.core.region_write(index, offset, data)?;
        if index == 0 && offset == DOORBELL {
            self.core.trigger(INTX_IRQ_INDEX, 0)?;
        }
        Ok(n)
    }
    fn irq_info(&self, index: u32) -> Result<IrqInfo, Errno> {
        self.core.irq_info(index)
    }
    fn set_irqs(&mut self, req: SetIrqs) -> Result<(), Errno> {
        self.core.set_irqs(req)
    }
    fn reset(&mut self) -> Result<(), Errno> {
        self.core.reset()
    }
    fn request_release(&mut self) -> bool {
        self.core.request_release()
    }
    fn client_attached(&mut self) {
        self.core.client_attached()
    }
    fn client_detached(&mut self) {
        self.core.client_detached()
    }
}

#[allow(dead_code)] // the test includes this file for `doorbell()` only
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "doorbell.sock".into());
    let (listener, _ours) = bind_socket(path.as_ref())?;
    let mut server = Server::new(doorbell()?, ServerConfig::default());
    Ok(server.serve(listener, &Shutdown::new()?)?)
}
