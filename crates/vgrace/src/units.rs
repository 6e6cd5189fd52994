//! Human-readable sizes for the layout and logs.

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

#[cfg(test)]
mod tests {
    use super::human;

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
}
