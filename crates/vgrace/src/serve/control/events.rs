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

use serde::Serialize;
use serde_json::Value;

use super::protocol::Fault;

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

/// What happened, with its fields: the `kind` of an event record and the rest of its keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum EventKind {
    /// A client connected.
    Connected {
        /// Its pid.
        pid: Option<i32>,
        /// Its uid.
        uid: Option<u32>,
    },
    /// A client's connection ended.
    Disconnected {
        /// Its pid.
        pid: Option<i32>,
        /// Its uid.
        uid: Option<u32>,
        /// How (`Closed`, `Stalled`, ..., or `error: ...`).
        end: String,
    },
    /// A client was refused.
    Refused {
        /// Its pid.
        pid: Option<i32>,
        /// Its uid.
        uid: Option<u32>,
        /// Why (`busy`, `queue-full`, `not-allowed`, `control`).
        why: &'static str,
    },
    /// The device answered a request with an errno.
    ErrorReply {
        /// The command's name.
        cmd: &'static str,
        /// The request's msg_id.
        msg_id: u16,
        /// The errno's name.
        errno: String,
    },
    /// The device was reset.
    Reset {
        /// By whom: `client` or `control`.
        by: &'static str,
    },
    /// A fault was applied or cleared (the fields as the request gave them).
    Fault {
        /// Which.
        fault: Fault,
        /// `applied` or `cleared`.
        action: &'static str,
        /// Its `ms`.
        ms: Option<u64>,
        /// Its `count`.
        count: Option<u64>,
        /// Its `region`.
        region: Option<u32>,
        /// Its `offset`.
        offset: Option<u64>,
    },
}

/// One event record: when, which device, what.
#[derive(Debug, Serialize)]
struct Record<'a> {
    time: String,
    device: &'a str,
    #[serde(flatten)]
    kind: EventKind,
}

/// Where every device's events go.
#[derive(Default)]
pub struct EventBus {
    inner: Mutex<Inner>,
}

impl EventBus {
    /// Publishes an event of `kind` for `device`.
    pub fn publish(&self, device: &str, kind: EventKind) {
        let record = Record {
            time: rfc3339(SystemTime::now()),
            device,
            kind,
        };
        // As a JSON value: the recent list and the followers' queues hold what goes out.
        let event = serde_json::to_value(&record).unwrap_or(Value::Null);
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

    fn reply(i: usize) -> EventKind {
        EventKind::ErrorReply {
            cmd: "REGION_READ",
            msg_id: u16::try_from(i).unwrap(),
            errno: "EINVAL".into(),
        }
    }

    #[test]
    fn an_event_record_keeps_its_keys_and_nulls() {
        let bus = EventBus::default();
        let fault = EventKind::Fault {
            fault: Fault::ReadyDelay,
            action: "applied",
            ms: Some(600),
            count: None,
            region: None,
            offset: None,
        };
        bus.publish("gpu0", fault);
        let e = &bus.recent()[0];
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["action", "count", "device", "fault", "kind", "ms", "offset", "region", "time"]
        );
        assert_eq!(e["fault"], "ready-delay");
        assert_eq!(e["count"], Value::Null);
    }

    #[test]
    fn recent_keeps_the_last_events() {
        let bus = EventBus::default();
        for i in 0..RECENT + 5 {
            bus.publish("gpu0", reply(i));
        }
        let recent = bus.recent();
        assert_eq!(recent.len(), RECENT);
        assert_eq!(recent[0]["msg_id"], 5);
        assert_eq!(recent[0]["kind"], "error-reply");
        assert_eq!(recent[0]["device"], "gpu0");
    }

    #[test]
    fn a_follower_that_does_not_read_loses_events_without_blocking() {
        let bus = EventBus::default();
        let f = bus.follow();
        for i in 0..FOLLOWER_QUEUE + 10 {
            bus.publish("gpu0", reply(i));
        }
        assert_eq!(f.lost.load(Ordering::Relaxed), 10);
        assert_eq!(f.events.recv().unwrap()["msg_id"], 0);
        drop(f);
        bus.publish("gpu0", EventKind::Reset { by: "control" });
        assert!(bus.lock().followers.is_empty());
    }
}
