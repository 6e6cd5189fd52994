//! Per-device statistics, counted by the device's observer on the session thread: atomics for
//! the counts, a short lock only when an error reply is counted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{json, Value};
use vfu::wire::cmd;
use vfu::Errno;

use super::events::rfc3339;
use super::relock;

/// Command ids we keep a row for (0..=18); anything else counts under "UNKNOWN".
const ROWS: usize = 20;
const OTHER: usize = ROWS - 1;

#[derive(Debug, Default)]
struct Row {
    count: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    errors: Mutex<BTreeMap<i32, u64>>,
}

/// The last error reply a device sent.
#[derive(Debug, Clone, Copy)]
struct LastError {
    at: SystemTime,
    cmd: u16,
    msg_id: u16,
    errno: Errno,
}

/// One device's counters.
#[derive(Debug, Default)]
pub struct Stats {
    rows: [Row; ROWS],
    clients: AtomicU64,
    refused: AtomicU64,
    resets: AtomicU64,
    dropped: AtomicU64,
    last_error: Mutex<Option<LastError>>,
}

fn row_of(command: u16) -> usize {
    usize::from(command).min(OTHER)
}

impl Stats {
    /// A message of `size` bytes arrived.
    pub fn request(&self, command: u16, size: u32) {
        let row = &self.rows[row_of(command)];
        row.count.fetch_add(1, Ordering::Relaxed);
        row.bytes_in.fetch_add(u64::from(size), Ordering::Relaxed);
    }

    /// Its reply went out (`size` bytes; `errno` for an error reply).
    pub fn reply(&self, command: u16, msg_id: u16, size: usize, errno: Option<Errno>) {
        let row = &self.rows[row_of(command)];
        row.bytes_out.fetch_add(size as u64, Ordering::Relaxed);
        match errno {
            Some(errno) => {
                *relock(&row.errors).entry(errno as i32).or_default() += 1;
                *relock(&self.last_error) = Some(LastError {
                    at: SystemTime::now(),
                    cmd: command,
                    msg_id,
                    errno,
                });
            }
            None if command == cmd::DEVICE_RESET => {
                self.resets.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }
    }

    /// A client got the device.
    pub fn client(&self) {
        self.clients.fetch_add(1, Ordering::Relaxed);
    }

    /// A client was turned away.
    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The control plane reset the device.
    pub fn reset(&self) {
        self.resets.fetch_add(1, Ordering::Relaxed);
    }

    /// The control plane dropped the client.
    pub fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Everything, as the control protocol's `stats` object.
    pub fn to_json(&self) -> Value {
        let mut commands = Vec::new();
        for (i, row) in self.rows.iter().enumerate() {
            let count = row.count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let name = if i == OTHER {
                "UNKNOWN"
            } else {
                cmd::name(i as u16)
            };
            let errors: serde_json::Map<String, Value> = relock(&row.errors)
                .iter()
                .map(|(e, n)| (format!("{:?}", Errno::from_raw(*e)), json!(n)))
                .collect();
            commands.push(json!({
                "cmd": name,
                "count": count,
                "errors": errors,
                "bytes_in": row.bytes_in.load(Ordering::Relaxed),
                "bytes_out": row.bytes_out.load(Ordering::Relaxed),
            }));
        }
        let last_error = (*relock(&self.last_error)).map(|e| {
            json!({
                "time": rfc3339(e.at),
                "cmd": cmd::name(e.cmd),
                "msg_id": e.msg_id,
                "errno": format!("{:?}", e.errno),
            })
        });
        json!({
            "clients_served": self.clients.load(Ordering::Relaxed),
            "clients_refused": self.refused.load(Ordering::Relaxed),
            "clients_dropped": self.dropped.load(Ordering::Relaxed),
            "resets": self.resets.load(Ordering::Relaxed),
            "commands": commands,
            "last_error": last_error,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn errors_are_counted_by_errno_and_the_last_one_kept() {
        let s = Stats::default();
        s.request(cmd::REGION_READ, 40);
        s.reply(cmd::REGION_READ, 7, 16, Some(Errno::EINVAL));
        s.request(cmd::REGION_READ, 40);
        s.reply(cmd::REGION_READ, 8, 36, None);
        s.request(cmd::DEVICE_RESET, 16);
        s.reply(cmd::DEVICE_RESET, 9, 16, None);
        let j = s.to_json();
        let read = &j["commands"][0];
        assert_eq!(read["cmd"], "REGION_READ");
        assert_eq!(read["count"], 2);
        assert_eq!(read["errors"]["EINVAL"], 1);
        assert_eq!(read["bytes_in"], 80);
        assert_eq!(read["bytes_out"], 52);
        assert_eq!(j["resets"], 1);
        assert_eq!(j["last_error"]["msg_id"], 7);
        assert_eq!(j["last_error"]["errno"], "EINVAL");
    }

    #[test]
    fn unknown_commands_share_one_row() {
        let s = Stats::default();
        s.request(999, 16);
        s.request(19, 16);
        assert_eq!(s.to_json()["commands"][0]["count"], 2);
        assert_eq!(s.to_json()["commands"][0]["cmd"], "UNKNOWN");
    }
}
