//! The Grace GPU device model served by vgrace.
//!
//! Mirrors the kernel's split: [`pci`] is the generic PCI/VFIO core (config space tables,
//! emulated BAR registers, the BAR0 register file), [`nvgrace`] is the variant that turns device
//! memory into power-of-two BARs with a sparse-mmap area and all-ones past the memory, and
//! [`backing`] holds the memory itself (memfd, hugetlbfs or a file) and the crate's only mmap.
//! [`config`] computes the layout from the firmware values and the profile.

pub mod backing;
pub mod config;
pub mod error;
pub mod nvgrace;
pub mod pci;

pub use config::{
    parse_size, Backing, Fault, GpuConfig, Layout, MemKind, MemRegionLayout, Profile,
};
pub use error::DeviceError;
pub use nvgrace::NvGraceGpu;
