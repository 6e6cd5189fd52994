//! The trace format: one JSON object per line, described in the [module docs](super). The same
//! types serialize (the writer) and deserialize (readers such as `vgrace trace`), so the format
//! has one definition.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// The trace format's version, in the header line. Readers ignore fields they do not know, so
/// adding a field keeps the version; changing the meaning of one bumps it.
pub const VERSION: u32 = 1;

/// The first line of every trace file (each rotated file starts with one too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The serving program (`vgrace`), as the writer's caller named it: a header line with it
    /// tells a trace from any other JSON lines file.
    pub trace: String,
    /// The format version ([`VERSION`]).
    pub v: u32,
    /// When the trace started (RFC 3339, UTC, microseconds): every line's `t` counts from here.
    pub start: String,
}

/// What a line records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    /// A message from the client.
    In,
    /// The server's reply to it.
    Out,
    /// A connection, disconnection or refusal.
    Event,
    /// A note from the writer itself (lines it had to drop).
    Note,
}

/// One traced message or event. Absent fields are omitted from the JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// Seconds since the header's `start`, to the microsecond.
    pub t: f64,
    /// What the line records.
    pub dir: Dir,
    /// The message's msg_id (`in`, `out`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u16>,
    /// The command's name (`REGION_READ`, `UNKNOWN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Cow<'static, str>>,
    /// Whole message size in bytes, header included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Number of fds that came or went with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fds: Option<u64>,
    /// Region index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<u32>,
    /// IRQ index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub irq: Option<u32>,
    /// Offset in the region, DMA address, or first IRQ vector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Byte count, DMA size, vector count, number of writes, or migration bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The command's own flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<u32>,
    /// VERSION: the client's `major.minor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `out` only: the errno of an error reply (`EINVAL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<Cow<'static, str>>,
    /// `out` only: microseconds from the request's arrival to the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub us: Option<u64>,
    /// `out` only, and only `false`: a No_reply message, nothing went back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<bool>,
    /// `event`: `connected`, `disconnected` or `refused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Cow<'static, str>>,
    /// `event`: the client's pid, when the kernel knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// `event`: the client's uid, when the kernel knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// `disconnected`: how the session ended (`Closed`, `Desync`, `Shutdown`, `Stalled`,
    /// `Dropped`, or `Error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Cow<'static, str>>,
    /// `disconnected` with `end` `Error`: the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `refused`: why (`busy`, `queue-full`, `not-allowed`, `control`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<Cow<'static, str>>,
    /// `note`: how many messages and events were not traced because the writer fell behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
}

impl Line {
    /// A line with only the time and direction set.
    pub(crate) fn new(t: f64, dir: Dir) -> Self {
        Self {
            t,
            dir,
            id: None,
            cmd: None,
            size: None,
            fds: None,
            region: None,
            irq: None,
            offset: None,
            count: None,
            flags: None,
            version: None,
            errno: None,
            us: None,
            sent: None,
            event: None,
            pid: None,
            uid: None,
            end: None,
            error: None,
            why: None,
            dropped: None,
        }
    }
}

/// One line of a trace file, as a reader sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// The header line.
    Header(Header),
    /// A message, event or note (boxed: it is much larger than a header).
    Line(Box<Line>),
}

/// Parses one line of a trace file (without its newline); `None` when it is neither a header
/// nor a trace line (a reader counts those rather than failing).
pub fn parse(text: &str) -> Option<Record> {
    if let Ok(line) = serde_json::from_str::<Line>(text) {
        return Some(Record::Line(Box::new(line)));
    }
    match serde_json::from_str::<Header>(text) {
        Ok(h) if !h.trace.is_empty() => Some(Record::Header(h)),
        _ => None,
    }
}
