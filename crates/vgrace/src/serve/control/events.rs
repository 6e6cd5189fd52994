//! The event stream (`vgrace ctl events`): connects, disconnects, refusals, error replies,
//! resets and faults, each a JSON object with a timestamp. The last [`RECENT`] are kept for a
//! client that asks once; followers get each new one through a bounded queue of their own, so
//! a follower that stops reading loses events (and is told how many) instead of slowing a
//! device down.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde_json::{json, Map, Value};

/// Events kept for `ctl events` without `--follow`.
pub const RECENT: usize = 256;
/// Events queued for one follower before it starts losing them.
const FOLLOWER_QUEUE: usize = 1024;

/// A follower's end: new events, and how many it lost to a full queue.
pub struct Follower {
    /// New events.
    pub events: Receiver<Value>,
    /// Events that did not fit in the queue.
    pub lost: Arc<AtomicU64>,
}

#[derive(Default)]
struct Inner {
    recent: VecDeque<Value>,
    followers: Vec<(SyncSender<Value>, Arc<AtomicU64>)>,
}

/// Where every device's events go.
#[derive(Default)]
pub struct EventBus {
    inner: Mutex<Inner>,
}

impl EventBus {
    /// Publishes an event of `kind` for `device` with `fields` (an object).
    pub fn publish(&self, device: &str, kind: &str, fields: Value) {
        let mut event = Map::new();
        event.insert("time".into(), json!(rfc3339(SystemTime::now())));
        event.insert("device".into(), json!(device));
        event.insert("kind".into(), json!(kind));
        if let Value::Object(f) = fields {
            event.extend(f);
        }
        let event = Value::Object(event);
        let mut inner = self.lock();
        if inner.recent.len() == RECENT {
            inner.recent.pop_front();
        }
        inner.recent.push_back(event.clone());
        inner
            .followers
            .retain(|(tx, lost)| match tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    lost.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            });
    }

    /// The last events, oldest first.
    pub fn recent(&self) -> Vec<Value> {
        self.lock().recent.iter().cloned().collect()
    }

    /// A new follower.
    pub fn follow(&self) -> Follower {
        let (tx, rx) = sync_channel(FOLLOWER_QUEUE);
        let lost = Arc::new(AtomicU64::new(0));
        self.lock().followers.push((tx, lost.clone()));
        Follower { events: rx, lost }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        super::relock(&self.inner)
    }
}

/// `time` as RFC 3339 UTC with milliseconds.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn recent_keeps_the_last_events() {
        let bus = EventBus::default();
        for i in 0..RECENT + 5 {
            bus.publish("gpu0", "n", json!({ "i": i }));
        }
        let recent = bus.recent();
        assert_eq!(recent.len(), RECENT);
        assert_eq!(recent[0]["i"], 5);
        assert_eq!(recent[0]["device"], "gpu0");
    }

    #[test]
    fn a_follower_that_does_not_read_loses_events_without_blocking() {
        let bus = EventBus::default();
        let f = bus.follow();
        for i in 0..FOLLOWER_QUEUE + 10 {
            bus.publish("gpu0", "n", json!({ "i": i }));
        }
        assert_eq!(f.lost.load(Ordering::Relaxed), 10);
        assert_eq!(f.events.recv().unwrap()["i"], 0);
        drop(f);
        bus.publish("gpu0", "n", json!({}));
        assert!(bus.lock().followers.is_empty());
    }
}
