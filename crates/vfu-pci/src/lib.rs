//! `vfu_pci`: a generic PCI/VFIO core for devices served with [`vfu`], our `vfio-pci-core`.
//!
//! [`PciCore`] answers every region and IRQ index of a function built from a
//! [`PciDescription`]: config space tables (guest-writable bits as `vfio_pci_config.c`'s
//! permission tables), emulated BAR registers with the sizing probe, BAR0 as a register file on a
//! [`SealedMemfd`] the client may map, INTx/MSI/MSI-X/error/request interrupts, and the
//! open/close/function-reset lifecycle. A device on it implements [`vfu::Variant`] with
//! `Core = PciCore`: the regions it owns and a few hooks; vfu's blanket implementation of
//! [`vfu::Device`] range-checks the owned regions and forwards everything else to the core.
//!
//! `examples/doorbell.rs` is a whole device on `vfu` and this crate alone (a register file with
//! a doorbell that raises INTx, and a memory BAR) in about 90 lines; `tests/example_doorbell.rs`
//! serves it to the vfu client. vgrace's Grace GPU (`vgrace_device::NvGraceGpu`) is the other.

#![forbid(unsafe_code)]

mod bar;
mod config_space;
mod core;
mod description;
mod error;
mod intrs;
mod memfd;
mod regfile;

pub use self::bar::BarDesc;
pub use self::config_space::EXT_CAP_DVSEC;
pub use self::core::{PciCore, COMMAND_MEMORY};
pub use self::description::{Capability, ExtCapability, Header, PciDescription};
pub use self::error::{MemfdError, OutOfRange, PciError};
pub use self::memfd::SealedMemfd;
