//! What `vgrace trace` makes of a trace's lines: per-command figures (count, errors, bytes,
//! latency percentiles), the pairing of replies with requests, and the one-line listing of
//! each message.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::Serialize;
use vfu::trace::line::{self, Dir, Line, Record};

/// Figures for one command.
#[derive(Debug, Default, Serialize)]
pub struct CommandStats {
    /// Requests seen.
    pub count: u64,
    /// Error replies, by errno.
    pub errors: BTreeMap<String, u64>,
    /// Bytes of the requests.
    pub bytes_in: u64,
    /// Bytes of the replies.
    pub bytes_out: u64,
    /// Request-to-reply times in µs, one per reply.
    #[serde(skip)]
    latencies: Vec<u64>,
}

/// Latency percentiles of one command, in µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Slowest.
    pub max: u64,
}

impl CommandStats {
    /// Nearest-rank percentiles of the latencies, `None` without replies.
    pub fn percentiles(&mut self) -> Option<Percentiles> {
        if self.latencies.is_empty() {
            return None;
        }
        self.latencies.sort_unstable();
        let v = &self.latencies;
        let rank = |p: usize| v[(v.len() * p).div_ceil(100).clamp(1, v.len()) - 1];
        Some(Percentiles {
            p50: rank(50),
            p90: rank(90),
            p99: rank(99),
            max: v[v.len() - 1],
        })
    }
}

/// A request waiting for its reply.
#[derive(Debug, Clone, Copy)]
struct Pending {
    t: f64,
}

/// Everything read so far.
#[derive(Debug, Default)]
pub struct Summary {
    /// When the (first) trace started, from its header.
    pub start: Option<String>,
    /// Per command name, in name order.
    pub commands: BTreeMap<String, CommandStats>,
    /// Clients that got the device.
    pub connections: u64,
    /// Clients turned away.
    pub refused: u64,
    /// Lines the writer dropped (it said so in `note` lines).
    pub dropped: u64,
    /// Requests whose reply never appeared (the client left, or the trace ends mid-request).
    pub unanswered: u64,
    /// Replies without a request (the trace began, or a rotated file ended, between them).
    pub orphan_replies: u64,
    /// Lines that were not trace lines.
    pub malformed: u64,
    /// Requests waiting for a reply, per msg_id, oldest first.
    pending: HashMap<u16, Vec<Pending>>,
    /// The first header's start, as a time.
    first_start: Option<std::time::SystemTime>,
    /// Seconds from the first header's start to the current one's: a server restarted on the
    /// same file appends a new header and counts `t` from its own start again.
    offset: f64,
}

impl Summary {
    /// Takes one line (without its newline) into account; returns its listing line, if it is a
    /// message, event or note.
    pub fn feed(&mut self, text: &str) -> Option<String> {
        if text.trim().is_empty() {
            return None;
        }
        match line::parse(text) {
            None => {
                self.malformed += 1;
                None
            }
            Some(Record::Header(h)) => {
                self.header(&h.start);
                self.start.get_or_insert(h.start);
                None
            }
            Some(Record::Line(mut l)) => {
                l.t += self.offset;
                Some(self.take(&l))
            }
        }
    }

    fn take(&mut self, l: &Line) -> String {
        let cmd = l.cmd.as_deref().unwrap_or("UNKNOWN");
        let mut latency = None;
        match l.dir {
            Dir::In => {
                let s = self.commands.entry(cmd.to_string()).or_default();
                s.count += 1;
                s.bytes_in += l.size.unwrap_or(0);
                if let Some(id) = l.id {
                    self.pending.entry(id).or_default().push(Pending { t: l.t });
                }
            }
            Dir::Out => {
                // msg_ids may repeat: a reply answers the latest unanswered request of its id.
                let request = l.id.and_then(|id| self.pending.get_mut(&id)?.pop());
                if request.is_none() {
                    self.orphan_replies += 1;
                }
                latency = l.us.or_else(|| request.map(|r| micros(l.t - r.t)));
                let s = self.commands.entry(cmd.to_string()).or_default();
                s.bytes_out += l.size.unwrap_or(0);
                s.latencies.extend(latency);
                if let Some(e) = &l.errno {
                    *s.errors.entry(e.to_string()).or_default() += 1;
                }
            }
            Dir::Event => {
                match l.event.as_deref() {
                    Some("connected") => self.connections += 1,
                    Some("refused") => self.refused += 1,
                    _ => {}
                }
                // A new session (or the end of one) leaves nothing to answer.
                if l.event.as_deref() != Some("refused") {
                    self.close_pending();
                }
            }
            Dir::Note => self.dropped += l.dropped.unwrap_or(0),
        }
        listing(l, latency)
    }

    /// A header: the first sets the clock's origin; a later one (a restarted server appending,
    /// or a rotated file) moves `t` of the lines after it onto that origin.
    fn header(&mut self, start: &str) {
        let Ok(at) = humantime::parse_rfc3339(start) else {
            return;
        };
        match self.first_start {
            None => self.first_start = Some(at),
            Some(first) => {
                self.offset = match at.duration_since(first) {
                    Ok(d) => d.as_secs_f64(),
                    Err(e) => -e.duration().as_secs_f64(),
                };
            }
        }
    }

    fn close_pending(&mut self) {
        self.unanswered += self.pending.values().map(|v| v.len() as u64).sum::<u64>();
        self.pending.clear();
    }

    /// Ends the reading: requests still waiting count as unanswered.
    pub fn finish(&mut self) {
        self.close_pending();
    }
}

fn micros(seconds: f64) -> u64 {
    // A negative or absurd difference (a corrupt line) saturates rather than wrapping.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let us = (seconds * 1e6).round().max(0.0) as u64;
    us
}

/// One line of the listing: time, direction, command, msg_id, key fields, errno, latency.
pub fn listing(l: &Line, latency: Option<u64>) -> String {
    let arrow = match l.dir {
        Dir::In => "->",
        Dir::Out => "<-",
        Dir::Event => "==",
        Dir::Note => "!!",
    };
    let mut s = format!("{:>12.6} {arrow} ", l.t);
    match l.dir {
        Dir::In | Dir::Out => {
            let _ = write!(s, "{:<24}", l.cmd.as_deref().unwrap_or("UNKNOWN"));
            if let Some(id) = l.id {
                let _ = write!(s, " #{id:<5}");
            }
        }
        Dir::Event => {
            let _ = write!(s, "{}", l.event.as_deref().unwrap_or("event"));
        }
        Dir::Note => {
            let _ = write!(
                s,
                "{} lines dropped (the writer fell behind)",
                l.dropped.unwrap_or(0)
            );
        }
    }
    let field = |s: &mut String, name: &str, v: Option<String>| {
        if let Some(v) = v {
            let _ = write!(s, " {name}={v}");
        }
    };
    field(&mut s, "region", l.region.map(|v| v.to_string()));
    field(&mut s, "irq", l.irq.map(|v| v.to_string()));
    field(&mut s, "offset", l.offset.map(|v| format!("{v:#x}")));
    field(&mut s, "count", l.count.map(|v| v.to_string()));
    field(&mut s, "flags", l.flags.map(|v| format!("{v:#x}")));
    field(&mut s, "version", l.version.clone());
    field(&mut s, "size", l.size.map(|v| v.to_string()));
    if l.fds.unwrap_or(0) > 0 {
        field(&mut s, "fds", l.fds.map(|v| v.to_string()));
    }
    field(&mut s, "pid", l.pid.map(|v| v.to_string()));
    field(&mut s, "uid", l.uid.map(|v| v.to_string()));
    field(&mut s, "end", l.end.as_deref().map(str::to_string));
    field(&mut s, "why", l.why.as_deref().map(str::to_string));
    field(&mut s, "error", l.error.clone());
    if let Some(e) = &l.errno {
        let _ = write!(s, "  {e}");
    }
    if l.sent == Some(false) {
        s.push_str("  (no reply)");
    }
    if let Some(us) = latency {
        let _ = write!(s, "  {us} us");
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fed(lines: &[&str]) -> Summary {
        let mut s = Summary::default();
        for l in lines {
            s.feed(l);
        }
        s.finish();
        s
    }

    #[test]
    fn reply_pairs_with_the_latest_unanswered_request_of_its_id() {
        let s = fed(&[
            r#"{"t":1.0,"dir":"in","id":5,"cmd":"REGION_READ","size":32}"#,
            r#"{"t":2.0,"dir":"in","id":5,"cmd":"REGION_READ","size":32}"#,
            r#"{"t":2.5,"dir":"out","id":5,"cmd":"REGION_READ","size":36}"#,
        ]);
        let mut st = s.commands.into_iter().next().unwrap().1;
        // Paired with the request at t=2.0, not the one at 1.0.
        assert_eq!(st.percentiles().unwrap().max, 500_000);
        assert_eq!(st.count, 2);
        assert_eq!(s.unanswered, 1);
    }

    #[test]
    fn a_restarted_server_appending_keeps_the_listing_on_one_clock() {
        let mut s = Summary::default();
        s.feed(r#"{"trace":"vgrace","v":1,"start":"2026-11-26T01:00:00.000000Z"}"#);
        let a = s
            .feed(r#"{"t":1.5,"dir":"in","id":1,"cmd":"VERSION","size":100}"#)
            .unwrap();
        s.feed(r#"{"trace":"vgrace","v":1,"start":"2026-11-26T01:01:00.000000Z"}"#);
        let b = s
            .feed(r#"{"t":0.25,"dir":"in","id":1,"cmd":"VERSION","size":100}"#)
            .unwrap();
        assert!(a.trim_start().starts_with("1.500000"), "{a}");
        assert!(b.trim_start().starts_with("60.250000"), "{b}");
        assert_eq!(s.start.as_deref(), Some("2026-11-26T01:00:00.000000Z"));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut st = CommandStats {
            latencies: (1..=100).rev().collect(),
            ..CommandStats::default()
        };
        let p = st.percentiles().unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50, 90, 99, 100));
    }

    #[test]
    fn malformed_lines_are_counted_not_fatal() {
        let s = fed(&[
            "{not json",
            "[1,2]",
            r#"{"t":"x","dir":"in"}"#,
            "",
            "\u{fffd}",
        ]);
        assert_eq!(s.malformed, 4);
    }

    #[test]
    fn errors_are_counted_by_errno() {
        let s = fed(&[
            r#"{"t":1.0,"dir":"in","id":1,"cmd":"REGION_READ"}"#,
            r#"{"t":1.1,"dir":"out","id":1,"cmd":"REGION_READ","errno":"EINVAL","us":3}"#,
        ]);
        assert_eq!(s.commands["REGION_READ"].errors["EINVAL"], 1);
    }
}
