//! A BAR served as a plain register file: sparse (4 KiB pages allocated on first write), every
//! offset holds what was last written there and never-written offsets read 0. The core clips
//! accesses at the BAR end and keeps an MSI-X table and a variant's read-only registers out of
//! it (see `pci::core`); variants put device-specific registers on top (`nvgrace::readiness`).

use std::collections::HashMap;

const PAGE: u64 = 4096;

/// A sparse register file of a fixed size.
#[derive(Debug)]
pub struct RegFile {
    pages: HashMap<u64, Box<[u8; PAGE as usize]>>,
    size: u64,
}

impl RegFile {
    /// An all-zero register file of `size` bytes (nothing is allocated until written).
    pub fn new(size: u64) -> Self {
        Self {
            pages: HashMap::new(),
            size,
        }
    }

    /// Its size in bytes (the BAR size).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Back to all zero (device reset).
    pub fn reset(&mut self) {
        self.pages.clear();
    }

    /// Reads 1, 2, 4 or 8 bytes at `offset`; `None` for other sizes or an access that does not
    /// fit entirely below the size.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Option<usize> {
        let end = self.check(offset, buf.len())?;
        for (o, out) in (offset..end).zip(buf.iter_mut()) {
            *out = self
                .pages
                .get(&(o / PAGE))
                .map_or(0, |p| p[(o % PAGE) as usize]);
        }
        Some(buf.len())
    }

    /// Writes 1, 2, 4 or 8 bytes at `offset`; `None` as for [`RegFile::read`].
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<usize> {
        let end = self.check(offset, data.len())?;
        for (o, b) in (offset..end).zip(data.iter()) {
            let page = self
                .pages
                .entry(o / PAGE)
                .or_insert_with(|| Box::new([0; PAGE as usize]));
            page[(o % PAGE) as usize] = *b;
        }
        Some(data.len())
    }

    /// End of a valid access: register-sized and inside the file (no wrapping).
    fn check(&self, offset: u64, len: usize) -> Option<u64> {
        let end = offset.checked_add(len as u64)?;
        (end <= self.size).then_some(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_writes_and_reads_unwritten_as_zero() {
        let mut r = RegFile::new(1 << 20);
        assert_eq!(r.write(0x1234, &[1, 2, 3, 4]), Some(4));
        let mut b = [0xaa; 8];
        assert_eq!(r.read(0x1230, &mut b), Some(8));
        assert_eq!(b, [0, 0, 0, 0, 1, 2, 3, 4]);
        r.reset();
        assert_eq!(r.read(0x1234, &mut b[..4]), Some(4));
        assert_eq!(b[..4], [0; 4]);
    }

    #[test]
    fn takes_any_length_and_refuses_straddling_and_wrapping_accesses() {
        let mut r = RegFile::new(4096);
        let mut b = [0u8; 8];
        assert_eq!(r.read(0, &mut b[..3]), Some(3));
        assert_eq!(r.read(4094, &mut b[..4]), None);
        assert_eq!(r.write(u64::MAX - 1, &[0; 4]), None);
        assert_eq!(r.read(4092, &mut b[..4]), Some(4));
    }
}
