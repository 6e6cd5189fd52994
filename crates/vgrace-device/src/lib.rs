//! The Grace GPU device model served by vgrace.
//!
//! Mirrors the kernel's split: the generic PCI/VFIO core is the `vfu-pci` crate (a
//! [`vfu_pci::PciCore`] serves a whole function from a description: config space, emulated BAR
//! registers, a BAR0 register file, IRQs, reset); [`nvgrace`] is the variant, a
//! [`vfu::Variant`] of that core that answers only for its own regions: device memory as
//! power-of-two BARs with a sparse-mmap area and all-ones past the memory, Blackwell's BAR1,
//! plus the BAR0 readiness registers and the DVSECs. [`backing`] holds the memory itself
//! (memfd, hugetlbfs or a file). [`config`] computes the layout from the firmware values and the
//! profile.
#![forbid(unsafe_code)]

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
