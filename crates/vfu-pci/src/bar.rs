//! Emulated 64-bit memory BAR registers and the table of them a device declares.
//!
//! A [`BarDesc`] says what one BAR is (region index, size, register flags); the [`BarTable`]
//! built from those descriptors is both what config space shows in 0x10-0x27 and what the core
//! reports in REGION_INFO, so the two cannot disagree.

use vfu::device::ROM_REGION_INDEX;

use crate::error::PciError;

/// BAR flag: 64-bit memory BAR.
pub(crate) const BAR_MEM_64: u64 = 0x4;
/// BAR flag: prefetchable.
pub(crate) const BAR_PREFETCH: u64 = 0x8;

/// 64-bit BAR pairs in a type 0 header: BAR0/1, BAR2/3, BAR4/5.
const PAIRS: usize = 3;

/// One BAR a device exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarDesc {
    /// VFIO region index of the BAR's low register (0, 2 or 4; the next index is its upper
    /// half and reads as an absent region).
    pub index: u32,
    /// Size in bytes, a power of two: the sizing probe and REGION_INFO both report it.
    pub size: u64,
    /// Low flag bits of the register (64-bit 0x4, prefetchable 0x8).
    pub flags: u64,
}

impl BarDesc {
    /// A 64-bit memory BAR at region `index` of `size` bytes, prefetchable or not.
    pub fn mem64(index: u32, size: u64, prefetchable: bool) -> Self {
        let prefetch = if prefetchable { BAR_PREFETCH } else { 0 };
        Self {
            index,
            size,
            flags: BAR_MEM_64 | prefetch,
        }
    }
}

/// One 64-bit BAR register pair as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmulatedBar {
    /// What the guest last wrote (both halves), initially 0.
    pub value: u64,
    /// BAR size, a power of two.
    pub size: u64,
    /// Low flag bits reported (64-bit, prefetchable).
    pub flags: u64,
}

impl EmulatedBar {
    /// A BAR of `size` (power of two) with `flags`.
    pub fn new(size: u64, flags: u64) -> Self {
        Self {
            value: 0,
            size,
            flags,
        }
    }

    /// The 8 bytes a read returns: the written value masked to the size, plus the flags. Writing
    /// all ones and reading back thus yields the size mask (the sizing probe).
    pub fn read_bytes(&self) -> [u8; 8] {
        ((self.value & !(self.size.wrapping_sub(1))) | self.flags).to_le_bytes()
    }

    /// Stores byte `i` (0..8) of the register pair.
    pub fn write_byte(&mut self, i: usize, byte: u8) {
        let mut b = self.value.to_le_bytes();
        if let Some(slot) = b.get_mut(i) {
            *slot = byte;
        }
        self.value = u64::from_le_bytes(b);
    }
}

/// The emulated BAR registers of a device, indexed by VFIO region index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BarTable {
    pairs: [Option<EmulatedBar>; PAIRS],
}

impl BarTable {
    /// A table holding `descs`. Refuses an odd or out-of-range index, a size that is not a
    /// power of two, and two descriptors for the same BAR.
    pub fn new(descs: &[BarDesc]) -> Result<Self, PciError> {
        let mut pairs = [None; PAIRS];
        for d in descs {
            let bad = || PciError::BadBar {
                index: d.index,
                size: d.size,
            };
            if !d.index.is_multiple_of(2) || !d.size.is_power_of_two() {
                return Err(bad());
            }
            let slot = pairs.get_mut(d.index as usize / 2).ok_or_else(bad)?;
            if slot.is_some() {
                return Err(bad());
            }
            *slot = Some(EmulatedBar::new(d.size, d.flags));
        }
        Ok(Self { pairs })
    }

    /// The BAR at region `index`; `None` for an absent BAR, an upper half or a non-BAR index.
    pub fn get(&self, index: u32) -> Option<&EmulatedBar> {
        if !index.is_multiple_of(2) || index >= ROM_REGION_INDEX {
            return None;
        }
        self.pairs.get(index as usize / 2)?.as_ref()
    }

    /// Byte `i` of the BAR registers (0 is the first byte of BAR0 at config offset 0x10);
    /// absent BARs read 0.
    pub fn read_byte(&self, i: usize) -> u8 {
        match self.pairs.get(i / 8) {
            Some(Some(bar)) => bar.read_bytes()[i % 8],
            _ => 0,
        }
    }

    /// Stores byte `i` of the BAR registers; writes to absent BARs are dropped.
    pub fn write_byte(&mut self, i: usize, byte: u8) {
        if let Some(Some(bar)) = self.pairs.get_mut(i / 8) {
            bar.write_byte(i % 8, byte);
        }
    }

    /// The BAR at region `index` back to 0 (a variant's emulated BAR at VFIO_DEVICE_RESET);
    /// nothing for an absent BAR.
    pub fn clear(&mut self, index: u32) {
        if let Some(Some(bar)) = (index.is_multiple_of(2) && index < ROM_REGION_INDEX)
            .then(|| self.pairs.get_mut(index as usize / 2))
            .flatten()
        {
            bar.value = 0;
        }
    }

    /// Every BAR back to 0 (what rebuilding config space at open does).
    pub fn reset(&mut self) {
        for bar in self.pairs.iter_mut().flatten() {
            bar.value = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sizing_probe_returns_size_mask_with_flags() {
        let mut bar = EmulatedBar::new(128 << 30, BAR_MEM_64 | BAR_PREFETCH);
        for i in 0..8 {
            bar.write_byte(i, 0xff);
        }
        assert_eq!(
            u64::from_le_bytes(bar.read_bytes()),
            !((128u64 << 30) - 1) | 0xc
        );
    }

    #[test]
    fn fresh_bar_reads_only_flags() {
        assert_eq!(
            u64::from_le_bytes(EmulatedBar::new(1 << 30, 0xc).read_bytes()),
            0xc
        );
    }

    #[test]
    fn table_refuses_odd_duplicate_out_of_range_and_odd_sized_bars() {
        for bad in [
            vec![BarDesc::mem64(1, 4096, false)],
            vec![BarDesc::mem64(6, 4096, false)],
            vec![BarDesc::mem64(2, 4095, false)],
            vec![
                BarDesc::mem64(2, 4096, false),
                BarDesc::mem64(2, 8192, true),
            ],
        ] {
            assert!(matches!(BarTable::new(&bad), Err(PciError::BadBar { .. })));
        }
    }

    #[test]
    fn table_routes_bytes_by_pair_and_reads_absent_as_zero() {
        let mut t = BarTable::new(&[BarDesc::mem64(4, 1 << 20, true)]).unwrap();
        assert!(t.get(4).is_some() && t.get(0).is_none() && t.get(5).is_none());
        t.write_byte(8, 0xff);
        assert_eq!(t.read_byte(8), 0);
        assert_eq!(t.read_byte(16), 0xc);
        for i in 16..24 {
            t.write_byte(i, 0xff);
        }
        assert_eq!(t.read_byte(18), 0xf0);
        t.reset();
        assert_eq!(t.read_byte(18), 0);
    }
}
