//! Emulated 64-bit memory BAR registers, shared by BAR0 and the invented BAR2-BAR5.

/// BAR flag: 64-bit memory BAR.
pub const BAR_MEM_64: u64 = 0x4;
/// BAR flag: prefetchable.
pub const BAR_PREFETCH: u64 = 0x8;

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

#[cfg(test)]
mod tests {
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
}
