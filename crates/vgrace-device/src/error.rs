//! The device crate's error type.

/// Why a device could not be described or created.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// base + size does not fit in 64 bits, or a BAR size would not.
    #[error("device memory at {base:#x} of {size:#x} bytes overflows the address space")]
    Overflow {
        /// Host physical base of device memory (`nvidia,gpu-mem-base-pa`).
        base: u64,
        /// Device memory size in bytes (`nvidia,gpu-mem-size`).
        size: u64,
    },
    /// GH100 needs more than the 1 GiB carved out for resmem.
    #[error("device memory of {size} bytes is not larger than the 1 GiB reserved for resmem")]
    TooSmallForResmem {
        /// Device memory size in bytes (below 1 GiB).
        size: u64,
    },
    /// usemem rounds down to zero.
    #[error("usemem rounds down to 0 (memory minus 1 GiB resmem is below one 512 MiB block): {size} bytes")]
    UsememZero {
        /// Device memory size in bytes (less than 1.5 GiB).
        size: u64,
    },
    /// A device id of another generation than the profile.
    #[error("device id {id:#06x} is not a {profile} id (use one of {ids})")]
    DeviceIdNotOfProfile {
        /// The id asked for.
        id: u16,
        /// The profile.
        profile: String,
        /// The profile's ids, as a list for the message.
        ids: String,
    },
    /// BAR1 must be a power of two of at least a page.
    #[error("BAR1 size {0} is not a power of two of at least 4096 bytes")]
    BadBar1Size(u64),
    /// The readiness registers did not read ready in time (the probe's ETIME).
    #[error("the device did not become ready within {0:?} (C2C link or HBM training): upstream refuses to offer it (ETIME)")]
    NotReady(std::time::Duration),
    /// The CXL timeout code has 3 bits.
    #[error(
        "the CXL memory-active timeout code is 3 bits (0-7; 0 = 1 s, n = 4^n s, capped at 256 s)"
    )]
    BadCxlTimeoutCode,
    /// CXL readiness is a Blackwell-Next feature.
    #[error("a CXL Device DVSEC belongs to a Blackwell-Next part: use --profile gb200")]
    CxlNeedsGb200,
    /// `--poison` text that is not `REGION:OFFSET`.
    #[error("`{0}` is not a poisoned page (use REGION:OFFSET, e.g. 4:0x1000)")]
    BadPoison(String),
    /// Poison asked for a kernel that did not handle it.
    #[error("ECC poison handling arrived in Linux 6.19; --linux {0} has none")]
    PoisonBeforeLinux619(String),
    /// A poisoned page outside any memory region's memory.
    #[error(
        "poisoned page at region {region} offset {offset:#x} is not in a memory region's memory"
    )]
    PoisonOutsideMemory {
        /// Region index.
        region: u32,
        /// Offset.
        offset: u64,
    },
    /// A device id outside the upstream table.
    #[error("device id {id:#06x} is not an nvgrace device id ({profile} takes {ids})")]
    UnknownDeviceId {
        /// The id asked for.
        id: u16,
        /// The profile.
        profile: String,
        /// The profile's ids, as a list for the message.
        ids: String,
    },
    /// A size string that does not parse.
    #[error("`{0}` is not a size (use a byte count or a binary suffix: 512M, 96G, 96GiB, 1T)")]
    BadSize(String),
    /// A size with a decimal-looking suffix (`96GB`): refused rather than guessed.
    #[error(
        "`{value}` is ambiguous (GB, MB... may mean powers of 1000): write {binary} or \
         {binary_long} (binary, powers of 1024) or a byte count"
    )]
    DecimalSizeSuffix {
        /// The text given, as given.
        value: String,
        /// The same number with the short binary suffix (`96G`).
        binary: String,
        /// The same number with the long binary suffix (`96GiB`).
        binary_long: String,
    },
    /// A profile/fault name that does not parse.
    #[error("unknown {what} `{value}` (expected {expected})")]
    BadName {
        /// Which kind of name was parsed ("profile", "fault").
        what: &'static str,
        /// The text given, as given.
        value: String,
        /// The accepted names, for the message.
        expected: &'static str,
    },
    /// The backing file exists with another size.
    #[error("backing file {path} is {actual} bytes but the device needs {expected}")]
    BackingSizeMismatch {
        /// The backing file, as configured.
        path: String,
        /// Its current length in bytes.
        actual: u64,
        /// The device memory size it would need to have.
        expected: u64,
    },
    /// The PCI core could not be built from the device's description.
    #[error(transparent)]
    Pci(#[from] vfu_pci::PciError),
    /// Another process (or another device of this one) holds the backing file's lock.
    #[error("backing file {0} is in use by another vgrace server (it holds the file's lock)")]
    BackingInUse(String),
    /// Creating, sizing or mapping the backing memory failed.
    #[error("cannot set up {what}")]
    Backing {
        /// What was being set up (memfd creation, sizing, sealing, mapping...).
        what: String,
        /// The system call's error.
        #[source]
        source: std::io::Error,
    },
}
