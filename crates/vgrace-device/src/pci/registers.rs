//! BAR0: a 16 MiB register file, sparse (pages allocated on first write), with the two
//! readiness registers the driver polls before using the device.
//!
//! Offsets other than the readiness registers hold whatever was last written there (reads of
//! never-written offsets return 0); that includes the MSI-X table and PBA, which VMMs emulate
//! themselves anyway.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::config::Fault;

/// BAR0 size.
pub const BAR0_SIZE: u64 = 16 << 20;
/// C2C link status register.
pub const C2C_LINK_STATUS: u64 = 0x1498;
/// HBM training status register.
pub const HBM_TRAINING_STATUS: u64 = 0x200bc;
/// What both read once ready.
pub const READY: u32 = 0xff;
const PAGE: u64 = 4096;

/// The BAR0 register file.
#[derive(Debug)]
pub struct Bar0 {
    pages: HashMap<u64, Box<[u8; PAGE as usize]>>,
    delay: Duration,
    ready_at: Instant,
    /// Set once the deadline has passed, so later reads skip the clock (until reset).
    trained: std::cell::Cell<bool>,
    fault: Option<Fault>,
}

impl Bar0 {
    /// A register file whose readiness registers become ready after `delay`.
    pub fn new(delay: Duration, fault: Option<Fault>) -> Self {
        Self {
            pages: HashMap::new(),
            delay,
            ready_at: Instant::now() + delay,
            trained: std::cell::Cell::new(false),
            fault,
        }
    }

    /// Restarts readiness (device reset re-runs link training).
    pub fn reset(&mut self) {
        self.pages.clear();
        self.ready_at = Instant::now() + self.delay;
        self.trained.set(false);
    }

    fn readiness(&self, reg: u64) -> Option<u32> {
        if reg != C2C_LINK_STATUS && reg != HBM_TRAINING_STATUS {
            return None;
        }
        let ready = self.trained.get() || Instant::now() >= self.ready_at;
        self.trained.set(ready);
        match reg {
            C2C_LINK_STATUS => Some(if ready && self.fault != Some(Fault::LinkDown) {
                READY
            } else {
                0
            }),
            HBM_TRAINING_STATUS => Some(
                if ready
                    && self.fault != Some(Fault::NeverReady)
                    && self.fault != Some(Fault::LinkDown)
                {
                    READY
                } else {
                    0
                },
            ),
            _ => None,
        }
    }

    fn byte(&self, o: u64) -> u8 {
        let reg = o & !3;
        if let Some(v) = self.readiness(reg) {
            return v.to_le_bytes()[(o - reg) as usize];
        }
        self.pages
            .get(&(o / PAGE))
            .map_or(0, |p| p[(o % PAGE) as usize])
    }

    /// Reads 1, 2, 4 or 8 bytes; `None` for other sizes or out of range.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Option<usize> {
        let end = self.check(offset, buf.len())?;
        for (o, out) in (offset..end).zip(buf.iter_mut()) {
            *out = self.byte(o);
        }
        Some(buf.len())
    }

    /// Writes 1, 2, 4 or 8 bytes (the readiness registers are read-only).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<usize> {
        let end = self.check(offset, data.len())?;
        for (o, b) in (offset..end).zip(data.iter()) {
            if self.readiness(o & !3).is_some() {
                continue;
            }
            let page = self
                .pages
                .entry(o / PAGE)
                .or_insert_with(|| Box::new([0; PAGE as usize]));
            page[(o % PAGE) as usize] = *b;
        }
        Some(data.len())
    }

    fn check(&self, offset: u64, len: usize) -> Option<u64> {
        if !matches!(len, 1 | 2 | 4 | 8) {
            return None;
        }
        let end = offset.checked_add(len as u64)?;
        (end <= BAR0_SIZE).then_some(end)
    }
}
