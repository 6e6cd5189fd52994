//! The host view: the GPU function as a Grace host's PCI bus shows it before any VFIO driver
//! binds, so that an L1 guest can run the real `nvgrace-gpu-vfio-pci` on it.
//!
//! On the hardware the coherent memory is not a BAR: it is host memory at
//! `nvidia,gpu-mem-base-pa`, named to the driver by ACPI (`vgrace acpi`). So the host view is
//! the function without the memory BARs: BAR0 with the readiness registers, Blackwell's real
//! BAR1, the DVSEC(s), PCI Express with FLR, MSI-X and PM. That is exactly the device the PCI
//! core serves when the firmware has no memory properties, so the host view reuses it. The
//! memory itself is the same backing file the VFIO view would serve, handed to QEMU as a
//! `memory-backend-file` placed at the base address (`vgrace qemu-args --view host`).
//!
//! Hopper's BARs 2/4 are not in the host view: the driver invents them (the spec's "BAR2-BAR5
//! do not exist in hardware"), and no public source describes hardware BARs there; a GH100's
//! PCI function shows BAR0 only (plus the MSI-X in it).

use std::path::Path;

use anyhow::{bail, Context, Result};
use vgrace_device::backing::Memory;
use vgrace_device::{Backing, GpuConfig, LinuxVersion, NvGraceGpu};

use crate::cli::DeviceArgs;
use crate::guest::node::NODES_PER_GPU;

pub use crate::view::View;

/// Most root ports on bus 0 of a QEMU machine (slot 0 is the host bridge).
const MAX_GPUS: u32 = 31;

/// One GPU of an L1 Grace host: where it sits and what its firmware says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGpu {
    /// Position in the node: GPU i sits behind the root port at 00:(i+1).0.
    pub index: u32,
    /// Its name (`gpu0` unless the configuration names it).
    pub id: String,
    /// `nvidia,gpu-mem-base-pa`.
    pub mem_base: u64,
    /// `nvidia,gpu-mem-size`.
    pub mem_size: u64,
    /// `nvidia,gpu-mem-pxm-start`: the first of the GPU's NUMA nodes (as `qemu-args` numbers
    /// them: node 0 holds CPUs and RAM, each GPU the next eight).
    pub pxm_start: u32,
    /// `nvidia,gpu-mem-pxm-count`.
    pub pxm_count: u32,
}

/// The GPUs that a configuration file or the device flags describe, in order.
pub fn gpus(config: Option<&Path>, device: &DeviceArgs) -> Result<Vec<HostGpu>> {
    let entries: Vec<(String, GpuConfig)> = match config {
        Some(path) => crate::node_file::load(path)?
            .into_iter()
            .map(|e| (e.id, e.config))
            .collect(),
        None => vec![("gpu0".to_string(), crate::device_config(device)?)],
    };
    if entries.len() > MAX_GPUS as usize {
        bail!("at most {MAX_GPUS} GPUs fit on bus 0 (one root port each)");
    }
    let mut out = Vec::with_capacity(entries.len());
    for (i, (id, cfg)) in entries.into_iter().enumerate() {
        let index = i as u32;
        // The layout validates the firmware values (base + size must not overflow).
        cfg.layout().with_context(|| id.clone())?;
        out.push(HostGpu {
            index,
            id,
            mem_base: cfg.mem_base,
            mem_size: cfg.mem_size,
            pxm_start: 1 + index * NODES_PER_GPU,
            pxm_count: NODES_PER_GPU,
        });
    }
    Ok(out)
}

/// Bus 0 slot of GPU `index`'s root port.
pub fn root_port_slot(index: u32) -> u32 {
    index + 1
}

/// The ACPI path of GPU `index` in QEMU's DSDT: QEMU names each bus-0 slot `S<devfn in hex>`
/// (the root port at 00:01.0 is `S08`) and each function behind a port `S<devfn>` again (the
/// GPU at 00.0 is `S00`). A guest shows it in /sys/bus/pci/devices/BDF/firmware_node/path.
pub fn gpu_scope(index: u32) -> String {
    format!("\\_SB.PCI0.S{:02X}.S00", root_port_slot(index) << 3)
}

/// The device the host view serves for `cfg`, and its memory (the backing file, created or
/// checked and locked here; QEMU maps the same file as the guest memory at the base address).
pub fn device(cfg: &GpuConfig) -> Result<(NvGraceGpu, Memory)> {
    let Backing::File(path) = &cfg.backing else {
        bail!(
            "the host view needs a file backing that QEMU can map as the GPU's memory \
             (--backing PATH or backing = \"PATH\")"
        );
    };
    if !cfg.mem_properties || cfg.mem_size == 0 {
        bail!("the host view needs device memory (a size above 0 and the memory properties)");
    }
    cfg.layout()?;
    // The hardware does not change with the kernel: BAR1 and the readiness registers are what
    // the newest driver sees, and the memory is not a BAR.
    let hardware = GpuConfig {
        mem_properties: false,
        linux: LinuxVersion::V7_2,
        poison: Vec::new(),
        ..cfg.clone()
    };
    let gpu = NvGraceGpu::new(&hardware)?;
    let memory = Memory::new(&cfg.backing, cfg.mem_size)
        .with_context(|| format!("cannot open the memory file {}", path.display()))?;
    Ok((gpu, memory))
}

/// The device `entry` asks for; a host view's memory is pushed to `keep`, to hold its lock
/// while the device is served.
pub fn build(entry: &crate::node_file::DeviceEntry, keep: &mut Vec<Memory>) -> Result<NvGraceGpu> {
    match entry.view {
        View::Vfio => Ok(NvGraceGpu::new(&entry.config)?),
        View::Host => {
            let (gpu, memory) = device(&entry.config)?;
            keep.push(memory);
            Ok(gpu)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// QEMU's DSDT names the root port at 00:01.0 S08 and the one at 00:02.0 S10.
    #[test]
    fn scopes_follow_qemu_slot_names() {
        assert_eq!(gpu_scope(0), "\\_SB.PCI0.S08.S00");
        assert_eq!(gpu_scope(1), "\\_SB.PCI0.S10.S00");
        assert_eq!(gpu_scope(30), "\\_SB.PCI0.SF8.S00");
    }

    #[test]
    fn host_view_refuses_a_memfd_backing() {
        let cfg = GpuConfig::memfd(vgrace_device::Profile::Gh100, 4 << 30);
        let err = device(&cfg).unwrap_err().to_string();
        assert!(err.contains("file backing"), "{err}");
    }
}
