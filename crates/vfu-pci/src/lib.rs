//! The generic PCI/VFIO core, our `vfio-pci-core`: [`core::PciCore`] answers every region and
//! IRQ index of a function built from a [`description::PciDescription`] (config space tables,
//! emulated BAR registers, a BAR0 register file, interrupts). The nvgrace variant
//! ([`crate::nvgrace`]) holds a core and overrides only what it must.

pub mod bar;
pub mod config_space;
pub mod core;
pub mod description;
pub mod intrs;
pub mod regfile;
pub mod variant;

pub use self::core::PciCore;
pub use self::description::{Capability, ExtCapability, Header, PciDescription};
pub use self::variant::{PciVariant, Variant};
