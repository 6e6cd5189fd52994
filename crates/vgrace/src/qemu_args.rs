//! `vgrace qemu-args`: the QEMU command-line pieces that attach a vgrace device to a guest.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use vgrace_device::Layout;

use crate::cli::QemuArgsArgs;
use crate::units::human;

/// Proximity domains the guest driver expects for GPU memory (one per MIG partition, as
/// upstream QEMU's examples use: `nvidia,gpu-mem-pxm-count` = 8).
const GPU_NUMA_NODES: u32 = 8;

/// Prints the arguments.
pub fn run(args: &QemuArgsArgs) -> Result<()> {
    let layout = crate::device_config(&args.device)?.layout()?;
    let socket = absolute(&args.socket)?;
    print!("{}", render(&layout, &socket, &args.guest_mem));
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()?.join(path))
}

/// Renders the arguments with a comment line before each group.
pub fn render(layout: &Layout, socket: &Path, guest_mem: &str) -> String {
    let mut out = String::new();
    let bars: Vec<String> = layout
        .regions
        .iter()
        .map(|r| {
            format!(
                "BAR{} {} ({} memory)",
                r.bar,
                human(r.bar_size),
                human(r.memlength)
            )
        })
        .collect();
    let device = serde_json::json!({
        "driver": "vfio-user-pci",
        "id": "gpu0",
        "socket": { "path": socket.to_string_lossy(), "type": "unix" },
    });
    let _ = writeln!(
        out,
        "# The Grace GPU ({} 10de:{:04x}: {}), served by `vgrace serve --socket {}`.",
        layout.profile,
        layout.device_id,
        bars.join(", "),
        socket.display()
    );
    let _ = writeln!(
        out,
        "# vfio-user-pci needs QEMU >= 10.1 and only accepts the JSON form."
    );
    let _ = writeln!(out, "-device '{device}'");
    let _ = writeln!(
        out,
        "# Guest RAM must be shareable: the server maps it through DMA_MAP fds."
    );
    let _ = writeln!(
        out,
        "-object memory-backend-memfd,id=ram0,size={guest_mem},share=on"
    );
    let _ = writeln!(
        out,
        "# Node 0 holds the CPUs and RAM (use `-machine q35,memory-backend=ram0` instead if you skip NUMA)."
    );
    let _ = writeln!(out, "-numa node,nodeid=0,memdev=ram0");
    let _ = writeln!(
        out,
        "# Memory-less nodes 1-{GPU_NUMA_NODES} for the GPU memory, as on the host (nvidia,gpu-mem-pxm-start=1, -count={GPU_NUMA_NODES});"
    );
    let _ = writeln!(
        out,
        "# each acpi-generic-initiator ties one node to the GPU in the guest's SRAT."
    );
    for i in 0..GPU_NUMA_NODES {
        let node = i + 1;
        let _ = writeln!(out, "-numa node,nodeid={node}");
        let _ = writeln!(
            out,
            "-object acpi-generic-initiator,id=gi{i},pci-dev=gpu0,node={node}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use vgrace_device::{GpuConfig, Profile};

    fn gh100() -> Layout {
        GpuConfig::memfd(Profile::Gh100, 96 << 30).layout().unwrap()
    }

    #[test]
    fn device_json_names_the_socket() {
        let text = render(&gh100(), Path::new("/run/gpu0.sock"), "8G");
        let line = text.lines().find(|l| l.starts_with("-device")).unwrap();
        let json = line.trim_start_matches("-device '").trim_end_matches('\'');
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(value["driver"], "vfio-user-pci");
        assert_eq!(value["socket"]["path"], "/run/gpu0.sock");
    }

    #[test]
    fn every_argument_line_follows_a_comment() {
        let text = render(&gh100(), Path::new("/run/gpu0.sock"), "8G");
        assert!(text.lines().next().unwrap().starts_with('#'));
        assert_eq!(text.matches("-object acpi-generic-initiator").count(), 8);
    }
}
