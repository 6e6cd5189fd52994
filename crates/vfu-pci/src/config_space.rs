//! PCI config space as tables: the bytes, and per byte which bits the guest may write. BAR
//! registers are virtualised through a [`BarTable`]; the ROM BAR reads 0. The tables are
//! usually filled from a description ([`super::description`]).

use super::bar::BarTable;

/// Config space size (PCI Express extended space).
pub(crate) const CONFIG_SIZE: usize = 4096;
/// First BAR register.
pub(crate) const BAR_BASE: usize = 0x10;
/// Expansion ROM BAR register.
pub(crate) const ROM_BAR: usize = 0x30;

/// Power management capability id.
pub(crate) const CAP_PM: u8 = 0x01;
/// MSI-X capability id.
pub(crate) const CAP_MSIX: u8 = 0x11;
/// PCI Express capability id.
pub(crate) const CAP_EXP: u8 = 0x10;
/// Designated vendor-specific extended capability id.
pub const EXT_CAP_DVSEC: u16 = 0x23;

/// Config space contents and write permissions.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    data: Box<[u8; CONFIG_SIZE]>,
    writable: Box<[u8; CONFIG_SIZE]>,
    initial: Box<[u8; CONFIG_SIZE]>,
    /// 64-bit BAR pairs at 0x10 (BAR0/1), 0x18 (BAR2/3), 0x20 (BAR4/5); absent ones read 0.
    bars: BarTable,
    last_cap: Option<usize>,
}

impl Default for ConfigSpace {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigSpace {
    /// All zero, nothing writable, no BARs.
    pub fn new() -> Self {
        Self {
            data: Box::new([0; CONFIG_SIZE]),
            writable: Box::new([0; CONFIG_SIZE]),
            initial: Box::new([0; CONFIG_SIZE]),
            bars: BarTable::default(),
            last_cap: None,
        }
    }

    /// Sets `bytes` at `offset` with `wmask` bits writable per byte (builder use only).
    pub fn set(&mut self, offset: usize, bytes: &[u8], wmask: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            if let Some(d) = self.data.get_mut(offset + i) {
                *d = *b;
            }
            if let Some(w) = self.writable.get_mut(offset + i) {
                *w = wmask.get(i).copied().unwrap_or(0);
            }
        }
    }

    /// Sets a read-only u16.
    pub fn set_u16(&mut self, offset: usize, v: u16) {
        self.set(offset, &v.to_le_bytes(), &[0, 0]);
    }

    /// Sets a read-only u32.
    pub fn set_u32(&mut self, offset: usize, v: u32) {
        self.set(offset, &v.to_le_bytes(), &[0; 4]);
    }

    /// Appends a standard capability at `offset` with `body` after the id/next bytes, linking it
    /// into the list that starts at 0x34.
    pub fn add_capability(&mut self, offset: usize, id: u8, body: &[u8], body_wmask: &[u8]) {
        self.set(offset, &[id, 0], &[0, 0]);
        self.set(offset + 2, body, body_wmask);
        let link = match self.last_cap {
            None => 0x34,
            Some(prev) => prev + 1,
        };
        self.set(link, &[offset as u8], &[0]);
        self.last_cap = Some(offset);
    }

    /// Installs the BAR registers shown at 0x10-0x27.
    pub fn set_bars(&mut self, bars: BarTable) {
        self.bars = bars;
    }

    /// The BAR registers (sizes and flags as declared, values as the guest wrote them).
    pub fn bars(&self) -> &BarTable {
        &self.bars
    }

    /// Freezes the current contents as the reset state.
    pub fn seal(&mut self) {
        self.initial.copy_from_slice(&self.data[..]);
    }

    /// Back to the sealed contents; BAR values to 0.
    pub fn reset(&mut self) {
        self.data.copy_from_slice(&self.initial[..]);
        self.bars.reset();
    }

    /// The BAR register pair of region `index` back to 0; the rest of config space is kept.
    pub fn clear_bar(&mut self, index: u32) {
        self.bars.clear(index);
    }

    /// Byte index into the BAR registers when `offset` is one of them.
    fn bar_byte(offset: usize) -> Option<usize> {
        (BAR_BASE..BAR_BASE + 24)
            .contains(&offset)
            .then(|| offset - BAR_BASE)
    }

    /// Reads `buf.len()` bytes at `offset`, clipped at the end; returns bytes read.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> usize {
        let n = buf.len().min(CONFIG_SIZE.saturating_sub(offset));
        for (i, out) in buf.iter_mut().take(n).enumerate() {
            let o = offset + i;
            *out = if let Some(i) = Self::bar_byte(o) {
                self.bars.read_byte(i)
            } else if (ROM_BAR..ROM_BAR + 4).contains(&o) {
                0
            } else {
                self.data[o]
            };
        }
        n
    }

    /// Writes `data` at `offset` through the writable masks, clipped at the end; returns bytes
    /// consumed.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> usize {
        let n = data.len().min(CONFIG_SIZE.saturating_sub(offset));
        for (i, b) in data.iter().take(n).enumerate() {
            let o = offset + i;
            if let Some(i) = Self::bar_byte(o) {
                self.bars.write_byte(i, *b);
            } else {
                let m = self.writable[o];
                self.data[o] = (self.data[o] & !m) | (b & m);
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn read_only_bytes_ignore_writes() {
        let mut c = ConfigSpace::new();
        c.set_u16(0, 0x10de);
        c.write(0, &[0xff, 0xff]);
        let mut b = [0u8; 2];
        c.read(0, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x10de);
    }

    #[test]
    fn writable_mask_applies_per_bit() {
        let mut c = ConfigSpace::new();
        c.set(4, &[0, 0], &[0x07, 0x00]);
        c.write(4, &[0xff, 0xff]);
        let mut b = [0u8; 2];
        c.read(4, &mut b);
        assert_eq!(b, [0x07, 0]);
    }

    #[test]
    fn capability_list_links_in_order() {
        let mut c = ConfigSpace::new();
        c.add_capability(0x40, CAP_PM, &[3, 0], &[]);
        c.add_capability(0x48, CAP_MSIX, &[0; 10], &[]);
        let mut b = [0u8; 1];
        c.read(0x34, &mut b);
        assert_eq!(b[0], 0x40);
        c.read(0x41, &mut b);
        assert_eq!(b[0], 0x48);
        c.read(0x49, &mut b);
        assert_eq!(b[0], 0);
    }

    #[test]
    fn access_is_clipped_at_config_end() {
        let c = ConfigSpace::new();
        let mut b = [0u8; 8];
        assert_eq!(c.read(CONFIG_SIZE - 4, &mut b), 4);
    }
}
