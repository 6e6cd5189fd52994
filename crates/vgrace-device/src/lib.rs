//! The Grace GPU device model served by vgrace.
//!
//! Mirrors the kernel's split: [`pci`] is the generic PCI/VFIO core, a [`PciCore`] that serves a
//! whole function (config space, emulated BAR registers, a BAR0 register file, IRQs, reset) from
//! a description; [`nvgrace`] is the variant that holds a core and answers only for its own
//! regions: device memory as power-of-two BARs with a sparse-mmap area and all-ones past the
//! memory, plus the BAR0 readiness registers and the gb200 DVSEC. [`backing`] holds the memory
//! itself (memfd, hugetlbfs or a file) and the crate's only mmap. [`config`] computes the layout
//! from the firmware values and the profile.

pub mod backing;
pub mod config;
pub mod error;
pub mod nvgrace;

pub use config::{
    parse_size, Backing, CoreOnly, Cxl, Fault, GpuConfig, Layout, LinuxVersion, MemKind,
    MemRegionLayout, Poison, Profile,
};
pub use error::DeviceError;
pub use nvgrace::NvGraceGpu;
