//! The generic PCI/VFIO core: config space as tables, emulated BAR registers, the BAR0 register
//! file, interrupts. The nvgrace variant ([`crate::nvgrace`]) overrides only what it must.

pub mod bar;
pub mod config_space;
pub mod registers;
