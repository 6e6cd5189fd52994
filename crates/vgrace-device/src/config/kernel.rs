//! What changed between kernels and what the "firmware" can add: the Linux version whose driver
//! to follow, why a device may be served by the core alone, poisoned pages, and the CXL DVSEC
//! of Blackwell-Next parts.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::DeviceError;

/// How long upstream polls the readiness registers (POLL_TIMEOUT_MS), at probe and after a
/// reset.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Upstream's poll quantum (POLL_QUANTUM_MS).
pub const READY_POLL: Duration = Duration::from_secs(1);

/// The kernel whose nvgrace-gpu-vfio-pci to behave like, as QEMU's versioned machine types pin
/// a machine's behaviour. Each rule that changed says in which version it came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub enum LinuxVersion {
    /// 6.9: the first driver (resmem/usemem split for every device, no DVSEC, no readiness).
    #[serde(rename = "6.9")]
    V6_9,
    /// 6.14: the DVSEC (Blackwell: no resmem, the real BAR1 at region 2) and the readiness poll
    /// at probe.
    #[serde(rename = "6.14")]
    V6_14,
    /// 6.19: the first memory access after a reset checks memory decode and readiness.
    #[serde(rename = "6.19")]
    V6_19,
    /// 7.2: the newest (CXL readiness for Blackwell-Next is not modelled yet).
    #[default]
    #[serde(rename = "7.2")]
    V7_2,
}

impl LinuxVersion {
    /// Every version we model, oldest first.
    pub const ALL: [LinuxVersion; 4] = [Self::V6_9, Self::V6_14, Self::V6_19, Self::V7_2];
}

impl FromStr for LinuxVersion {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.to_string() == s.trim())
            .ok_or_else(|| DeviceError::BadName {
                what: "Linux version",
                value: s.to_string(),
                expected: "6.9, 6.14, 6.19 or 7.2",
            })
    }
}

impl fmt::Display for LinuxVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V6_9 => "6.9",
            Self::V6_14 => "6.14",
            Self::V6_19 => "6.19",
            Self::V7_2 => "7.2",
        })
    }
}

/// The CXL Device DVSEC of a Blackwell-Next part (read for readiness by Linux 7.2): its Range 1
/// Size Low register says "memory info valid" after `valid_delay` and "memory active" after
/// `active_delay` (both counted from start or reset), and carries the active timeout code.
/// The default (`Cxl::default()`) is valid and active at once, timeout code 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct Cxl {
    /// Time until bit 0 (memory info valid) is set.
    pub valid_delay: Duration,
    /// Time until bit 1 (memory active) is set.
    pub active_delay: Duration,
    /// Memory_Active_Timeout, bits 15:13: the driver waits 1 s x 4^code for "active" (capped at
    /// 256 s).
    pub timeout_code: u8,
}

impl Cxl {
    /// How long the driver waits for "memory active" after "valid".
    pub fn active_timeout(&self) -> Duration {
        let secs = 4u64.saturating_pow(u32::from(self.timeout_code)).min(256);
        Duration::from_secs(secs)
    }
}

/// A poisoned page of device memory (an uncorrectable ECC error), named by the memory region and
/// an offset in it; the whole 4 KiB page around the offset is poisoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Poison {
    /// VFIO region index of the memory region (2 or 4).
    pub region: u32,
    /// Offset in the region of the poisoned page's first byte.
    pub offset: u64,
}

/// Page granularity of poison.
pub const POISON_PAGE: u64 = 4096;

impl FromStr for Poison {
    type Err = DeviceError;
    /// `REGION:OFFSET`, e.g. `4:0x1000` (the offset decimal or 0x hex).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DeviceError::BadPoison(s.to_string());
        let (region, offset) = s.split_once(':').ok_or_else(bad)?;
        let region = region.trim().parse().map_err(|_| bad())?;
        let offset = offset.trim();
        let offset = match offset.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => offset.parse(),
        }
        .map_err(|_| bad())?;
        Ok(Self::page(region, offset))
    }
}

impl Poison {
    /// The poisoned page holding `offset` of memory region `region`.
    pub fn page(region: u32, offset: u64) -> Self {
        Self {
            region,
            offset: offset / POISON_PAGE * POISON_PAGE,
        }
    }

    /// Whether an access of `len` bytes at `offset` of region `region` touches this page.
    pub fn touches(&self, region: u32, offset: u64, len: usize) -> bool {
        let end = offset.saturating_add(len as u64);
        self.region == region && self.offset < end && offset < self.offset + POISON_PAGE
    }
}

/// Why a device is served by the PCI core alone, without memory regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CoreOnly {
    /// `nvidia,gpu-mem-size` is 0: the C2C link is down (the property fetch fails with ENOMEM).
    LinkDown,
    /// The firmware has no memory properties.
    NoMemProperties,
}

impl fmt::Display for CoreOnly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CoreOnly::LinkDown => "the firmware says the C2C link is down (memory size 0)",
            CoreOnly::NoMemProperties => "the firmware has no nvidia,gpu-mem-* properties",
        })
    }
}
