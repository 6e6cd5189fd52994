//! Human renderings of control responses.

use std::fmt::Write;

use serde_json::Value;

use crate::units::human;

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `items` joined with ", ", or `empty` when there are none.
fn joined(items: &[String], empty: &str) -> String {
    if items.is_empty() {
        empty.to_string()
    } else {
        items.join(", ")
    }
}

/// The fault list of a `status` device or a `fault` answer, joined ("none" when empty).
fn fault_list(v: &Value) -> String {
    let items: Vec<String> = v["faults"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect();
    joined(&items, "none")
}

/// `status`.
pub fn status(v: &Value) -> String {
    let mut out = format!("vgrace pid {} up {} s\n", s(&v["pid"]), s(&v["uptime_s"]));
    for d in v["devices"].as_array().into_iter().flatten() {
        // Sizes as the log line "serving ..." gives them (96 GiB); --json keeps the bytes.
        let memory = match (d["core_only"].as_str(), d["mem_size"].as_u64()) {
            (Some(why), _) => format!("a plain vfio-pci function without memory regions ({why})"),
            (None, Some(size)) => format!("{} of {} memory", human(size), s(&d["backing"])),
            (None, None) => format!("{} memory", s(&d["backing"])),
        };
        let _ = writeln!(
            out,
            "{}  {}  {} 10de:{} as Linux {}, {memory}",
            s(&d["id"]),
            s(&d["socket"]),
            s(&d["profile"]),
            s(&d["device_id"]).trim_start_matches("0x"),
            s(&d["linux"]),
        );
        let _ = writeln!(out, "  readiness: {}", s(&d["readiness"]));
        let _ = writeln!(out, "  faults:    {}", fault_list(d));
        let client = &d["client"];
        if client.is_null() {
            let _ = writeln!(out, "  client:    none");
        } else {
            let _ = writeln!(
                out,
                "  client:    pid {} uid {} since {} ({} s)",
                s(&client["pid"]),
                s(&client["uid"]),
                s(&client["since"]),
                s(&client["for_s"])
            );
        }
        let _ = writeln!(out, "  uptime:    {} s", s(&d["uptime_s"]));
    }
    out
}

/// `stats`.
pub fn stats(v: &Value) -> String {
    let mut out = String::new();
    for d in v["devices"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{}: {} clients served, {} refused, {} dropped, {} resets",
            s(&d["id"]),
            s(&d["clients_served"]),
            s(&d["clients_refused"]),
            s(&d["clients_dropped"]),
            s(&d["resets"])
        );
        let _ = writeln!(
            out,
            "  {:<26} {:>10} {:>12} {:>12}  errors",
            "command", "count", "bytes in", "bytes out"
        );
        for c in d["commands"].as_array().into_iter().flatten() {
            let errors: Vec<String> = c["errors"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(e, n)| format!("{e} x{}", s(n)))
                .collect();
            let _ = writeln!(
                out,
                "  {:<26} {:>10} {:>12} {:>12}  {}",
                s(&c["cmd"]),
                s(&c["count"]),
                s(&c["bytes_in"]),
                s(&c["bytes_out"]),
                joined(&errors, "-")
            );
        }
        let e = &d["last_error"];
        if !e.is_null() {
            let _ = writeln!(
                out,
                "  last error: {} {} (msg_id {}) at {}",
                s(&e["cmd"]),
                s(&e["errno"]),
                s(&e["msg_id"]),
                s(&e["time"])
            );
        }
    }
    out
}

/// `fault`.
pub fn faults(v: &Value) -> String {
    let mut out = String::new();
    if let Some(d) = v.get("dropped") {
        let _ = writeln!(out, "dropped the client (pid {})", s(&d["pid"]));
    }
    if let Some(n) = v.get("healed") {
        let _ = writeln!(out, "healed {} poisoned pages", s(n));
    }
    let _ = writeln!(out, "faults in force: {}", fault_list(v));
    out
}

/// One event: time, device, kind, then the other fields as key=value.
pub fn event(e: &Value) -> String {
    let mut out = format!("{} {} {}", s(&e["time"]), s(&e["device"]), s(&e["kind"]));
    for (k, v) in e.as_object().into_iter().flatten() {
        if !matches!(k.as_str(), "time" | "device" | "kind") && !v.is_null() {
            let _ = write!(out, " {k}={}", s(v));
        }
    }
    out.push('\n');
    out
}

/// 16 bytes per line: offset, hex, ASCII.
pub fn hexdump(base: u64, bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        let _ = write!(out, "{:016x}  ", base + i as u64 * 16);
        for j in 0..16 {
            match line.get(j) {
                Some(b) => {
                    let _ = write!(out, "{b:02x} ");
                }
                None => out.push_str("   "),
            }
        }
        out.push(' ');
        out.extend(line.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        }));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_prints_sizes_in_binary_units() {
        let v = serde_json::json!({"pid": 1, "uptime_s": 2, "devices": [
            {"id": "gpu0", "socket": "/s", "profile": "gh100", "device_id": "0x2342",
             "linux": "7.2", "mem_size": 103_079_215_104u64, "backing": "memfd",
             "core_only": null},
            {"id": "gpu1", "socket": "/t", "profile": "gh100", "device_id": "0x2342",
             "linux": "7.2", "mem_size": 0, "backing": "memfd", "core_only": "the C2C link is down"}]});
        let text = status(&v);
        assert!(
            text.contains("as Linux 7.2, 96 GiB of memfd memory\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "a plain vfio-pci function without memory regions (the C2C link is down)"
            ),
            "{text}"
        );
    }

    #[test]
    fn hexdump_shows_offsets_hex_and_text() {
        let d = hexdump(0x10, b"GRACE\xff");
        assert_eq!(
            d,
            "0000000000000010  47 52 41 43 45 ff                                GRACE.\n"
        );
    }
}
