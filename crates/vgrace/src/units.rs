//! Units: human-readable sizes for the layout and logs, and the parsers of numbers and durations
//! that every verb's flags and the config file share.

use std::time::Duration;

const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];

/// Formats a byte count with the largest binary unit, exact when it divides evenly
/// (`95 GiB`), else with two decimals (`1.30 GiB`).
pub fn human(bytes: u64) -> String {
    for (name, shift) in UNITS {
        let unit = 1u64 << shift;
        if bytes >= unit {
            if bytes.is_multiple_of(unit) {
                return format!("{} {name}", bytes >> shift);
            }
            // Precision loss only affects the printed decimals.
            #[allow(clippy::cast_precision_loss)]
            let value = bytes as f64 / unit as f64;
            return format!("{value:.2} {name}");
        }
    }
    format!("{bytes} B")
}

/// Parses a decimal or 0x-prefixed hexadecimal u64.
pub fn parse_u64(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => t.replace('_', "").parse::<u64>(),
    };
    parsed.map_err(|_| format!("`{s}` is not a number (decimal or 0x-hex)"))
}

/// Parses a decimal or 0x-prefixed hexadecimal u16.
pub fn parse_u16(s: &str) -> Result<u16, String> {
    let v = parse_u64(s)?;
    u16::try_from(v).map_err(|_| format!("`{s}` does not fit in 16 bits"))
}

/// Longest duration any flag or config key takes: a day is past any wait worth simulating, and
/// the bound keeps every deadline (`now + duration`) far from overflow (2^64-1 s panicked).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Parses a duration such as `2s`, `500ms`, `1m` or a bare `0`, at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration ({e})"))?;
    if d > MAX_DURATION {
        return Err(format!(
            "`{s}` is longer than a day (24h), the longest duration taken"
        ));
    }
    Ok(d)
}

/// Parses a socket mode: octal digits (`660`, `0660`, `0o660`), owner and group bits only (a
/// socket anyone on the host can connect to would let them drive the device).
pub fn parse_socket_mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    let mode = u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("`{s}` is not an octal mode such as 0660"))?;
    if mode & 0o007 != 0 {
        return Err(format!(
            "mode `{s}` gives others access to the socket: use a group (--socket-group) instead"
        ));
    }
    if mode & 0o600 != 0o600 {
        return Err(format!(
            "mode `{s}` must let the owner read and write (0600 at least)"
        ));
    }
    Ok(mode)
}

/// QEMU's size syntax for a byte count (exact: the largest unit that divides it).
pub fn qemu_size(bytes: u64) -> String {
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn exact_units_print_without_decimals() {
        assert_eq!(human(95 << 30), "95 GiB");
    }

    #[test]
    fn fractional_sizes_print_two_decimals() {
        assert_eq!(human(3_543_348_019), "3.30 GiB");
    }

    #[test]
    fn small_sizes_print_bytes() {
        assert_eq!(human(100), "100 B");
    }

    #[test]
    fn hex_and_decimal_numbers_parse() {
        assert_eq!(parse_u64("0x400000000000").unwrap(), 0x4000_0000_0000);
        assert_eq!(parse_u64("4096").unwrap(), 4096);
    }

    #[test]
    fn device_id_over_16_bits_is_refused() {
        assert!(parse_u16("0x12345").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("24h").unwrap(), MAX_DURATION);
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn durations_past_a_day_are_refused_not_overflowed() {
        for s in ["18446744073709551615s", "25h", "1y"] {
            let e = parse_duration(s).unwrap_err();
            assert!(
                e.contains("longer than a day") || e.contains("not a duration"),
                "{e}"
            );
        }
    }
}
