//! The PCI core's error types.

/// Why a PCI function could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// A device description declares a BAR the core cannot emulate.
    #[error("BAR at region {index} of {size:#x} bytes cannot be emulated (64-bit BARs sit at region 0, 2 or 4, once each, with a power-of-two size)")]
    BadBar {
        /// The VFIO region index it was declared at.
        index: u32,
        /// The declared size in bytes.
        size: u64,
    },
    /// The memfd behind BAR0's register file could not be set up.
    #[error(transparent)]
    Memfd(#[from] MemfdError),
}

/// Creating, sizing, sealing or mapping a [`crate::memfd::SealedMemfd`] failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up {what}")]
pub struct MemfdError {
    /// What was being set up (the memfd, its size, its seals, the mapping).
    pub what: &'static str,
    /// The system call's error.
    #[source]
    pub source: std::io::Error,
}

/// An access outside a [`crate::memfd::SealedMemfd`] (a bug in the caller's clipping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("access of {len} bytes at {offset:#x} is outside the memory")]
pub struct OutOfRange {
    /// Offset of the access.
    pub offset: u64,
    /// Its length.
    pub len: usize,
}
