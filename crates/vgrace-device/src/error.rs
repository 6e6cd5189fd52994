//! The device crate's error type.

/// Why a device could not be described or created.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// `nvidia,gpu-mem-size` is 0: the firmware says the C2C link is down.
    #[error(
        "device memory size is 0: the C2C link is down (upstream refuses the device with ENOMEM)"
    )]
    LinkDown,
    /// base + size does not fit in 64 bits, or a BAR size would not.
    #[error("device memory at {base:#x} of {size:#x} bytes overflows the address space")]
    Overflow {
        /// Base.
        base: u64,
        /// Size.
        size: u64,
    },
    /// GH100 needs more than the 1 GiB carved out for resmem.
    #[error("device memory of {size} bytes is not larger than the 1 GiB reserved for resmem")]
    TooSmallForResmem {
        /// Size.
        size: u64,
    },
    /// usemem rounds down to zero.
    #[error("usemem rounds down to 0 (memory minus 1 GiB resmem is below one 512 MiB block): {size} bytes")]
    UsememZero {
        /// Size.
        size: u64,
    },
    /// A device id outside the upstream table.
    #[error("device id {0:#06x} is not an nvgrace device id (known: 0x2342, 0x2343, 0x2345, 0x2348, 0x2941, 0x31c2)")]
    UnknownDeviceId(u16),
    /// A size string that does not parse.
    #[error("`{0}` is not a size (use bytes or a binary suffix: 512M, 96G, 96GiB, 1T)")]
    BadSize(String),
    /// A profile/fault name that does not parse.
    #[error("unknown {what} `{value}` (expected {expected})")]
    BadName {
        /// What was parsed.
        what: &'static str,
        /// The text.
        value: String,
        /// The accepted names.
        expected: &'static str,
    },
    /// The backing file exists with another size.
    #[error("backing file {path} is {actual} bytes but the device needs {expected}")]
    BackingSizeMismatch {
        /// Path.
        path: String,
        /// Its size.
        actual: u64,
        /// The memory size.
        expected: u64,
    },
    /// A device description declares a BAR the core cannot emulate.
    #[error("BAR at region {index} of {size:#x} bytes cannot be emulated (64-bit BARs sit at region 0, 2 or 4, once each, with a power-of-two size)")]
    BadBar {
        /// The VFIO region index it was declared at.
        index: u32,
        /// The declared size in bytes.
        size: u64,
    },
    /// Another process (or another device of this one) holds the backing file's lock.
    #[error("backing file {0} is in use by another vgrace server (it holds the file's lock)")]
    BackingInUse(String),
    /// Creating, sizing or mapping the backing memory failed.
    #[error("cannot set up {what}")]
    Backing {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
