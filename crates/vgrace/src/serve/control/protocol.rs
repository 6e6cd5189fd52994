//! The control protocol, version 1: JSON lines over a unix socket. A client writes one request
//! object per line and reads one response object per line, in order:
//!
//! ```text
//! > {"v":1,"id":7,"op":"fault","device":"gpu0","fault":"link-down"}
//! < {"v":1,"id":7,"ok":true,"faults":["link-down"]}
//! > {"v":1,"op":"peek","device":"gpu0","region":0,"offset":5272,"count":4}
//! < {"v":1,"ok":true,"data":"00000000","count":4}
//! > {"v":1,"op":"nope"}
//! < {"v":1,"ok":false,"error":{"message":"unknown op \"nope\": status, stats, fault, peek, poke, reset, events"}}
//! ```
//!
//! Every request has `v` (1) and `op`; `id` (any JSON value) is echoed. `device` names a device
//! by id (`gpu0`) or socket path; it may be left out when the process serves one device, and
//! for `status`, `stats` and `events`, which then cover every device. Numbers are JSON
//! integers; bytes are hex strings. Ops and their fields:
//!
//! | op | fields | answer |
//! |---|---|---|
//! | `status` | | `pid`, `uptime_s`, `log_lines_dropped`, `devices`: id, socket, profile, device_id, linux, mem_size, backing, readiness, faults, client {pid, uid, since}, uptime_s |
//! | `stats` | | `devices`: id, clients_served/refused/dropped, resets, commands [{cmd, count, errors {ERRNO: n}, bytes_in, bytes_out}], last_error |
//! | `fault` | `fault`, `clear`, `quiet` (link-down without the error interrupt), `ms`, `count`, `region`, `offset` | `faults`: what is in force now; `error_interrupt` for link-down |
//! | `peek` | `region`, `offset`, `count` (at most 1 MiB) | `data`, `count` |
//! | `poke` | `region`, `offset`, `data` (at most 1 MiB) | `written` |
//! | `reset` | | |
//! | `events` | `follow` | `events` (the last 256); with `follow`, `{"ok":true}` then one `{"v":1,"event":{...}}` line per event until the client closes |
//!
//! Faults ([`Fault`], which `vgrace ctl fault` takes too): `link-down`, `hbm-lost`, `never-ready` (from the next reset), `ready-delay` (`ms`,
//! the next reset), `poison` (`region`, `offset`; Linux 6.19+), `delay-replies` (`ms`,
//! optional `count`), `drop-client`, `refuse-next` (optional `count`, default 1), and with
//! `clear` also `all`. A failed request answers `{"ok":false,"error":{"message":...}}` and the
//! connection stays usable.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The protocol version this server speaks.
pub const VERSION: u64 = 1;
/// Longest request line; a longer one is answered with an error and skipped.
pub const MAX_LINE: usize = 4 << 20;
/// Most bytes one peek or poke moves (`vgrace ctl` splits larger ones).
pub const MAX_BYTES: u64 = 1 << 20;

/// One request line as the wire has it: the fields of every op. Parsing through it first keeps
/// the replies to bad lines what they are (an unknown field, a wrong type, a missing `v`) and
/// lets a field of another op pass, as it always has; [`Request`] then takes the op's own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read only to check the line
struct Wire {
    v: u64,
    /// Echoed in the response ([`parse`] takes it out first, so even a bad request echoes it).
    #[serde(rename = "id", default)]
    _id: Option<serde::de::IgnoredAny>,
    op: String,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    fault: Option<String>,
    #[serde(default)]
    clear: bool,
    #[serde(default)]
    quiet: bool,
    #[serde(default)]
    ms: Option<u64>,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    region: Option<u32>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    follow: bool,
}

/// One request: the op (`"op"` on the wire) and its fields. A field the server reports missing
/// by name (`peek needs "count"`) is an `Option` here, so the reply can say which.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// The devices, their readiness, faults and client.
    Status {
        /// Which device (all when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
    },
    /// Per-command counters.
    Stats {
        /// Which device (all when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
    },
    /// Apply or clear a fault.
    Fault {
        /// Which device (may be left out when the process serves one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        /// The fault and its settings.
        #[serde(flatten)]
        fault: FaultRequest,
    },
    /// Read from a region.
    Peek {
        /// Which device (may be left out when the process serves one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        /// Where.
        #[serde(flatten)]
        at: At,
        /// How many bytes (1 to [`MAX_BYTES`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<u64>,
    },
    /// Write to a region.
    Poke {
        /// Which device (may be left out when the process serves one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        /// Where.
        #[serde(flatten)]
        at: At,
        /// The bytes, as hex (1 to [`MAX_BYTES`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<String>,
    },
    /// Reset the device, as `VFIO_DEVICE_RESET` does.
    Reset {
        /// Which device (may be left out when the process serves one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
    },
    /// The recent events, or (`follow`) a stream of new ones.
    Events {
        /// Which device (all when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        /// Keep streaming.
        #[serde(default, skip_serializing_if = "is_false")]
        follow: bool,
    },
}

/// The ops, for the reply to an unknown one.
pub const OPS: &str = "status, stats, fault, peek, poke, reset, events";

impl Request {
    /// The device the request names, if it names one.
    pub fn device(&self) -> Option<&str> {
        match self {
            Request::Status { device }
            | Request::Stats { device }
            | Request::Fault { device, .. }
            | Request::Peek { device, .. }
            | Request::Poke { device, .. }
            | Request::Reset { device }
            | Request::Events { device, .. } => device.as_deref(),
        }
    }

    /// The request as one line, without its newline.
    pub fn to_line(&self) -> String {
        #[derive(Serialize)]
        struct Line<'a> {
            v: u64,
            #[serde(flatten)]
            request: &'a Request,
        }
        serde_json::to_string(&Line {
            v: VERSION,
            request: self,
        })
        .unwrap_or_default()
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Where a peek or poke acts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct At {
    /// The VFIO region index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<u32>,
    /// The offset in the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// The fields of a `fault` request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRequest {
    /// Which fault, by name ([`Fault`]; kept as written so an unknown one is named back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// Clear it instead of applying it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub clear: bool,
    /// `link-down`: leave the client's error interrupt quiet (by default the link going down is
    /// reported as the fatal PCIe error it is; QEMU stops the guest on it).
    #[serde(default, skip_serializing_if = "is_false")]
    pub quiet: bool,
    /// `ready-delay`, `delay-replies`: milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
    /// `delay-replies`, `refuse-next`: how many times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// `poison`: the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<u32>,
    /// `poison`: the offset in the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// The faults the control plane injects: the `fault` field of a request, `vgrace ctl fault`'s
/// argument, and the list in the docs above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// The C2C link goes down: memory reads all ones, the error interrupt fires.
    LinkDown,
    /// The device memory is lost: memory reads all ones.
    HbmLost,
    /// The device never reads ready, from the next reset.
    NeverReady,
    /// The next reset takes `ms` to read ready.
    ReadyDelay,
    /// A poisoned page at `region`, `offset` (Linux 6.19+).
    Poison,
    /// Replies wait `ms` (optionally only the next `count`).
    DelayReplies,
    /// The attached client is disconnected.
    DropClient,
    /// The next `count` connections (default 1) are refused.
    RefuseNext,
    /// Every fault (with `clear` only).
    All,
}

impl Fault {
    /// Its name on the wire and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fault::LinkDown => "link-down",
            Fault::HbmLost => "hbm-lost",
            Fault::NeverReady => "never-ready",
            Fault::ReadyDelay => "ready-delay",
            Fault::Poison => "poison",
            Fault::DelayReplies => "delay-replies",
            Fault::DropClient => "drop-client",
            Fault::RefuseNext => "refuse-next",
            Fault::All => "all",
        }
    }

    /// The fault named `name`, or the reply that lists them.
    pub fn parse(name: &str) -> Result<Self, Failure> {
        <Fault as clap::ValueEnum>::value_variants()
            .iter()
            .copied()
            .find(|f| f.name() == name)
            .ok_or_else(|| Failure(format!("unknown fault {name:?}: {}", Fault::list())))
    }

    /// Every fault's name, for messages: `link-down, ..., refuse-next (and all, with clear)`.
    pub fn list() -> String {
        let names: Vec<&str> = <Fault as clap::ValueEnum>::value_variants()
            .iter()
            .filter(|f| **f != Fault::All)
            .map(|f| f.name())
            .collect();
        format!("{} (and all, with clear)", names.join(", "))
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A request that failed: the message for the error object.
#[derive(Debug)]
pub struct Failure(pub String);

impl<T: std::fmt::Display> From<T> for Failure {
    fn from(e: T) -> Self {
        Failure(e.to_string())
    }
}

/// Parses one line; the id is returned even when the rest is wrong, so the error echoes it.
/// A key given twice is refused (serde_json would silently keep the last: `{"op":"status",
/// "op":"reset"}` would reset).
pub fn parse(line: &[u8]) -> (Option<Value>, Result<Request, Failure>) {
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return (None, Err(Failure(format!("not a JSON object: {e}")))),
    };
    let id = value.get("id").cloned();
    if let Err(e) = serde_json::from_slice::<UniqueKeys>(line) {
        return (id, Err(Failure(format!("bad request: {e}"))));
    }
    let request = match serde_json::from_value::<Wire>(value.clone()) {
        Ok(w) if w.v != VERSION => Err(Failure(format!(
            "protocol version {} is not spoken here (version {VERSION} is)",
            w.v
        ))),
        Ok(w) if !OPS.split(", ").any(|op| op == w.op) => {
            Err(Failure(format!("unknown op {:?}: {OPS}", w.op)))
        }
        Ok(_) => serde_json::from_value::<Request>(value)
            .map_err(|e| Failure(format!("bad request: {e}"))),
        Err(e) => Err(Failure(format!("bad request: {e}"))),
    };
    (id, request)
}

/// Deserializes any JSON value, failing on an object that names a key twice (at any depth).
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
}

/// A success response with the fields of `body` (an object).
pub fn ok(id: Option<Value>, body: Value) -> Value {
    let mut out = head(id);
    out.insert("ok".into(), json!(true));
    if let Value::Object(b) = body {
        out.extend(b);
    }
    Value::Object(out)
}

/// An error response.
pub fn error(id: Option<Value>, message: &str) -> Value {
    let mut out = head(id);
    out.insert("ok".into(), json!(false));
    out.insert("error".into(), json!({ "message": message }));
    Value::Object(out)
}

fn head(id: Option<Value>) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("v".into(), json!(VERSION));
    if let Some(id) = id {
        out.insert("id".into(), id);
    }
    out
}

/// Bytes as lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Hex (upper or lower case, even length) as bytes.
pub fn from_hex(text: &str) -> Result<Vec<u8>, Failure> {
    if !text.len().is_multiple_of(2) {
        return Err(Failure("data: odd number of hex digits".into()));
    }
    let digit = |c: u8| char::from(c).to_digit(16);
    text.as_bytes()
        .chunks_exact(2)
        .enumerate()
        .map(|(i, pair)| match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => Ok((hi * 16 + lo) as u8),
            _ => Err(Failure(format!("data: not hex at character {}", i * 2))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn id_is_echoed_even_for_a_bad_request() {
        let (id, r) = parse(br#"{"v":1,"id":"x","op":"status","bogus":1}"#);
        assert_eq!(id, Some(json!("x")));
        assert!(r.unwrap_err().0.contains("unknown field"));
    }

    #[test]
    fn a_key_given_twice_is_refused_at_any_depth() {
        let (_, r) = parse(br#"{"v":1,"op":"status","op":"reset"}"#);
        assert!(r.unwrap_err().0.contains("duplicate key \"op\""));
        let (id, r) = parse(br#"{"v":1,"id":{"a":1,"a":2},"op":"status"}"#);
        assert!(id.is_some());
        assert!(r.unwrap_err().0.contains("duplicate key \"a\""));
        let (_, r) = parse(br#"{"v":1,"op":"status","id":[{"k":1},{"k":2}]}"#);
        assert!(r.is_ok());
    }

    #[test]
    fn other_versions_are_refused() {
        let (_, r) = parse(br#"{"v":2,"op":"status"}"#);
        assert!(r.unwrap_err().0.contains("version 2"));
    }

    proptest::proptest! {
        /// Whatever a control client sends, parsing answers (a request or a message) and never
        /// panics; numbers anywhere in u64 come through exactly.
        #[test]
        fn any_line_parses_or_is_refused(line in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse(&line);
        }

        #[test]
        fn any_json_object_parses_or_is_refused(
            op in "(peek|[a-z]{0,8})",
            device in proptest::option::of("[a-z0-9]{0,6}"),
            offset in proptest::prelude::any::<u64>(),
            count in proptest::prelude::any::<u64>(),
            region in proptest::prelude::any::<u32>(),
        ) {
            let line = json!({"v": 1, "op": op, "device": device, "offset": offset, "count": count, "region": region}).to_string();
            let (_, r) = parse(line.as_bytes());
            match r {
                Ok(Request::Peek { at, count: c, .. }) => {
                    proptest::prop_assert_eq!(at, At { region: Some(region), offset: Some(offset) });
                    proptest::prop_assert_eq!(c, Some(count));
                }
                Ok(r) => proptest::prop_assert!(OPS.contains(&op) && op != "peek", "{r:?}"),
                Err(f) => proptest::prop_assert!(f.0.starts_with("unknown op"), "{}", f.0),
            }
        }

        #[test]
        fn hex_of_any_bytes_round_trips(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            proptest::prop_assert_eq!(from_hex(&to_hex(&bytes)).unwrap(), bytes);
        }
    }

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        assert_eq!(
            from_hex(&to_hex(&[0, 0xab, 0xff])).unwrap(),
            vec![0, 0xab, 0xff]
        );
        assert!(from_hex("abc").is_err());
        assert!(from_hex("zz").is_err());
        assert!(from_hex("é0").is_err());
    }
}
