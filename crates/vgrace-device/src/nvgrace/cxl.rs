//! The CXL Device DVSEC of a Blackwell-Next part, which Linux 7.2 reads for readiness instead
//! of the BAR0 pair: its Range 1 Size Low register (DVSEC + 0x1C) sets bit 0 "memory info valid"
//! after one delay and bit 1 "memory active" after another, and bits 15:13 carry the timeout the
//! driver waits for "active" (1 s x 4^n, capped at 256 s). The register is dynamic, so the
//! variant lays its value over config reads, as it lays the readiness registers over BAR0.

use std::time::{Duration, Instant};

use crate::config::{Cxl, Fault};
use vfu_pci::ExtCapability;
use vfu_pci::EXT_CAP_DVSEC;

/// Config offset of the CXL DVSEC (after the NVIDIA DVSEC at 0x100).
pub const CXL_DVSEC_OFFSET: u16 = 0x140;
/// The CXL consortium's vendor id.
pub const CXL_VENDOR_ID: u16 = 0x1e98;
/// DVSEC id of the CXL Device DVSEC.
pub const CXL_DEVICE_DVSEC_ID: u16 = 0;
/// Range 1 Size Low, from the start of the DVSEC.
pub const RANGE1_SIZE_LOW: u16 = 0x1c;
/// Bit 0: memory info valid.
pub const MEM_INFO_VALID: u32 = 1 << 0;
/// Bit 1: memory active.
pub const MEM_ACTIVE: u32 = 1 << 1;
/// Bits 15:13: Memory_Active_Timeout.
const TIMEOUT_SHIFT: u32 = 13;
/// Length of the CXL Device DVSEC (through Range 2 Base Low).
const DVSEC_LENGTH: u32 = 0x38;
/// What the driver gives "memory info valid" to appear.
pub const VALID_TIMEOUT: Duration = Duration::from_secs(1);

/// The DVSEC as a read-only extended capability (its Range 1 Size Low is overlaid live).
pub fn device_dvsec(cxl: &Cxl) -> ExtCapability {
    let mut body = vec![0u8; DVSEC_LENGTH as usize - 4];
    // Header 1: vendor, revision 1, length; header 2: the DVSEC id.
    body[0..4].copy_from_slice(
        &(u32::from(CXL_VENDOR_ID) | (1 << 16) | (DVSEC_LENGTH << 20)).to_le_bytes(),
    );
    body[4..6].copy_from_slice(&CXL_DEVICE_DVSEC_ID.to_le_bytes());
    let at = usize::from(RANGE1_SIZE_LOW) - 4;
    body[at..at + 4].copy_from_slice(&(u32::from(cxl.timeout_code) << TIMEOUT_SHIFT).to_le_bytes());
    ExtCapability {
        offset: CXL_DVSEC_OFFSET,
        id: EXT_CAP_DVSEC,
        version: 1,
        body,
    }
}

/// The live state of the register: when each bit appears, and which fault keeps one away.
#[derive(Debug, Clone)]
pub struct CxlReadiness {
    cxl: Cxl,
    since: Instant,
    fault: Option<Fault>,
}

impl CxlReadiness {
    /// Counting from now.
    pub fn new(cxl: Cxl, fault: Option<Fault>) -> Self {
        Self {
            cxl,
            since: Instant::now(),
            fault,
        }
    }

    /// A reset starts both delays again.
    pub fn reset(&mut self) {
        self.since = Instant::now();
    }

    /// The register's value now.
    pub fn value(&self) -> u32 {
        let elapsed = self.since.elapsed();
        let valid = elapsed >= self.cxl.valid_delay && self.fault != Some(Fault::CxlNeverValid);
        let active =
            valid && elapsed >= self.cxl.active_delay && self.fault != Some(Fault::CxlNeverActive);
        let mut v = u32::from(self.cxl.timeout_code) << TIMEOUT_SHIFT;
        if valid {
            v |= MEM_INFO_VALID;
        }
        if active {
            v |= MEM_ACTIVE;
        }
        v
    }

    /// Lays the register over the bytes of a config read of `buf` at `offset`.
    pub fn overlay(&self, offset: u64, buf: &mut [u8]) {
        let reg = u64::from(CXL_DVSEC_OFFSET + RANGE1_SIZE_LOW);
        let value = self.value().to_le_bytes();
        for (i, b) in buf.iter_mut().enumerate() {
            let at = offset.saturating_add(i as u64);
            if (reg..reg + 4).contains(&at) {
                *b = value[(at - reg) as usize];
            }
        }
    }

    /// The 7.2 driver's wait: "valid" within 1 s, then "active" within the encoded timeout,
    /// polling every `quantum`. False when either never came.
    pub fn wait_ready(&self, quantum: Duration) -> bool {
        self.wait_ready_unless(quantum, &|| false) == Waited::Ready
    }

    /// [`CxlReadiness::wait_ready`] that gives up as soon as `cancelled` says so.
    fn wait_ready_unless(&self, quantum: Duration, cancelled: &dyn Fn() -> bool) -> Waited {
        match wait(quantum, VALID_TIMEOUT, cancelled, || {
            self.value() & MEM_INFO_VALID != 0
        }) {
            Waited::Ready => wait(quantum, self.cxl.active_timeout(), cancelled, || {
                self.value() & MEM_ACTIVE != 0
            }),
            other => other,
        }
    }

    /// Both bits set now.
    pub fn is_ready(&self) -> bool {
        self.value() & (MEM_INFO_VALID | MEM_ACTIVE) == MEM_INFO_VALID | MEM_ACTIVE
    }
}

/// Polls `done` every `quantum` until it holds or `timeout` passed.
/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waited {
    Ready,
    TimedOut,
    Cancelled,
}

/// Polls `done` every `quantum` until `timeout`, looking at `cancelled` every few milliseconds
/// in between (the kernel's wait is killable).
fn wait(
    quantum: Duration,
    timeout: Duration,
    cancelled: &dyn Fn() -> bool,
    done: impl Fn() -> bool,
) -> Waited {
    const SLICE: Duration = Duration::from_millis(20);
    let deadline = super::readiness::after(timeout);
    loop {
        if done() {
            return Waited::Ready;
        }
        let now = Instant::now();
        if now >= deadline {
            return Waited::TimedOut;
        }
        let next = super::readiness::after(quantum).min(deadline);
        while Instant::now() < next {
            if cancelled() {
                return Waited::Cancelled;
            }
            std::thread::sleep(SLICE.min(next.saturating_duration_since(Instant::now())));
        }
    }
}

/// The 7.2 driver's CXL wait before a memory access (`nvgrace_gpu_wait_device_ready_cxl`),
/// run by the server outside the device lock on a snapshot of the register's clock: ETIME
/// when the device never came up, EINTR when the client went away or the server stops.
impl vfu::AccessWait for CxlReadiness {
    fn wait(&self, cancelled: &dyn Fn() -> bool) -> Result<(), vfu::Errno> {
        match self.wait_ready_unless(crate::config::READY_POLL, cancelled) {
            Waited::Ready => Ok(()),
            Waited::TimedOut => Err(vfu::Errno::ETIME),
            Waited::Cancelled => Err(vfu::Errno::EINTR),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cxl(code: u8) -> Cxl {
        Cxl {
            valid_delay: Duration::ZERO,
            active_delay: Duration::ZERO,
            timeout_code: code,
        }
    }

    #[test]
    fn timeout_code_is_four_to_the_n_seconds_capped_at_256() {
        assert_eq!(cxl(0).active_timeout(), Duration::from_secs(1));
        assert_eq!(cxl(2).active_timeout(), Duration::from_secs(16));
        assert_eq!(cxl(4).active_timeout(), Duration::from_secs(256));
        assert_eq!(cxl(7).active_timeout(), Duration::from_secs(256));
    }

    #[test]
    fn register_carries_the_code_and_the_bits() {
        let r = CxlReadiness::new(cxl(3), None);
        assert_eq!(r.value(), (3 << 13) | 3);
        let never = CxlReadiness::new(cxl(0), Some(Fault::CxlNeverActive));
        assert_eq!(never.value(), MEM_INFO_VALID);
        let mut buf = [0u8; 8];
        r.overlay(u64::from(CXL_DVSEC_OFFSET + RANGE1_SIZE_LOW) - 2, &mut buf);
        assert_eq!(&buf[2..6], &r.value().to_le_bytes());
        assert_eq!(&buf[..2], &[0, 0]);
    }
}
