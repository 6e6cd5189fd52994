//! `vgrace qemu-args`: the QEMU command line that attaches one GPU, or a whole node of them, to a
//! guest: each GPU alone behind its own root port, the aperture their BARs need, shareable guest
//! RAM, eight memory-less NUMA nodes per GPU tied to it by ACPI generic initiators, and what the
//! machine needs for ACPI. Every group of arguments follows a one-line comment.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use vgrace_device::Layout;

use crate::cli::QemuArgsArgs;
use crate::node::{node, Machine, Node, BAR0_SIZE, NODES_PER_GPU};
use crate::units::human;

/// Prints the arguments (or JSON).
pub fn run(args: &QemuArgsArgs) -> Result<()> {
    let gpus: Vec<(Layout, String)> = match &args.config {
        Some(path) => crate::config::load(path)?
            .into_iter()
            .map(|e| Ok((e.config.layout()?, absolute(&e.socket)?)))
            .collect::<Result<_>>()?,
        None => vec![(
            crate::device_config(&args.device)?.layout()?,
            absolute(&args.socket)?,
        )],
    };
    let refs: Vec<(&Layout, String)> = gpus.iter().map(|(l, s)| (l, s.clone())).collect();
    let n = node(
        args.machine.unwrap_or_else(Machine::host),
        &refs,
        args.guest_mem,
    );
    let lines = render(&n, args.guest_mem);
    let mut out = crate::out::stdout();
    if args.json {
        let args_only: Vec<&str> = lines.lines().filter(|l| !l.starts_with('#')).collect();
        let value = serde_json::json!({ "node": n, "args": args_only });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        write!(out, "{lines}")?;
    }
    Ok(())
}

fn absolute(path: &Path) -> Result<String> {
    let p: PathBuf = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    Ok(p.to_string_lossy().into_owned())
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

/// Renders the arguments, a comment line before each group.
pub fn render(n: &Node, guest_mem: u64) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        let _ = writeln!(out, "{s}");
    };
    let count = n.gpus.len();
    line(format!(
        "# {count} Grace GPU(s) served by `vgrace serve`; the BARs need {} of 64-bit MMIO aperture, given {}.",
        human(n.aperture_needed),
        human(n.aperture)
    ));
    line("# vfio-user-pci needs QEMU >= 10.1 and only accepts the JSON form.".into());
    match n.machine {
        Machine::Virt => {
            line(
                "# arm64 virt: highmem-mmio-size is the aperture (a power of two); ACPI (SRAT) needs UEFI, else the guest boots from a device tree with one node."
                    .into(),
            );
            line(format!(
                "-machine virt,gic-version=max,highmem-mmio-size={}",
                qemu_size(n.aperture)
            ));
            line("# The CPU must reach the aperture: -cpu max does, 40-bit CPUs (cortex-a53) drop it silently.".into());
            line("-cpu max".into());
            line("# UEFI firmware (Debian's qemu-efi-aarch64); -kernel/-initrd still work through fw_cfg.".into());
            line("-bios /usr/share/qemu-efi-aarch64/QEMU_EFI.fd".into());
        }
        Machine::Q35 => {
            let bits = n.phys_bits.unwrap_or(44);
            // Under SeaBIOS pci-hole64-size alone does not bound the BARs (QEMU 11.1): the
            // firmware puts them at the top of the phys-bits address space and QEMU's _CRS grows
            // the hole over what it programmed; a 64 GiB hole with phys-bits 44 still fits four
            // 480 GiB GPUs. phys-bits is the bound, and the hole makes QEMU refuse one too small.
            line(format!(
                "# x86 q35: phys-bits {bits} give the aperture room above RAM (the firmware puts 64-bit BARs at the top); with pci-hole64-size QEMU refuses fewer bits than the aperture needs."
            ));
            line(format!(
                "-machine q35 -global q35-pcihost.pci-hole64-size={}",
                qemu_size(n.aperture)
            ));
            line(format!("-cpu max,phys-bits={bits}"));
        }
    }
    line("# Guest RAM must be shareable: the server maps it through DMA_MAP fds. It is node 0's memdev (QEMU refuses -machine memory-backend with -numa memdev).".into());
    line(format!(
        "-object memory-backend-memfd,id=ram0,size={},share=on",
        qemu_size(guest_mem)
    ));
    line(format!(
        "# NUMA: node 0 holds CPUs and RAM; each GPU gets {NODES_PER_GPU} memory-less nodes (nvidia,gpu-mem-pxm-start/-count), {} in all: the guest kernel needs CONFIG_NODES_SHIFT >= {} (Debian arm64 kernels have 4, amd64 10).",
        n.numa_nodes, n.nodes_shift_needed
    ));
    // Not also `-machine memory-backend=ram0`: QEMU refuses it next to `-numa memdev` ("'-machine
    // memory-backend' and '-numa memdev' properties are mutually exclusive").
    line("-numa node,nodeid=0,memdev=ram0".into());
    for (i, g) in n.gpus.iter().enumerate() {
        let bars: Vec<String> = g
            .bars
            .iter()
            .map(|(bar, size)| format!("BAR{bar} {}", human(*size)))
            .collect();
        line(format!(
            "# {} ({}: BAR0 {}, {}) alone behind root port {} at 00.0, where the guest driver looks for its SRAT entries; window {}.",
            g.id,
            g.device,
            human(BAR0_SIZE),
            bars.join(", "),
            g.root_port,
            human(g.pref64_window)
        ));
        line(format!(
            "-device pcie-root-port,id={},bus=pcie.0,chassis={},slot={},mem-reserve={},pref64-reserve={}",
            g.root_port,
            i + 1,
            i + 1,
            qemu_size(BAR0_SIZE * 2),
            qemu_size(g.pref64_window.max(1 << 20))
        ));
        let device = serde_json::json!({
            "driver": "vfio-user-pci",
            "id": g.id,
            "bus": g.root_port,
            "addr": "0.0",
            "socket": { "path": g.socket, "type": "unix" },
        });
        line(format!("-device '{device}'"));
        line(format!(
            "# Nodes {}-{} for {}'s memory, each tied to it by an acpi-generic-initiator.",
            g.numa_nodes.0, g.numa_nodes.1, g.id
        ));
        for node in g.numa_nodes.0..=g.numa_nodes.1 {
            line(format!("-numa node,nodeid={node}"));
            line(format!(
                "-object acpi-generic-initiator,id=gi{node},pci-dev={},node={node}",
                g.id
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use vgrace_device::{GpuConfig, Profile};

    fn four() -> Node {
        let l: Vec<Layout> = (0..4)
            .map(|_| {
                GpuConfig::memfd(Profile::Gh100, 480 << 30)
                    .layout()
                    .unwrap()
            })
            .collect();
        let gpus: Vec<(&Layout, String)> = l
            .iter()
            .enumerate()
            .map(|(i, x)| (x, format!("/run/gpu{i}.sock")))
            .collect();
        node(Machine::Virt, &gpus, 8 << 30)
    }

    #[test]
    fn device_json_names_the_socket_and_its_root_port() {
        let text = render(&four(), 8 << 30);
        let line = text.lines().find(|l| l.starts_with("-device '")).unwrap();
        let json = line.trim_start_matches("-device '").trim_end_matches('\'');
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(value["driver"], "vfio-user-pci");
        assert_eq!(value["socket"]["path"], "/run/gpu0.sock");
        assert_eq!(
            (value["bus"].as_str(), value["addr"].as_str()),
            (Some("rp0"), Some("0.0"))
        );
    }

    #[test]
    fn a_node_of_four_has_distinct_numa_nodes_and_a_4t_aperture() {
        let text = render(&four(), 8 << 30);
        assert!(text.contains("highmem-mmio-size=4T"), "{text}");
        assert_eq!(text.matches("-object acpi-generic-initiator").count(), 32);
        assert_eq!(text.matches("-device pcie-root-port").count(), 4);
        assert!(text.contains("node=32"));
        assert!(text.contains("CONFIG_NODES_SHIFT >= 6"));
    }

    /// QEMU 11.1 exits with "'-machine memory-backend' and '-numa memdev' properties are
    /// mutually exclusive": the RAM backend is given once, as node 0's memdev.
    #[test]
    fn ram_backend_is_node_0s_memdev_only() {
        for machine in [Machine::Virt, Machine::Q35] {
            let mut n = four();
            n.machine = machine;
            let text = render(&n, 8 << 30);
            assert!(!text.contains("memory-backend="), "{text}");
            assert_eq!(text.matches("memdev=ram0").count(), 1, "{text}");
            assert!(text.contains("-object memory-backend-memfd,id=ram0,size=8G,share=on"));
        }
    }

    #[test]
    fn every_argument_group_follows_a_comment() {
        let text = render(&four(), 8 << 30);
        assert!(text.lines().next().unwrap().starts_with('#'));
    }

    /// QEMU exits at once when the RAM backend is named twice (machine and node 0).
    #[test]
    fn sizes_print_in_qemu_units() {
        assert_eq!(qemu_size(4 << 40), "4T");
        assert_eq!(qemu_size(513 << 30), "513G");
        assert_eq!(qemu_size(32 << 20), "32M");
        assert_eq!(qemu_size(12345), "12345");
    }
}
