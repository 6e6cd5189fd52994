//! The two BAR0 registers the driver polls before touching device memory: C2C link status
//! and HBM training status. Both read 0 until the training delay has passed, then `READY`,
//! unless a fault is injected; both are read-only. The variant lays them over the core's
//! plain BAR0 register file.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::live::LiveFaults;
use crate::config::Fault;

/// C2C link status register (BAR0 offset).
pub const C2C_LINK_STATUS: u64 = 0x1498;
/// HBM training status register (BAR0 offset).
pub const HBM_TRAINING_STATUS: u64 = 0x200bc;
/// What both registers read once the device is ready.
pub const READY: u32 = 0xff;
/// Both registers are 32 bits wide.
const WIDTH: u64 = 4;

/// The readiness state: when training completes, and which fault keeps it from completing.
#[derive(Debug)]
pub struct Readiness {
    /// Training time after a reset.
    reset_delay: Duration,
    ready_at: Instant,
    /// Set once the deadline has passed, so later reads skip the clock (until reset).
    trained: Cell<bool>,
    fault: Option<Fault>,
    /// Faults applied at run time.
    live: Arc<LiveFaults>,
    /// A reset happened while `never-ready` was in force: nothing trains until it is cleared.
    stuck: Cell<bool>,
}

impl Readiness {
    /// Registers that read ready `delay` from now (and `reset_delay` after each reset), or
    /// never for the register `fault` breaks.
    pub fn new(
        delay: Duration,
        reset_delay: Duration,
        fault: Option<Fault>,
        live: Arc<LiveFaults>,
    ) -> Self {
        Self {
            reset_delay,
            ready_at: after(delay),
            trained: Cell::new(false),
            fault,
            live,
            stuck: Cell::new(false),
        }
    }

    /// Restarts training (a device reset re-runs it), for the post-reset delay, or the one-off
    /// delay a control client set for this reset.
    pub fn reset(&mut self) {
        let delay = self
            .live
            .take_next_reset_delay()
            .unwrap_or(self.reset_delay);
        self.ready_at = after(delay);
        self.trained.set(false);
        self.stuck.set(self.live.never_ready());
    }

    /// What the registers say now, in words.
    pub fn state(&self) -> &'static str {
        let (link, hbm) = (self.value(C2C_LINK_STATUS), self.value(HBM_TRAINING_STATUS));
        match (link == READY, hbm == READY) {
            (true, true) => "ready",
            _ if self.stuck.get() => "never ready (since the last reset)",
            _ if self.link_down() => "C2C link down",
            (true, false) if self.hbm_lost() => "HBM training lost",
            _ => "training",
        }
    }

    /// Whether both registers read `READY` now (what the driver polls).
    pub fn is_ready(&self) -> bool {
        self.value(C2C_LINK_STATUS) == READY && self.value(HBM_TRAINING_STATUS) == READY
    }

    /// Polls [`Readiness::is_ready`] every `quantum` for up to `timeout`, as upstream's
    /// `nvgrace_gpu_wait_device_ready` does; false when it never became ready.
    pub fn wait_ready(&self, quantum: Duration, timeout: Duration) -> bool {
        let deadline = after(timeout);
        loop {
            if self.is_ready() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::sleep(quantum.min(deadline - now));
        }
    }

    /// The BAR0 bytes of the two registers (computed, so read-only in the register file).
    pub fn ranges() -> [std::ops::Range<u64>; 2] {
        [
            C2C_LINK_STATUS..C2C_LINK_STATUS + WIDTH,
            HBM_TRAINING_STATUS..HBM_TRAINING_STATUS + WIDTH,
        ]
    }

    /// Puts the registers' current values over the bytes of a BAR0 read of `buf` at `offset`.
    pub fn overlay(&self, offset: u64, buf: &mut [u8]) {
        for reg in [C2C_LINK_STATUS, HBM_TRAINING_STATUS] {
            let Some((from, to)) = overlap(reg, offset, buf.len()) else {
                continue;
            };
            let value = self.value(reg).to_le_bytes();
            for o in from..to {
                if let (Some(out), Some(v)) = (
                    buf.get_mut((o - offset) as usize),
                    value.get((o - reg) as usize),
                ) {
                    *out = *v;
                }
            }
        }
    }

    /// The C2C link is down, from the start or since a control client said so.
    fn link_down(&self) -> bool {
        self.fault == Some(Fault::LinkDown) || self.live.link_down()
    }

    /// HBM training never completes, or was lost at run time.
    fn hbm_lost(&self) -> bool {
        self.fault == Some(Fault::NeverReady) || self.live.hbm_lost()
    }

    fn value(&self, reg: u64) -> u32 {
        if self.stuck.get() {
            if self.live.never_ready() {
                return 0;
            }
            // Cleared: training resumes where it was.
            self.stuck.set(false);
        }
        let ready = self.trained.get() || Instant::now() >= self.ready_at;
        self.trained.set(ready);
        let broken = match reg {
            C2C_LINK_STATUS => self.link_down(),
            // HBM training cannot finish over a link that is down.
            _ => self.link_down() || self.hbm_lost(),
        };
        if ready && !broken {
            READY
        } else {
            0
        }
    }
}

/// The byte range `[from, to)` an access of `len` at `offset` shares with register `reg`.
fn overlap(reg: u64, offset: u64, len: usize) -> Option<(u64, u64)> {
    let end = offset.saturating_add(len as u64);
    let from = offset.max(reg);
    let to = end.min(reg + WIDTH);
    (from < to).then_some((from, to))
}

/// `d` from now; a duration too long to add (2^64-1 s) is as good as never, not a panic.
pub(crate) fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or(now + Duration::from_secs(1 << 32))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A library user's 2^64-1 s delay or timeout is "never", not an `Instant` overflow panic.
    #[test]
    fn huge_durations_saturate_instead_of_panicking() {
        let live = Arc::new(LiveFaults::default());
        let r = Readiness::new(Duration::MAX, Duration::MAX, None, live);
        assert!(!r.is_ready());
        assert!(!r.wait_ready(Duration::from_millis(1), Duration::ZERO));
        assert!(after(Duration::MAX) > Instant::now() + Duration::from_secs(1 << 31));
    }

    #[test]
    fn overlay_covers_only_the_register_bytes() {
        let r = Readiness::new(Duration::ZERO, Duration::ZERO, None, Arc::default());
        let mut buf = [0x11u8; 8];
        r.overlay(C2C_LINK_STATUS - 2, &mut buf);
        assert_eq!(buf, [0x11, 0x11, 0xff, 0, 0, 0, 0x11, 0x11]);
        let [c2c, hbm] = Readiness::ranges();
        assert_eq!(c2c, C2C_LINK_STATUS..C2C_LINK_STATUS + 4);
        assert!(hbm.contains(&(HBM_TRAINING_STATUS + 3)));
        assert!(!hbm.contains(&(HBM_TRAINING_STATUS + 4)));
    }

    #[test]
    fn faults_hold_their_register_at_zero() {
        let never = Readiness::new(
            Duration::ZERO,
            Duration::ZERO,
            Some(Fault::NeverReady),
            Arc::default(),
        );
        assert_eq!(never.value(C2C_LINK_STATUS), READY);
        assert_eq!(never.value(HBM_TRAINING_STATUS), 0);
        let down = Readiness::new(
            Duration::ZERO,
            Duration::ZERO,
            Some(Fault::LinkDown),
            Arc::default(),
        );
        assert_eq!(down.value(C2C_LINK_STATUS), 0);
        assert_eq!(down.value(HBM_TRAINING_STATUS), 0);
    }

    #[test]
    fn live_faults_break_and_heal_the_registers() {
        let live = Arc::new(LiveFaults::default());
        let mut r = Readiness::new(Duration::ZERO, Duration::ZERO, None, live.clone());
        assert_eq!(r.state(), "ready");
        live.set_link_down(true);
        assert_eq!(r.value(C2C_LINK_STATUS), 0);
        assert_eq!(r.state(), "C2C link down");
        live.set_link_down(false);
        assert_eq!(r.value(C2C_LINK_STATUS), READY);
        live.set_hbm_lost(true);
        assert_eq!(
            (r.value(C2C_LINK_STATUS), r.value(HBM_TRAINING_STATUS)),
            (READY, 0)
        );
        live.set_hbm_lost(false);
        live.set_never_ready(true);
        // Only a reset makes never-ready bite.
        assert!(r.is_ready());
        r.reset();
        assert!(!r.is_ready());
        live.set_never_ready(false);
        assert!(r.is_ready());
        live.set_next_reset_delay(Some(Duration::from_secs(3600)));
        r.reset();
        assert_eq!(r.state(), "training");
    }
}
