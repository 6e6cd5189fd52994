//! A second device on vfu and the PCI core, in well under 100 lines: a 4 KiB register file at
//! BAR0 whose doorbell register (offset 0) raises INTx, and 64 KiB of memory at BAR2.
//!
//! `cargo run -p vfu-pci --example doorbell -- /tmp/doorbell.sock` serves it until
//! Ctrl-C; any vfio-user client (QEMU's `vfio-user-pci`, `vgrace`'s client) can attach.

use vfu::device::INTX_IRQ_INDEX;
use vfu::server::{bind_socket, Server, ServerConfig, Shutdown};
use vfu::{Errno, Variant};
use vfu_pci::BarDesc;
use vfu_pci::{Header, PciCore, PciDescription, PciError};

/// Writing any value here raises INTx.
pub const DOORBELL: u64 = 0;
/// BAR2 memory size.
pub const RAM: usize = 64 << 10;

/// The device: the core and BAR2's memory.
pub struct Doorbell {
    core: PciCore,
    ram: Vec<u8>,
}

/// A fresh device (vendor 0x1b36, a QEMU test id; class "other system peripheral").
pub fn doorbell() -> Result<Doorbell, PciError> {
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

/// The core answers everything but BAR2 (and runs the lifecycle, the interrupts and the range
/// checks); the doorbell hooks the core's BAR0 writes.
impl Variant for Doorbell {
    type Core = PciCore;
    fn core(&self) -> &PciCore {
        &self.core
    }
    fn core_mut(&mut self) -> &mut PciCore {
        &mut self.core
    }
    fn owns(&self, index: u32) -> bool {
        index == 2
    }
    // vfu has checked the offset and clipped the access to the 64 KiB BAR.
    fn owned_read(&mut self, _: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let at = usize::try_from(offset).map_err(|_| Errno::EINVAL)?;
        buf.copy_from_slice(self.ram.get(at..at + buf.len()).ok_or(Errno::EINVAL)?);
        Ok(())
    }
    fn owned_write(&mut self, _: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let at = usize::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let window = self.ram.get_mut(at..at + data.len()).ok_or(Errno::EINVAL)?;
        window.copy_from_slice(data);
        Ok(())
    }
    fn after_core_write(&mut self, index: u32, offset: u64, _: usize) -> Result<(), Errno> {
        if index == 0 && offset == DOORBELL {
            self.core.trigger(INTX_IRQ_INDEX, 0)?;
        }
        Ok(())
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
