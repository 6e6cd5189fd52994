//! Locks that survive a panic elsewhere.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering it if a panic poisoned it: every value vfu keeps behind a lock (the
/// DMA table, the seat, run-time controls, the device between messages) stays usable after a
/// panic halfway, and refusing every later client would be worse.
pub(crate) fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
