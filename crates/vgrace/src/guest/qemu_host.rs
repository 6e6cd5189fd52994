//! `vgrace qemu-args --view host`: an L1 Grace host, an arm64 `virt` machine with UEFI whose
//! GPUs are served by `vgrace serve --view host`, so that the guest kernel can run the real
//! `nvgrace-gpu-vfio-pci` on them.
//!
//! Each GPU sits behind its own root port at 00:(i+1).0 (the slot `vgrace acpi` scopes its
//! `_DSD` to). Its memory is a `memory-backend-file` on the GPU's backing file, given to QEMU as
//! the RAM of NUMA node `pxm-start`: QEMU lays the nodes' RAM out in node order right after
//! node 0's, from 0x4000_0000 (virt's RAM base), so GPU i's memory lands at 0x4000_0000 + guest
//! RAM + the sizes of the GPUs before it. That must be its `nvidia,gpu-mem-base-pa`. The guest
//! kernel gets `mem=<guest RAM>` so it does not take the GPU memory as its own; the driver
//! `memremap`s it, as on a Grace host. The SSDT goes in through the kernel's initrd table
//! upgrade (`-acpitable` is x86-only): an uncompressed cpio with
//! `kernel/firmware/acpi/ssdt.aml` in front of the initramfs (CONFIG_ACPI_TABLE_UPGRADE).

use std::fmt::Write as _;
use std::io::Write;

use anyhow::{bail, Result};
use serde::Serialize;
use vgrace_device::Backing;

use crate::cli::QemuArgsArgs;
use crate::guest::host_view::{gpu_scope, root_port_slot, HostGpu};
use crate::units::qemu_size;

/// Where `virt` puts RAM.
pub const VIRT_RAM_BASE: u64 = 0x4000_0000;

/// One GPU of the L1 machine.
#[derive(Debug, Clone, Serialize)]
pub struct L1Gpu {
    /// QEMU device id.
    pub id: String,
    /// The socket `vgrace serve --view host` listens on.
    pub socket: String,
    /// The memory file QEMU maps.
    pub mem_path: String,
    /// `nvidia,gpu-mem-base-pa`: where the memory lands in guest physical space.
    pub mem_base: u64,
    /// `nvidia,gpu-mem-size`.
    pub mem_size: u64,
    /// The NUMA node holding the memory (`nvidia,gpu-mem-pxm-start`).
    pub node: u32,
    /// Bus 0 slot of its root port.
    pub slot: u32,
    /// The ACPI scope of its `_DSD` (what `vgrace acpi` writes).
    pub acpi_scope: String,
}

/// Prints the L1 machine's arguments (or JSON).
pub fn run(args: &QemuArgsArgs) -> Result<()> {
    if args.machine == Some(crate::guest::node::Machine::Q35) {
        bail!("--view host is an arm64 virt machine (a Grace host); q35 is not offered");
    }
    let entries: Vec<(String, vgrace_device::GpuConfig, String)> = match &args.config {
        Some(path) => crate::node_file::load(path)?
            .into_iter()
            .map(|e| Ok((e.id, e.config, crate::dirs::absolute(&e.socket)?)))
            .collect::<Result<_>>()?,
        None => vec![(
            "gpu0".to_string(),
            crate::device_config(&args.device)?,
            crate::dirs::absolute(&args.socket)?,
        )],
    };
    let hosts = crate::guest::host_view::gpus(args.config.as_deref(), &args.device)?;
    let gpus = l1_gpus(&entries, &hosts, args.guest_mem)?;
    let text = render(&gpus, args.guest_mem);
    let mut out = std::io::stdout().lock();
    if args.json {
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let value = serde_json::json!({
            "gpus": gpus,
            "kernel_args": kernel_args(args.guest_mem),
            "args": lines,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        write!(out, "{text}")?;
    }
    Ok(())
}

/// What the guest kernel's command line needs: RAM capped below the GPU memory, and VFIO's
/// no-IOMMU mode (the `virt` machine has no IOMMU the driver could use).
pub fn kernel_args(guest_mem: u64) -> String {
    format!(
        "mem={} vfio.enable_unsafe_noiommu_mode=1",
        qemu_size(guest_mem)
    )
}

/// Places each GPU's memory after guest RAM and checks that its configured base is that place.
fn l1_gpus(
    entries: &[(String, vgrace_device::GpuConfig, String)],
    hosts: &[HostGpu],
    guest_mem: u64,
) -> Result<Vec<L1Gpu>> {
    let mut at = VIRT_RAM_BASE
        .checked_add(guest_mem)
        .ok_or_else(|| anyhow::anyhow!("guest RAM too large"))?;
    let mut out = Vec::with_capacity(entries.len());
    for ((id, cfg, socket), host) in entries.iter().zip(hosts) {
        let Backing::File(path) = &cfg.backing else {
            bail!(
                "{id}: the host view needs a file backing that QEMU can map (backing = \"PATH\")"
            );
        };
        if cfg.mem_base != at {
            bail!(
                "{id}: its memory lands at {at:#x} in the L1 guest (after {} of RAM from \
                 {VIRT_RAM_BASE:#x} and the GPUs before it): set its mem_base (--mem-base) to \
                 {at:#x}, so that the SSDT names the right place",
                qemu_size(guest_mem)
            );
        }
        out.push(L1Gpu {
            id: id.clone(),
            socket: socket.clone(),
            mem_path: crate::dirs::absolute(path)?,
            mem_base: at,
            mem_size: cfg.mem_size,
            node: host.pxm_start,
            slot: root_port_slot(host.index),
            acpi_scope: gpu_scope(host.index),
        });
        at = at
            .checked_add(cfg.mem_size)
            .ok_or_else(|| anyhow::anyhow!("{id}: memory past 2^64"))?;
    }
    Ok(out)
}

/// The arguments, a comment line before each group.
fn render(gpus: &[L1Gpu], guest_mem: u64) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        let _ = writeln!(out, "{s}");
    };
    let total = gpus
        .iter()
        .fold(guest_mem, |a, g| a.saturating_add(g.mem_size));
    line(format!(
        "# An L1 Grace host with {} GPU(s) served by `vgrace serve --view host`; boot its kernel with `{}`.",
        gpus.len(),
        kernel_args(guest_mem)
    ));
    line("# The SSDT (`vgrace acpi ... -o ssdt.aml`) goes in an uncompressed cpio as kernel/firmware/acpi/ssdt.aml, in front of the initramfs (CONFIG_ACPI_TABLE_UPGRADE).".into());
    line(
        "# arm64 virt with UEFI (ACPI needs it); -kernel/-initrd still work through fw_cfg.".into(),
    );
    line("-machine virt,gic-version=max".into());
    line("-cpu max".into());
    line("-bios /usr/share/qemu-efi-aarch64/QEMU_EFI.fd".into());
    line(format!(
        "# RAM: node 0's {} at {VIRT_RAM_BASE:#x}, then each GPU's memory as its own node; -m is their sum.",
        qemu_size(guest_mem)
    ));
    line(format!("-m {}", qemu_size(total)));
    line(format!(
        "-object memory-backend-memfd,id=ram0,size={},share=on",
        qemu_size(guest_mem)
    ));
    line("-numa node,nodeid=0,memdev=ram0".into());
    for g in gpus {
        line(format!(
            "# {}: memory {} at {:#x} (node {}), from {}; behind root port 00:{:02x}.0, ACPI {}.",
            g.id,
            qemu_size(g.mem_size),
            g.mem_base,
            g.node,
            g.mem_path,
            g.slot,
            g.acpi_scope
        ));
        line(format!(
            "-object memory-backend-file,id={}-mem,mem-path={},size={},share=on",
            g.id,
            g.mem_path,
            qemu_size(g.mem_size)
        ));
        line(format!("-numa node,nodeid={},memdev={}-mem", g.node, g.id));
        line(format!(
            "-device pcie-root-port,id={}-rp,bus=pcie.0,chassis={},slot={},addr={}.0",
            g.id, g.slot, g.slot, g.slot
        ));
        let device = serde_json::json!({
            "driver": "vfio-user-pci",
            "id": g.id,
            "bus": format!("{}-rp", g.id),
            "addr": "0.0",
            "socket": { "path": g.socket, "type": "unix" },
        });
        line(format!("-device '{device}'"));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use vgrace_device::{GpuConfig, Profile};

    fn entry(base: u64, size: u64) -> (String, GpuConfig, String) {
        let cfg = GpuConfig {
            backing: Backing::File("/run/g.mem".into()),
            mem_base: base,
            ..GpuConfig::memfd(Profile::Gh100, size)
        };
        ("gpu0".into(), cfg, "/run/g.sock".into())
    }

    fn host(index: u32) -> HostGpu {
        HostGpu {
            index,
            id: format!("gpu{index}"),
            mem_base: 0,
            mem_size: 0,
            pxm_start: 1 + 8 * index,
            pxm_count: 8,
        }
    }

    /// GPU memory follows guest RAM from virt's RAM base, one GPU after the other.
    #[test]
    fn gpu_memory_lands_right_after_guest_ram_in_node_order() {
        let e = [entry(0x6000_0000, 1 << 30), entry(0xa000_0000, 1 << 30)];
        let g = l1_gpus(&e, &[host(0), host(1)], 512 << 20).unwrap();
        assert_eq!((g[0].mem_base, g[1].mem_base), (0x6000_0000, 0xa000_0000));
        assert_eq!((g[0].node, g[1].node), (1, 9));
        let text = render(&g, 512 << 20);
        assert!(text.contains("-m 2560M"), "{text}");
        assert!(text.contains("addr=2.0"), "{text}");
    }

    /// A base the machine cannot honour is refused, naming the one it can.
    #[test]
    fn a_base_elsewhere_is_refused_with_the_right_one() {
        let err = l1_gpus(&[entry(0x4000_0000_0000, 1 << 30)], &[host(0)], 512 << 20)
            .unwrap_err()
            .to_string();
        assert!(err.contains("0x60000000"), "{err}");
    }
}
