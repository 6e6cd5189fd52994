//! The control ops: each takes a parsed request and returns the response object.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use std::sync::MutexGuard;
use vfu::Device;

use vgrace_device::{LinuxVersion, NvGraceGpu};

use super::events::rfc3339;
use super::events::EventKind;
use super::protocol::{
    self, from_hex, to_hex, At, Failure, Fault, FaultRequest, Request, MAX_BYTES,
};
use super::{Managed, Plane};

/// Answers one request (every op but a following `events`).
pub fn handle(plane: &Plane, id: Option<Value>, r: &Request) -> Value {
    let device = r.device();
    let result = match r {
        Request::Status { .. } => status(plane, device),
        Request::Stats { .. } => stats(plane, device),
        Request::Fault { fault: f, .. } => one(plane, device).and_then(|m| fault(m, f)),
        Request::Peek { at, count, .. } => one(plane, device).and_then(|m| peek(m, *at, *count)),
        Request::Poke { at, data, .. } => {
            one(plane, device).and_then(|m| poke(m, *at, data.as_deref()))
        }
        Request::Reset { .. } => one(plane, device).and_then(reset),
        Request::Events { .. } => events(plane, device),
    };
    match result {
        Ok(body) => protocol::ok(id, body),
        Err(f) => protocol::error(id, &f.0),
    }
}

/// The device named `name`: by id, or by socket path as configured or absolute.
pub fn find<'a>(plane: &'a Plane, name: &str) -> Result<&'a Managed, Failure> {
    let by_path = |m: &Managed| {
        m.socket.as_os_str() == name
            || std::path::absolute(&m.socket).is_ok_and(|p| p.as_os_str() == name)
    };
    plane
        .devices
        .iter()
        .find(|m| m.id == name)
        .or_else(|| plane.devices.iter().find(|m| by_path(m)))
        .ok_or_else(|| Failure(format!("no device {name:?}; devices: {}", ids(plane))))
}

fn ids(plane: &Plane) -> String {
    plane
        .devices
        .iter()
        .map(|m| m.id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The one device a request is about.
fn one<'a>(plane: &'a Plane, device: Option<&str>) -> Result<&'a Managed, Failure> {
    match (device, plane.devices.as_slice()) {
        (Some(name), _) => find(plane, name),
        (None, [only]) => Ok(only),
        (None, _) => Err(Failure(format!(
            "this process serves several devices: name one with \"device\" ({})",
            ids(plane)
        ))),
    }
}

/// The devices a request is about: the named one, or all.
fn some<'a>(plane: &'a Plane, device: Option<&str>) -> Result<Vec<&'a Managed>, Failure> {
    match device {
        Some(name) => Ok(vec![find(plane, name)?]),
        None => Ok(plane.devices.iter().collect()),
    }
}

fn status(plane: &Plane, device: Option<&str>) -> Result<Value, Failure> {
    let devices: Vec<Value> = some(plane, device)?
        .into_iter()
        .map(|m| {
            let (layout, readiness) = match m.lock_device() {
                Some(d) => (Some(d.layout().clone()), d.readiness_state().to_string()),
                None => (None, "unknown (a client request holds the device)".into()),
            };
            let client = m.controls.client().map(|c| {
                json!({
                    "pid": c.peer.pid,
                    "uid": c.peer.uid,
                    "since": rfc3339(c.since),
                    "for_s": SystemTime::now().duration_since(c.since).unwrap_or_default().as_secs(),
                })
            });
            let mut v = json!({
                "id": m.id,
                "socket": m.socket,
                "backing": m.backing,
                "readiness": readiness,
                "faults": faults(m),
                "client": client,
                "uptime_s": m.started.elapsed().as_secs(),
            });
            if let Some(l) = layout {
                v["profile"] = json!(l.profile.to_string());
                v["device_id"] = json!(format!("{:#06x}", l.device_id));
                v["linux"] = json!(l.linux.to_string());
                v["mem_size"] = json!(l.mem_size);
                v["core_only"] = json!(l.core_only.map(|c| c.to_string()));
            }
            v
        })
        .collect();
    Ok(json!({
        "pid": std::process::id(),
        "uptime_s": plane.started.elapsed().as_secs(),
        "log_lines_dropped": crate::logging::dropped(),
        "devices": devices,
    }))
}

/// The recent events, of the named device only when the request names one.
fn events(plane: &Plane, device: Option<&str>) -> Result<Value, Failure> {
    let only = device.map(|d| find(plane, d)).transpose()?;
    let events: Vec<Value> = plane
        .events
        .recent()
        .into_iter()
        .filter(|e| only.is_none_or(|m| e["device"] == m.id.as_str()))
        .collect();
    Ok(json!({ "events": events }))
}

fn stats(plane: &Plane, device: Option<&str>) -> Result<Value, Failure> {
    let devices: Vec<Value> = some(plane, device)?
        .into_iter()
        .map(|m| {
            let mut v = m.stats.to_json();
            v["id"] = json!(m.id);
            v
        })
        .collect();
    Ok(json!({ "devices": devices }))
}

/// Every fault in force on `m`, device and protocol alike.
fn faults(m: &Managed) -> Vec<String> {
    let mut out = m.live.describe();
    if let Some(d) = m.controls.reply_delay() {
        out.push(match d.remaining {
            Some(n) => format!("delay-replies {}ms x{n}", d.by.as_millis()),
            None => format!("delay-replies {}ms", d.by.as_millis()),
        });
    }
    let refusals = m.controls.refusals_pending();
    if refusals > 0 {
        out.push(format!("refuse-next x{refusals}"));
    }
    out
}

fn need<T: Copy>(v: Option<T>, what: &str, fault: &str) -> Result<T, Failure> {
    v.ok_or_else(|| Failure(format!("fault {fault} needs \"{what}\"")))
}

/// Longest delay a fault may ask for: a day is past any VMM's patience, and a bound keeps
/// deadline arithmetic far from overflow.
const MAX_DELAY_MS: u64 = 24 * 3600 * 1000;

/// `ms` as a delay, refused past [`MAX_DELAY_MS`].
fn delay(r: &FaultRequest, fault: &str) -> Result<Duration, Failure> {
    let ms = need(r.ms, "ms", fault)?;
    if ms > MAX_DELAY_MS {
        return Err(Failure(format!("ms {ms}: at most {MAX_DELAY_MS} (a day)")));
    }
    Ok(Duration::from_millis(ms))
}

fn fault(m: &Managed, r: &FaultRequest) -> Result<Value, Failure> {
    let name = r
        .fault
        .as_deref()
        .ok_or_else(|| Failure(format!("fault needs \"fault\": one of {}", Fault::list())))?;
    let kind = Fault::parse(name)?;
    let on = !r.clear;
    let extra = apply(m, kind, on, r)?;
    m.events.publish(
        &m.id,
        EventKind::Fault {
            fault: kind,
            action: if on { "applied" } else { "cleared" },
            ms: r.ms,
            count: r.count,
            region: r.region,
            offset: r.offset,
        },
    );
    let mut body = json!({ "faults": faults(m) });
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    Ok(body)
}

/// Applies (`on`) or clears fault `kind`; what the reply adds to the faults in force.
fn apply(m: &Managed, kind: Fault, on: bool, r: &FaultRequest) -> Result<Value, Failure> {
    let name = kind.name();
    let mut extra = json!({});
    match kind {
        Fault::LinkDown => {
            m.live.set_link_down(on);
            if on && !r.quiet {
                // The link going down is a fatal PCIe error: the kernel signals the client's
                // error eventfd (`vfio_pci_core_aer_err_detected`). A device a client request
                // holds is not waited for: the fault itself is set either way.
                let signalled = m.lock_device().is_some_and(|mut d| d.report_error());
                extra = json!({ "error_interrupt": signalled });
            }
        }
        Fault::HbmLost => m.live.set_hbm_lost(on),
        Fault::NeverReady => m.live.set_never_ready(on),
        Fault::ReadyDelay if on => m.live.set_next_reset_delay(Some(delay(r, name)?)),
        Fault::ReadyDelay => m.live.set_next_reset_delay(None),
        Fault::Poison if on => {
            let (region, offset) = (
                need(r.region, "region", name)?,
                need(r.offset, "offset", name)?,
            );
            check_poison(m, region, offset)?;
            m.live.poison(region, offset)?;
        }
        Fault::Poison => {
            let at = r.region.zip(r.offset);
            extra = json!({ "healed": m.live.unpoison(at) });
        }
        Fault::DelayReplies if on => m.controls.delay_replies(delay(r, name)?, r.count),
        Fault::DelayReplies => {
            m.controls.clear_delay();
        }
        Fault::DropClient if on => {
            let peer = m
                .controls
                .drop_client()
                .ok_or_else(|| Failure("no client is attached".into()))?;
            m.stats.dropped();
            extra = json!({ "dropped": { "pid": peer.pid, "uid": peer.uid } });
        }
        Fault::RefuseNext => {
            let n = if on { r.count.unwrap_or(1) } else { 0 };
            m.controls.refuse_next(u32::try_from(n).unwrap_or(u32::MAX));
        }
        Fault::All if !on => {
            m.live.clear_all();
            m.controls.clear_delay();
            m.controls.refuse_next(0);
        }
        Fault::DropClient | Fault::All => {
            return Err(Failure(format!(
                "fault {name} cannot be {}",
                if on { "applied" } else { "cleared" }
            )))
        }
    }
    Ok(extra)
}

/// Poison lands only in device memory, and only where the driver handles it (6.19+).
fn check_poison(m: &Managed, region: u32, offset: u64) -> Result<(), Failure> {
    let device = device(m)?;
    let layout = device.layout();
    if layout.linux < LinuxVersion::V6_19 {
        return Err(Failure(format!(
            "poison handling arrived in Linux 6.19; this device behaves as {}",
            layout.linux
        )));
    }
    match layout.region(region) {
        Some(r) if offset < r.memlength => Ok(()),
        Some(r) => Err(Failure(format!(
            "offset {offset:#x} is past region {region}'s {:#x} bytes of memory",
            r.memlength
        ))),
        None => Err(Failure(format!("region {region} holds no device memory"))),
    }
}

/// The device for one bounded access, or "busy" when a client request holds it too long.
fn device(m: &Managed) -> Result<MutexGuard<'_, NvGraceGpu>, Failure> {
    m.lock_device()
        .ok_or_else(|| Failure("the device is busy; try again".into()))
}

/// A peek or poke the device refused.
fn access_failed(region: u32, offset: u64, e: vfu::Errno) -> Failure {
    Failure(format!(
        "region {region} offset {offset:#x}: {e} ({})",
        e.desc()
    ))
}

fn region_and_offset(r: At) -> Result<(u32, u64), Failure> {
    let region = r.region.ok_or_else(|| {
        Failure("needs \"region\" (a VFIO region index: 0-5 BARs, 7 config)".into())
    })?;
    if region >= vfu::device::PCI_NUM_REGIONS {
        return Err(Failure(format!(
            "region {region}: a PCI device has regions 0 to 8"
        )));
    }
    Ok((
        region,
        r.offset.ok_or_else(|| Failure("needs \"offset\"".into()))?,
    ))
}

fn peek(m: &Managed, at: At, count: Option<u64>) -> Result<Value, Failure> {
    let (region, offset) = region_and_offset(at)?;
    let count = count.ok_or_else(|| Failure("peek needs \"count\"".into()))?;
    if count == 0 || count > MAX_BYTES {
        return Err(Failure(format!(
            "count {count}: 1 to {MAX_BYTES} bytes per request"
        )));
    }
    let mut buf = vec![0u8; count as usize];
    let n = device(m)?
        .backdoor_read(region, offset, &mut buf)
        .map_err(|e| access_failed(region, offset, e))?;
    buf.truncate(n);
    Ok(json!({ "data": to_hex(&buf), "count": n }))
}

fn poke(m: &Managed, at: At, data: Option<&str>) -> Result<Value, Failure> {
    let (region, offset) = region_and_offset(at)?;
    let data = from_hex(data.ok_or_else(|| Failure("poke needs \"data\" (hex)".into()))?)?;
    if data.is_empty() || data.len() as u64 > MAX_BYTES {
        return Err(Failure(format!(
            "{} bytes: 1 to {MAX_BYTES} bytes per request",
            data.len()
        )));
    }
    let n = device(m)?
        .backdoor_write(region, offset, &data)
        .map_err(|e| access_failed(region, offset, e))?;
    Ok(json!({ "written": n }))
}

fn reset(m: &Managed) -> Result<Value, Failure> {
    // The guard is a temporary: the device is free again before the event goes out.
    device(m)?
        .reset()
        .map_err(|e| Failure(format!("reset failed: {e}")))?;
    m.stats.reset();
    m.events.publish(&m.id, EventKind::Reset { by: "control" });
    Ok(json!({}))
}
