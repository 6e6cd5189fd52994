//! Run-time knobs on a serving [`Server`](super::Server), for a control plane on another thread:
//! who holds the device, drop that client, refuse the next connections, delay replies. Every
//! call is a few atomic operations or a short lock: a control client never waits on the device.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use nix::sys::socket::{shutdown, Shutdown as How};

use super::Peer;
use crate::sync::relock;

/// The client holding the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    /// Who it is.
    pub peer: Peer,
    /// When it got the device.
    pub since: SystemTime,
}

/// A reply delay in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyDelay {
    /// How long each reply waits.
    pub by: Duration,
    /// How many more replies wait; `None` until cleared.
    pub remaining: Option<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    delay: Mutex<Option<ReplyDelay>>,
    /// Whether `delay` may hold something: lets every message skip the lock when none does.
    delaying: AtomicBool,
    refuse: AtomicU32,
    client: Mutex<Option<(Attached, Arc<OwnedFd>)>>,
    /// Bumped by every drop, so a session waiting out a delay sees it.
    drops: AtomicU64,
}

/// Run-time controls of one server. Cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct Controls {
    inner: Arc<Inner>,
}

impl Controls {
    /// Controls with nothing in force.
    pub fn new() -> Self {
        Self::default()
    }

    /// Delays the next `count` replies (every reply until cleared when `None`) by `by`. The
    /// delay runs before the device sees the message, so nothing else waits on it.
    pub fn delay_replies(&self, by: Duration, count: Option<u64>) {
        *relock(&self.inner.delay) = Some(ReplyDelay {
            by,
            remaining: count,
        });
        self.inner.delaying.store(true, Ordering::SeqCst);
    }

    /// Ends a reply delay; false when none was in force.
    pub fn clear_delay(&self) -> bool {
        relock(&self.inner.delay).take().is_some()
    }

    /// The reply delay in force.
    pub fn reply_delay(&self) -> Option<ReplyDelay> {
        *relock(&self.inner.delay)
    }

    /// Turns away the next `n` clients that connect (closed at once, before their first
    /// message); 0 ends a refusal in force.
    pub fn refuse_next(&self, n: u32) {
        self.inner.refuse.store(n, Ordering::SeqCst);
    }

    /// How many connections will still be refused.
    pub fn refusals_pending(&self) -> u32 {
        self.inner.refuse.load(Ordering::SeqCst)
    }

    /// Disconnects the client holding the device (its session ends as if it had hung up; the
    /// device keeps its state). Returns who it was.
    pub fn drop_client(&self) -> Option<Peer> {
        let client = relock(&self.inner.client);
        let (attached, conn) = client.as_ref()?;
        self.inner.drops.fetch_add(1, Ordering::SeqCst);
        let _ = shutdown(conn.as_raw_fd(), How::Both);
        Some(attached.peer)
    }

    /// The client holding the device.
    pub fn client(&self) -> Option<Attached> {
        relock(&self.inner.client).as_ref().map(|(a, _)| *a)
    }

    /// Takes one reply delay, if one is in force.
    pub(crate) fn take_delay(&self) -> Option<Duration> {
        if !self.inner.delaying.load(Ordering::Relaxed) {
            return None;
        }
        let mut delay = relock(&self.inner.delay);
        let d = (*delay)?;
        match d.remaining {
            None => {}
            Some(0 | 1) => *delay = None,
            Some(n) => {
                *delay = Some(ReplyDelay {
                    remaining: Some(n - 1),
                    ..d
                })
            }
        }
        (d.remaining != Some(0)).then_some(d.by)
    }

    /// Whether to refuse the connection at hand (consumes one refusal).
    pub(crate) fn take_refusal(&self) -> bool {
        self.inner
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    pub(crate) fn attach(&self, peer: Peer, conn: Arc<OwnedFd>) {
        let since = SystemTime::now();
        *relock(&self.inner.client) = Some((Attached { peer, since }, conn));
    }

    pub(crate) fn detach(&self) {
        *relock(&self.inner.client) = None;
    }

    /// A counter that changes whenever a client is dropped.
    pub(crate) fn drops(&self) -> u64 {
        self.inner.drops.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counted_delay_runs_out() {
        let c = Controls::new();
        c.delay_replies(Duration::from_millis(7), Some(2));
        assert_eq!(c.take_delay(), Some(Duration::from_millis(7)));
        assert_eq!(c.reply_delay().and_then(|d| d.remaining), Some(1));
        assert_eq!(c.take_delay(), Some(Duration::from_millis(7)));
        assert_eq!(c.take_delay(), None);
        assert_eq!(c.reply_delay(), None);
    }

    #[test]
    fn an_open_delay_lasts_until_cleared() {
        let c = Controls::new();
        c.delay_replies(Duration::from_millis(1), None);
        for _ in 0..5 {
            assert!(c.take_delay().is_some());
        }
        assert!(c.clear_delay());
        assert_eq!(c.take_delay(), None);
        assert!(!c.clear_delay());
    }

    #[test]
    fn refusals_are_counted_down() {
        let c = Controls::new();
        c.refuse_next(2);
        assert!(c.take_refusal());
        assert!(c.take_refusal());
        assert!(!c.take_refusal());
        assert_eq!(c.refusals_pending(), 0);
    }

    #[test]
    fn dropping_with_no_client_is_none() {
        assert_eq!(Controls::new().drop_client(), None);
    }
}
