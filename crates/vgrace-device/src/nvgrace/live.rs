//! Faults switched on and off while the device runs (`vgrace ctl fault`): the device and the
//! control plane share one [`LiveFaults`]. Everything is an atomic or a short lock, so applying
//! a fault never waits on the device, even while it polls readiness for a client.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::config::Poison;

/// Most pages poisoned at run time at once: every client read that may touch poison walks the
/// list, and `status` names each page, so a control client cannot grow it without end.
pub const MAX_RUNTIME_POISON: usize = 1024;

/// [`LiveFaults::poison`] refused a page: the list is at [`MAX_RUNTIME_POISON`].
#[derive(Debug, thiserror::Error)]
#[error(
    "{MAX_RUNTIME_POISON} pages are poisoned already, the most kept at run time; heal some first"
)]
pub struct PoisonListFull;

/// No readiness delay is pending.
const NO_DELAY: u64 = u64::MAX;

/// The run-time faults of one device.
#[derive(Debug)]
pub struct LiveFaults {
    link_down: AtomicBool,
    hbm_lost: AtomicBool,
    never_ready: AtomicBool,
    /// Training time (ms) for the next reset only, or [`NO_DELAY`].
    next_reset_delay_ms: AtomicU64,
    poison: Mutex<Vec<Poison>>,
    /// Whether `poison` is non-empty, so reads skip the lock when nothing is poisoned.
    any_poison: AtomicBool,
}

impl Default for LiveFaults {
    fn default() -> Self {
        Self {
            link_down: AtomicBool::new(false),
            hbm_lost: AtomicBool::new(false),
            never_ready: AtomicBool::new(false),
            next_reset_delay_ms: AtomicU64::new(NO_DELAY),
            poison: Mutex::new(Vec::new()),
            any_poison: AtomicBool::new(false),
        }
    }
}

impl LiveFaults {
    /// The C2C link drops now: 0x1498 (and HBM training behind it) reads 0 until cleared.
    pub fn set_link_down(&self, on: bool) {
        self.link_down.store(on, Ordering::SeqCst);
    }

    /// HBM training is lost now: 0x200BC reads 0 until cleared.
    pub fn set_hbm_lost(&self, on: bool) {
        self.hbm_lost.store(on, Ordering::SeqCst);
    }

    /// Training after the next reset never completes: both registers read 0 from that reset
    /// until cleared.
    pub fn set_never_ready(&self, on: bool) {
        self.never_ready.store(on, Ordering::SeqCst);
    }

    /// The next reset's training takes `delay` (instead of the configured reset delay); `None`
    /// withdraws it.
    pub fn set_next_reset_delay(&self, delay: Option<Duration>) {
        let ms = delay.map_or(NO_DELAY, |d| {
            u64::try_from(d.as_millis())
                .unwrap_or(NO_DELAY - 1)
                .min(NO_DELAY - 1)
        });
        self.next_reset_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Poisons the 4 KiB page holding `offset` of memory region `region` (the caller checks
    /// that it is device memory); true when it was not poisoned yet. A new page past
    /// [`MAX_RUNTIME_POISON`] is refused.
    pub fn poison(&self, region: u32, offset: u64) -> Result<bool, PoisonListFull> {
        let page = Poison::page(region, offset);
        let mut pages = self.pages();
        if pages.contains(&page) {
            return Ok(false);
        }
        if pages.len() >= MAX_RUNTIME_POISON {
            return Err(PoisonListFull);
        }
        pages.push(page);
        self.any_poison.store(true, Ordering::SeqCst);
        Ok(true)
    }

    /// Heals the page holding `offset` of `region`, or every page when `None`; how many.
    pub fn unpoison(&self, at: Option<(u32, u64)>) -> usize {
        let mut pages = self.pages();
        let before = pages.len();
        match at {
            Some((region, offset)) => {
                let page = Poison::page(region, offset);
                pages.retain(|p| *p != page);
            }
            None => pages.clear(),
        }
        self.any_poison.store(!pages.is_empty(), Ordering::SeqCst);
        before - pages.len()
    }

    /// Clears every fault.
    pub fn clear_all(&self) {
        self.set_link_down(false);
        self.set_hbm_lost(false);
        self.set_never_ready(false);
        self.set_next_reset_delay(None);
        self.unpoison(None);
    }

    /// Whether the link is down.
    pub fn link_down(&self) -> bool {
        self.link_down.load(Ordering::SeqCst)
    }

    /// Whether HBM training is lost.
    pub fn hbm_lost(&self) -> bool {
        self.hbm_lost.load(Ordering::SeqCst)
    }

    /// Whether training after a reset never completes.
    pub fn never_ready(&self) -> bool {
        self.never_ready.load(Ordering::SeqCst)
    }

    /// The pending delay for the next reset.
    pub fn next_reset_delay(&self) -> Option<Duration> {
        match self.next_reset_delay_ms.load(Ordering::SeqCst) {
            NO_DELAY => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Takes the pending delay for the reset happening now.
    pub(crate) fn take_next_reset_delay(&self) -> Option<Duration> {
        match self.next_reset_delay_ms.swap(NO_DELAY, Ordering::SeqCst) {
            NO_DELAY => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// The pages poisoned at run time.
    pub fn poisoned(&self) -> Vec<Poison> {
        if !self.any_poison.load(Ordering::SeqCst) {
            return Vec::new();
        }
        self.pages().clone()
    }

    /// Whether `[offset, offset + len)` of `region` touches a page poisoned at run time.
    pub(crate) fn touches_poison(&self, region: u32, offset: u64, len: usize) -> bool {
        if !self.any_poison.load(Ordering::SeqCst) {
            return false;
        }
        self.pages().iter().any(|p| p.touches(region, offset, len))
    }

    /// Names of the faults in force (`link-down`, `poison 4:0x1000`, ...), for status lines.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.link_down() {
            out.push("link-down".to_string());
        }
        if self.hbm_lost() {
            out.push("hbm-lost".to_string());
        }
        if self.never_ready() {
            out.push("never-ready".to_string());
        }
        if let Some(d) = self.next_reset_delay() {
            out.push(format!("ready-delay {}ms", d.as_millis()));
        }
        for p in self.poisoned() {
            out.push(format!("poison {}:{:#x}", p.region, p.offset));
        }
        out
    }

    fn pages(&self) -> MutexGuard<'_, Vec<Poison>> {
        // A poisoned lock only means a panic elsewhere; the list is plain data.
        self.poison.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn poison_covers_the_page_and_heals() {
        let f = LiveFaults::default();
        assert!(f.poison(4, 0x1234).unwrap());
        assert!(!f.poison(4, 0x1000).unwrap());
        assert!(f.touches_poison(4, 0xfff, 2));
        assert!(!f.touches_poison(4, 0x2000, 8));
        assert!(!f.touches_poison(2, 0x1000, 8));
        assert_eq!(f.describe(), vec!["poison 4:0x1000".to_string()]);
        assert_eq!(f.unpoison(Some((4, 0x1fff))), 1);
        assert!(!f.touches_poison(4, 0x1000, 8));
    }

    #[test]
    fn run_time_poison_list_is_bounded() {
        let f = LiveFaults::default();
        for page in 0..MAX_RUNTIME_POISON as u64 {
            assert!(f.poison(4, page << 12).unwrap());
        }
        // A page already listed is no new entry; a new one is refused until one heals.
        assert!(!f.poison(4, 0).unwrap());
        let next = (MAX_RUNTIME_POISON as u64) << 12;
        assert!(f.poison(4, next).is_err());
        assert_eq!(f.unpoison(Some((4, 0))), 1);
        assert!(f.poison(4, next).unwrap());
    }

    #[test]
    fn next_reset_delay_is_taken_once() {
        let f = LiveFaults::default();
        f.set_next_reset_delay(Some(Duration::from_millis(1500)));
        assert_eq!(f.take_next_reset_delay(), Some(Duration::from_millis(1500)));
        assert_eq!(f.take_next_reset_delay(), None);
    }
}
