//! What the "firmware" tells us (memory base and size), the profile, and the memory layout
//! computed from them: which region holds which part of memory and how big each BAR is.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::DeviceError;

mod kernel;

pub use kernel::{CoreOnly, Cxl, LinuxVersion, Poison, POISON_PAGE, READY_POLL, READY_TIMEOUT};

/// resmem carved out on GH100-class devices (upstream RESMEM_SIZE).
pub const RESMEM_SIZE: u64 = 1 << 30;
/// usemem granularity shared with the guest driver (upstream MEMBLK_SIZE).
pub const MEMBLK_SIZE: u64 = 512 << 20;
/// Device ids the upstream driver binds to (plus 0x2343 from the seed patch).
pub const KNOWN_DEVICE_IDS: [u16; 6] = [0x2342, 0x2343, 0x2345, 0x2348, 0x2941, 0x31c2];
/// Default size of Blackwell's real BAR1 (the GPUDirect RDMA aperture). We found no public
/// source giving the GB200/GB300 value, so this is our choice: 128 GiB, the BAR1 of the Hopper
/// H100 generation. `--bar1-size` sets it.
pub const DEFAULT_BAR1_SIZE: u64 = 128 << 30;
/// Which generation's memory split to model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Grace Hopper: resmem (1 GiB + rounding remainder) at BAR2, usemem at BAR4.
    Gh100,
    /// Grace Blackwell: all memory at BAR4, vendor DVSEC says resmem may be cached.
    Gb200,
    /// The original patch: all memory at BAR2.
    Seed,
}

impl Profile {
    /// The profile's default PCI device id.
    pub fn default_device_id(self) -> u16 {
        match self {
            Profile::Gh100 | Profile::Seed => 0x2342,
            Profile::Gb200 => 0x2941,
        }
    }

    /// The device ids of this generation in the upstream table (GH200: 120GB, 480GB, SKU;
    /// GB200 and GB300, which follow the same rules); the seed patch also listed 0x2343.
    pub fn device_ids(self) -> &'static [u16] {
        match self {
            Profile::Gh100 => &[0x2342, 0x2345, 0x2348],
            Profile::Gb200 => &[0x2941, 0x31c2],
            Profile::Seed => &[0x2342, 0x2343],
        }
    }
}

impl FromStr for Profile {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "gh100" => Ok(Profile::Gh100),
            "gb200" => Ok(Profile::Gb200),
            "seed" => Ok(Profile::Seed),
            _ => Err(DeviceError::BadName {
                what: "profile",
                value: s.to_string(),
                expected: "gh100, gb200 or seed",
            }),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Profile::Gh100 => "gh100",
            Profile::Gb200 => "gb200",
            Profile::Seed => "seed",
        })
    }
}

/// Injected readiness faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// HBM training never completes (0x200BC never reads 0xFF).
    NeverReady,
    /// The C2C link never comes up (0x1498 never reads 0xFF).
    LinkDown,
    /// The CXL DVSEC never says "memory info valid".
    CxlNeverValid,
    /// The CXL DVSEC never says "memory active".
    CxlNeverActive,
}

impl FromStr for Fault {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "never-ready" => Ok(Fault::NeverReady),
            "link-down" => Ok(Fault::LinkDown),
            "cxl-never-valid" => Ok(Fault::CxlNeverValid),
            "cxl-never-active" => Ok(Fault::CxlNeverActive),
            _ => Err(DeviceError::BadName {
                what: "fault",
                value: s.to_string(),
                expected: "never-ready, link-down, cxl-never-valid or cxl-never-active",
            }),
        }
    }
}

/// Where device memory lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// A sparse memfd (default): nothing is allocated until touched, gone at exit.
    Memfd,
    /// A memfd on huge pages (MFD_HUGETLB); needs reserved huge pages.
    Hugetlbfs,
    /// A file: contents persist across restarts.
    File(PathBuf),
}

/// Everything that defines a device.
#[derive(Debug, Clone)]
pub struct GpuConfig {
    /// Which generation's memory split (and DVSEC) to model.
    pub profile: Profile,
    /// PCI device id; `None` takes the profile's.
    pub device_id: Option<u16>,
    /// Device memory size in bytes, as the firmware's `nvidia,gpu-mem-size` gives it.
    pub mem_size: u64,
    /// Host physical base of device memory (`nvidia,gpu-mem-base-pa`): checked for overflow
    /// and reported in the layout, never dereferenced.
    pub mem_base: u64,
    /// Where device memory lives.
    pub backing: Backing,
    /// Time until the readiness registers read ready.
    pub ready_delay: Duration,
    /// A readiness register to hold at 0 forever, if any.
    pub fault: Option<Fault>,
    /// The kernel whose driver to behave like.
    pub linux: LinuxVersion,
    /// False when the firmware has no `nvidia,gpu-mem-*` properties at all: like a size of 0,
    /// the device is then served by the core alone.
    pub mem_properties: bool,
    /// Size of Blackwell's real BAR1 (a power of two).
    pub bar1_size: u64,
    /// Time until the readiness registers read ready again after a reset.
    pub reset_ready_delay: Duration,
    /// How long readiness is polled (at probe, and after a reset from 6.19 on) before ETIME.
    pub ready_timeout: Duration,
    /// Poisoned pages (6.19+): reads that touch them fail as upstream's do.
    pub poison: Vec<Poison>,
    /// A CXL Device DVSEC (Blackwell-Next; gb200 only), read for readiness from 7.2.
    pub cxl: Option<Cxl>,
}

/// What a memory region holds: cacheable usemem, or the write-combine resmem carve-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemKind {
    /// Cacheable device memory.
    Usemem,
    /// The write-combine carve-out (GH100 MIG bug workaround).
    Resmem,
}

impl fmt::Display for MemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemKind::Usemem => "usemem",
            MemKind::Resmem => "resmem",
        })
    }
}

/// One memory region as the VMM sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemRegionLayout {
    /// VFIO region index (2 or 4).
    pub region_index: u32,
    /// The BAR (its low register; the next BAR holds the upper half).
    pub bar: u8,
    /// Whether the region is usemem or resmem.
    pub kind: MemKind,
    /// Real memory in the region.
    pub memlength: u64,
    /// BAR size: memlength rounded up to a power of two.
    pub bar_size: u64,
    /// Where the region starts in the backing fd.
    pub fd_offset: u64,
    /// Mapped cacheable (usemem) or write-combine (resmem).
    pub cacheable: bool,
    /// Host physical address of the region's memory.
    pub base_pa: u64,
}

/// The whole device layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// The profile the layout was computed for.
    pub profile: Profile,
    /// PCI device id, the configured one or the profile's default.
    pub device_id: u16,
    /// Device memory size in bytes, over all regions.
    pub mem_size: u64,
    /// Host physical base of device memory.
    pub mem_base: u64,
    /// Memory regions by ascending region index.
    pub regions: Vec<MemRegionLayout>,
    /// The kernel whose driver the layout follows.
    pub linux: LinuxVersion,
    /// Set when the device is served by the core alone (no memory regions), and why.
    pub core_only: Option<CoreOnly>,
    /// Size of the real BAR1 at region 2, when the device shows it (Blackwell, when region 2 is
    /// not taken by resmem).
    pub bar1_size: Option<u64>,
    /// Poisoned pages, page-aligned, each inside its region's memory.
    pub poisoned: Vec<Poison>,
    /// The CXL Device DVSEC, when the part has one.
    pub cxl: Option<Cxl>,
}

impl Layout {
    /// The memory region with VFIO index `index`, if any.
    pub fn region(&self, index: u32) -> Option<&MemRegionLayout> {
        self.regions.iter().find(|r| r.region_index == index)
    }
}

/// Device memory size when none is given: a GH100's 96 GiB.
pub const DEFAULT_MEM_SIZE: u64 = 96 << 30;
/// Host physical base of device memory when none is given.
pub const DEFAULT_MEM_BASE: u64 = 0x4000_0000_0000;

impl Default for GpuConfig {
    /// The one set of defaults (of `vgrace`'s device flags and of a `[[device]]` table): a GH100
    /// with [`DEFAULT_MEM_SIZE`] of sparse memfd memory at [`DEFAULT_MEM_BASE`], behaving as the
    /// newest Linux, ready at once, without faults.
    fn default() -> Self {
        Self {
            profile: Profile::Gh100,
            device_id: None,
            mem_size: DEFAULT_MEM_SIZE,
            mem_base: DEFAULT_MEM_BASE,
            backing: Backing::Memfd,
            ready_delay: Duration::ZERO,
            fault: None,
            linux: LinuxVersion::default(),
            mem_properties: true,
            bar1_size: DEFAULT_BAR1_SIZE,
            reset_ready_delay: Duration::ZERO,
            ready_timeout: READY_TIMEOUT,
            poison: Vec::new(),
            cxl: None,
        }
    }
}

impl GpuConfig {
    /// A device of `mem_size` bytes at host PA 0 on sparse memfd memory, ready at once and
    /// without faults: the usual starting point for tools and tests.
    pub fn memfd(profile: Profile, mem_size: u64) -> Self {
        Self {
            profile,
            mem_size,
            mem_base: 0,
            ..Self::default()
        }
    }

    /// Whether the driver would carve resmem out: on Hopper always; on Blackwell only before
    /// 6.14, which never read the DVSEC that says the MIG bug is fixed.
    pub fn has_mig_hw_bug(&self) -> bool {
        match self.profile {
            Profile::Gh100 => true,
            Profile::Gb200 => self.linux < LinuxVersion::V6_14,
            Profile::Seed => false,
        }
    }

    /// The poisoned pages, each checked to lie in the memory of a region of `regions` (ECC
    /// poison handling arrived in 6.19).
    fn checked_poison(&self, regions: &[MemRegionLayout]) -> Result<Vec<Poison>, DeviceError> {
        if !self.poison.is_empty() && self.linux < LinuxVersion::V6_19 {
            return Err(DeviceError::PoisonBeforeLinux619(self.linux.to_string()));
        }
        for p in &self.poison {
            let inside = regions
                .iter()
                .any(|r| r.region_index == p.region && p.offset < r.memlength);
            if !inside {
                return Err(DeviceError::PoisonOutsideMemory {
                    region: p.region,
                    offset: p.offset,
                });
            }
        }
        let mut pages = self.poison.clone();
        pages.sort_by_key(|p| (p.region, p.offset));
        pages.dedup();
        Ok(pages)
    }

    /// Validates the firmware values and computes the layout (no memory is touched).
    pub fn layout(&self) -> Result<Layout, DeviceError> {
        let size = self.mem_size;
        let base = self.mem_base;
        let device_id = self.checked_device_id()?;
        if self.cxl.is_some_and(|c| c.timeout_code > 7) {
            return Err(DeviceError::BadCxlTimeoutCode);
        }
        if self.cxl.is_some() && self.profile != Profile::Gb200 {
            return Err(DeviceError::CxlNeedsGb200);
        }
        let bar1 = self.checked_bar1()?;
        let core_only = if !self.mem_properties {
            Some(CoreOnly::NoMemProperties)
        } else if size == 0 {
            Some(CoreOnly::LinkDown)
        } else {
            None
        };
        if let Some(reason) = core_only {
            return Ok(Layout {
                profile: self.profile,
                device_id,
                mem_size: 0,
                mem_base: base,
                regions: Vec::new(),
                linux: self.linux,
                core_only: Some(reason),
                bar1_size: bar1,
                poisoned: self.checked_poison(&[])?,
                cxl: self.cxl,
            });
        }
        base.checked_add(size)
            .ok_or(DeviceError::Overflow { base, size })?;
        let split = self.has_mig_hw_bug();
        let regions = self.mem_regions(split)?;
        Ok(Layout {
            profile: self.profile,
            device_id,
            mem_size: size,
            mem_base: base,
            linux: self.linux,
            core_only: None,
            // With resmem at region 2, the variant hides BAR1 there.
            bar1_size: bar1.filter(|_| !split),
            poisoned: self.checked_poison(&regions)?,
            cxl: self.cxl,
            regions,
        })
    }

    /// The device id asked for (or the profile's), refused unless the profile takes it.
    fn checked_device_id(&self) -> Result<u16, DeviceError> {
        let device_id = self.device_id.unwrap_or(self.profile.default_device_id());
        if self.profile.device_ids().contains(&device_id) {
            return Ok(device_id);
        }
        // The error lists only the ids this profile takes: the others would be refused too.
        let profile = self.profile.to_string();
        let ids = self
            .profile
            .device_ids()
            .iter()
            .map(|i| format!("{i:#06x}"))
            .collect::<Vec<_>>()
            .join(", ");
        Err(if KNOWN_DEVICE_IDS.contains(&device_id) {
            DeviceError::DeviceIdNotOfProfile {
                id: device_id,
                profile,
                ids,
            }
        } else {
            DeviceError::UnknownDeviceId {
                id: device_id,
                profile,
                ids,
            }
        })
    }

    /// Blackwell's BAR1 size (none on other profiles): a power of two of at least 4 KiB.
    fn checked_bar1(&self) -> Result<Option<u64>, DeviceError> {
        (self.profile == Profile::Gb200)
            .then_some(self.bar1_size)
            .map(|s| {
                if s.is_power_of_two() && s >= 4096 {
                    Ok(s)
                } else {
                    Err(DeviceError::BadBar1Size(s))
                }
            })
            .transpose()
    }

    /// The memory regions: usemem alone, or resmem at region 2 and usemem at 4 when `split`
    /// (the MIG hardware bug).
    fn mem_regions(&self, split: bool) -> Result<Vec<MemRegionLayout>, DeviceError> {
        let (size, base) = (self.mem_size, self.mem_base);
        let region = |index: u32,
                      kind: MemKind,
                      memlength: u64,
                      fd_offset: u64|
         -> Result<MemRegionLayout, DeviceError> {
            let bar_size = memlength
                .checked_next_power_of_two()
                .ok_or(DeviceError::Overflow { base, size })?;
            Ok(MemRegionLayout {
                region_index: index,
                bar: index as u8,
                kind,
                memlength,
                bar_size,
                fd_offset,
                cacheable: kind == MemKind::Usemem,
                base_pa: base + fd_offset,
            })
        };
        Ok(match (self.profile, split) {
            (Profile::Seed, _) => vec![region(2, MemKind::Usemem, size, 0)?],
            (_, true) => {
                let rest = size
                    .checked_sub(RESMEM_SIZE)
                    .ok_or(DeviceError::TooSmallForResmem { size })?;
                let usemem = rest / MEMBLK_SIZE * MEMBLK_SIZE;
                if usemem == 0 {
                    return Err(DeviceError::UsememZero { size });
                }
                vec![
                    region(2, MemKind::Resmem, size - usemem, usemem)?,
                    region(4, MemKind::Usemem, usemem, 0)?,
                ]
            }
            (_, false) => vec![region(4, MemKind::Usemem, size, 0)?],
        })
    }
}

/// Parses a size: a byte count (`3543348019`) or a number with a binary suffix, case-insensitive:
/// `K`, `M`, `G`, `T` or `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024: `96G` = `96GiB` = 96 x 2^30).
/// The decimal-looking `KB`, `MB`, `GB`, `TB` are refused rather than guessed.
pub fn parse_size(s: &str) -> Result<u64, DeviceError> {
    let bad = || DeviceError::BadSize(s.to_string());
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let num: u64 = digits.replace('_', "").parse().map_err(|_| bad())?;
    let suffix = suffix.trim();
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        "kb" | "mb" | "gb" | "tb" => {
            return Err(DeviceError::DecimalSizeSuffix {
                value: s.to_string(),
                binary: format!("{}{}", digits, &suffix[..1].to_ascii_uppercase()),
                binary_long: format!("{}{}iB", digits, &suffix[..1].to_ascii_uppercase()),
            })
        }
        _ => return Err(bad()),
    };
    num.checked_mul(1u64 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn cfg(profile: Profile, mem_size: u64) -> GpuConfig {
        GpuConfig {
            mem_base: 0x4000_0000_0000,
            ..GpuConfig::memfd(profile, mem_size)
        }
    }

    #[test]
    fn gh100_96g_splits_into_95g_usemem_and_1g_resmem() {
        let l = cfg(Profile::Gh100, 96 << 30).layout().unwrap();
        let use4 = l.region(4).unwrap();
        let res2 = l.region(2).unwrap();
        assert_eq!((use4.memlength, use4.bar_size), (95 << 30, 128 << 30));
        assert_eq!(
            (res2.memlength, res2.bar_size, res2.fd_offset),
            (1 << 30, 1 << 30, 95 << 30)
        );
    }

    #[test]
    fn gh100_non_power_of_two_rounds_usemem_down_to_512m() {
        let l = cfg(Profile::Gh100, 3_543_348_019).layout().unwrap();
        assert_eq!(l.region(4).unwrap().memlength, 2 << 30);
        assert_eq!(l.region(2).unwrap().memlength, 3_543_348_019 - (2 << 30));
        assert_eq!(l.region(2).unwrap().bar_size, 2 << 30);
    }

    #[test]
    fn usemem_zero_after_rounding_is_refused() {
        let err = cfg(Profile::Gh100, (1 << 30) + (256 << 20))
            .layout()
            .unwrap_err();
        assert!(matches!(err, DeviceError::UsememZero { .. }));
    }

    #[test]
    fn gh100_smaller_than_resmem_is_refused() {
        assert!(matches!(
            cfg(Profile::Gh100, 512 << 20).layout().unwrap_err(),
            DeviceError::TooSmallForResmem { .. }
        ));
    }

    #[test]
    fn size_zero_is_a_core_device_for_link_down() {
        let l = cfg(Profile::Gb200, 0).layout().unwrap();
        assert_eq!(l.core_only, Some(CoreOnly::LinkDown));
        assert!(l.regions.is_empty());
        assert!(l.bar1_size.is_some());
    }

    #[test]
    fn base_plus_size_overflow_is_refused() {
        let mut c = cfg(Profile::Gb200, 1 << 30);
        c.mem_base = u64::MAX - 10;
        assert!(matches!(
            c.layout().unwrap_err(),
            DeviceError::Overflow { .. }
        ));
    }

    #[test]
    fn gb200_has_all_memory_at_bar4() {
        let l = cfg(Profile::Gb200, 3_543_348_019).layout().unwrap();
        assert_eq!(l.regions.len(), 1);
        assert_eq!(l.region(4).unwrap().memlength, 3_543_348_019);
        assert_eq!(l.region(4).unwrap().bar_size, 4 << 30);
    }

    #[test]
    fn seed_has_all_memory_at_bar2() {
        let l = cfg(Profile::Seed, 3 << 30).layout().unwrap();
        assert_eq!(l.regions.len(), 1);
        assert_eq!(l.region(2).unwrap().bar_size, 4 << 30);
    }

    #[test]
    fn power_of_two_memory_keeps_its_size_as_bar() {
        let l = cfg(Profile::Gb200, 4 << 30).layout().unwrap();
        assert_eq!(l.region(4).unwrap().bar_size, 4 << 30);
    }

    #[test]
    fn unknown_device_id_is_refused() {
        let mut c = cfg(Profile::Gh100, 96 << 30);
        c.device_id = Some(0x1234);
        assert!(matches!(
            c.layout().unwrap_err(),
            DeviceError::UnknownDeviceId { id: 0x1234, .. }
        ));
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("96G").unwrap(), 96 << 30);
        assert_eq!(parse_size("96GiB").unwrap(), 96 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("3543348019").unwrap(), 3_543_348_019);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn size_suffixes_are_binary_and_case_insensitive() {
        for (text, bytes) in [
            ("96g", 96u64 << 30),
            ("96gib", 96 << 30),
            ("96GIB", 96 << 30),
            ("4k", 4 << 10),
            ("4KiB", 4 << 10),
            ("2t", 2 << 40),
            ("2TiB", 2 << 40),
            ("3m", 3 << 20),
        ] {
            assert_eq!(parse_size(text).unwrap(), bytes, "{text}");
        }
    }

    #[test]
    fn decimal_looking_suffixes_are_refused_with_the_binary_spelling() {
        for text in ["96GB", "96gb", "4KB", "512mb", "1TB"] {
            let err = parse_size(text).unwrap_err();
            assert!(
                matches!(err, DeviceError::DecimalSizeSuffix { .. }),
                "{text}: {err}"
            );
        }
        let msg = parse_size("96GB").unwrap_err().to_string();
        assert!(msg.contains("write 96G or 96GiB"), "{msg}");
        assert!(msg.contains("byte count"), "{msg}");
        assert!(parse_size("4096B").is_err());
    }
}
