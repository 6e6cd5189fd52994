//! `vgrace layout`: the device as a person wants to see it.

use std::fmt::Write as _;
use std::io::Write;

use anyhow::Result;
use vgrace_device::Layout;

use crate::cli::LayoutArgs;
use crate::units::human;

/// Width of the memory diagram in characters.
const DIAGRAM_WIDTH: u64 = 64;

/// Prints the layout (table and diagram, or JSON).
pub fn run(args: &LayoutArgs) -> Result<()> {
    let mut out = crate::out::stdout();
    if let Some(path) = &args.config {
        return run_node(path, args, &mut out);
    }
    let layout = crate::device_config(&args.device)?.layout()?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&layout)?)?;
    } else {
        write!(out, "{}", render(&layout))?;
    }
    Ok(())
}

/// `vgrace layout --config`: every GPU of the node, then the aperture the node needs.
fn run_node(path: &std::path::Path, args: &LayoutArgs, out: &mut impl Write) -> Result<()> {
    let entries = crate::node_file::load(path)?;
    let layouts: Vec<(Layout, String)> = entries
        .iter()
        .map(|e| Ok((e.config.layout()?, e.socket.display().to_string())))
        .collect::<Result<_>>()?;
    let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    let refs: Vec<(&Layout, String)> = layouts.iter().map(|(l, s)| (l, s.clone())).collect();
    // Guest RAM only shifts q35's 64-bit hole; 8 GiB is qemu-args' default.
    let machine = args
        .machine
        .unwrap_or_else(crate::guest::node::Machine::host);
    let node = crate::guest::node::node(machine, &refs, 8 << 30);
    if args.json {
        let gpus: Vec<&Layout> = layouts.iter().map(|(l, _)| l).collect();
        let value = serde_json::json!({ "gpus": gpus, "node": node });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    for (((layout, socket), gpu), id) in layouts.iter().zip(&node.gpus).zip(ids) {
        // The file's id is what `vgrace ctl` names; QEMU's device id is the node's own.
        let name = if id == gpu.id {
            id.to_string()
        } else {
            format!("{id} (QEMU id {})", gpu.id)
        };
        writeln!(
            out,
            "== {name} on {socket}: behind root port {}, window {}, {}",
            gpu.root_port,
            human(gpu.pref64_window),
            gpu.numa_nodes.map_or_else(
                || "no NUMA nodes (no device memory)".to_string(),
                |(first, last)| format!("NUMA nodes {first}-{last}")
            )
        )?;
        write!(out, "{}", render(layout))?;
        writeln!(out)?;
    }
    writeln!(out,
        "node ({}): {} GPU(s) need {} of 64-bit MMIO aperture (given as {}){}; {} NUMA nodes, guest CONFIG_NODES_SHIFT >= {}",
        machine.name(),
        node.gpus.len(),
        human(node.aperture_needed),
        human(node.aperture),
        node.phys_bits
            .map(|b| format!(", phys-bits {b}"))
            .unwrap_or_default(),
        node.numa_nodes,
        node.nodes_shift_needed
    )?;
    Ok(())
}

/// Renders the table of regions and the diagram of the memory split.
pub fn render(layout: &Layout) -> String {
    let mut out = summary(layout);
    if layout.regions.is_empty() {
        return out;
    }
    out.push('\n');
    out.push_str(&region_table(layout));
    out.push('\n');
    out.push_str(&memory_diagram(layout));
    out.push('\n');
    out.push_str(&bar_diagram(layout));
    out
}

/// The device in a sentence, then what sets it apart: core-only, BAR1, CXL, poisoned pages.
fn summary(layout: &Layout) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} device 10de:{:04x} as Linux {} serves it, {} ({} bytes) of device memory at host PA {:#x}",
        layout.profile,
        layout.device_id,
        layout.linux,
        human(layout.mem_size),
        layout.mem_size,
        layout.mem_base
    );
    if let Some(why) = layout.core_only {
        let _ = writeln!(
            out,
            "no memory regions: {why}; served by the PCI core alone (config space, BAR0{})",
            if layout.bar1_size.is_some() {
                ", BAR1"
            } else {
                ""
            }
        );
    }
    if let Some(size) = layout.bar1_size {
        let _ = writeln!(
            out,
            "region 2 is the real BAR1 (64-bit prefetchable, {}, all of it mappable)",
            human(size)
        );
    }
    if let Some(c) = &layout.cxl {
        let _ = writeln!(
            out,
            "CXL Device DVSEC at 0x140: memory info valid after {:?}, active after {:?}, timeout code {} ({:?}){}",
            c.valid_delay,
            c.active_delay,
            c.timeout_code,
            c.active_timeout(),
            if layout.linux >= vgrace_device::LinuxVersion::V7_2 {
                "; readiness is read here"
            } else {
                "; this kernel reads the BAR0 pair instead"
            }
        );
    }
    for p in &layout.poisoned {
        let _ = writeln!(
            out,
            "poisoned page: region {} offset {:#x} (reads touching it answer EFAULT)",
            p.region, p.offset
        );
    }
    out
}

/// One line per region: BARs, sizes, the sparse area, the mapping, where its memory is.
fn region_table(layout: &Layout) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<4} {:<7} {:>16} {:>16} {:<30} {:<14} {:>14} {:>18}",
        "region",
        "BAR",
        "kind",
        "BAR size",
        "memlength",
        "sparse mmap area",
        "mapping",
        "fd offset",
        "host PA"
    );
    for r in &layout.regions {
        let _ = writeln!(
            out,
            "{:<6} {:<4} {:<7} {:>16} {:>16} {:<30} {:<14} {:>14} {:>18}",
            r.region_index,
            format!("{}/{}", r.bar, r.bar + 1),
            r.kind.to_string(),
            human(r.bar_size),
            human(r.memlength),
            format!("[0, {:#x})", r.memlength),
            if r.cacheable {
                "cacheable"
            } else {
                "write-combine"
            },
            format!("{:#x}", r.fd_offset),
            format!("{:#x}", r.base_pa),
        );
    }
    out
}

/// The device memory as one bar, regions in host physical order.
fn memory_diagram(layout: &Layout) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Device memory (one fd, host physical order):");
    let mut bar = String::new();
    let mut legend = String::new();
    let mut regions: Vec<_> = layout.regions.iter().collect();
    regions.sort_by_key(|r| r.fd_offset);
    for r in &regions {
        let cells = scaled(r.memlength, layout.mem_size).max(1);
        let fill = if r.cacheable { '=' } else { '~' };
        bar.push('|');
        bar.extend(std::iter::repeat_n(
            fill,
            usize::try_from(cells).unwrap_or(1),
        ));
        let _ = writeln!(
            legend,
            "  {fill} {} {} at fd offset {:#x} -> BAR{}",
            r.kind,
            human(r.memlength),
            r.fd_offset,
            r.bar
        );
    }
    bar.push('|');
    let _ = writeln!(out, "  {bar}");
    out.push_str(&legend);
    out
}

/// Each BAR as the guest sees it: memory, then the all-ones tail.
fn bar_diagram(layout: &Layout) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "BARs as the guest sees them (# = memory, . = tail that reads 0xFF, writes dropped):"
    );
    for r in &layout.regions {
        let mem = scaled(r.memlength, r.bar_size).max(1);
        let tail = DIAGRAM_WIDTH.saturating_sub(mem);
        let _ = writeln!(
            out,
            "  BAR{} {:>9} |{}{}| memory {} + tail {}",
            r.bar,
            human(r.bar_size),
            "#".repeat(usize::try_from(mem).unwrap_or(0)),
            ".".repeat(usize::try_from(tail).unwrap_or(0)),
            human(r.memlength),
            human(r.bar_size - r.memlength),
        );
    }
    out
}

/// `part` of `whole` in diagram cells.
fn scaled(part: u64, whole: u64) -> u64 {
    if whole == 0 {
        return 0;
    }
    let cells = u128::from(part) * u128::from(DIAGRAM_WIDTH) / u128::from(whole);
    u64::try_from(cells).unwrap_or(DIAGRAM_WIDTH)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use vgrace_device::{GpuConfig, Profile};

    fn gh100_96g() -> Layout {
        GpuConfig {
            mem_base: 0x4000_0000_0000,
            ..GpuConfig::memfd(Profile::Gh100, 96 << 30)
        }
        .layout()
        .unwrap()
    }

    #[test]
    fn gh100_layout_shows_both_bars_with_sizes() {
        let text = render(&gh100_96g());
        assert!(text.contains("128 GiB"), "{text}");
        assert!(text.contains("95 GiB"), "{text}");
        assert!(text.contains("write-combine"), "{text}");
        assert!(text.contains("BAR4"), "{text}");
        assert!(text.contains("BAR2"), "{text}");
    }

    #[test]
    fn scaled_never_exceeds_width() {
        assert_eq!(scaled(u64::MAX, u64::MAX), DIAGRAM_WIDTH);
        assert_eq!(scaled(1, 0), 0);
    }
}
