//! A Grace node as a guest sees it: each GPU alone behind its own PCIe root port (at 00.0, where
//! NVIDIA's guest driver looks for its SRAT generic-initiator entries), eight memory-less NUMA
//! nodes per GPU, and the 64-bit MMIO aperture the machine must offer for all their BARs.
//!
//! The aperture follows what a booted guest does (established on QEMU 11.1 under TCG): Linux
//! reassigns every root port's prefetchable window and aligns it to its largest BAR, so a window
//! of BAR2 + BAR4 (+ BAR1) occupies the sum rounded up to a multiple of the largest BAR.

use serde::Serialize;
use vgrace_device::Layout;

/// NUMA nodes per GPU (`nvidia,gpu-mem-pxm-count`: one per MIG partition).
pub const NODES_PER_GPU: u32 = 8;
/// BAR0 of every GPU (non-prefetchable: it goes in the root port's 32-bit window).
pub const BAR0_SIZE: u64 = 16 << 20;

/// The machine type to print arguments for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// arm64 `virt`: the Grace shape (ACPI through UEFI).
    Virt,
    /// x86 `q35`.
    Q35,
}

impl Machine {
    /// QEMU's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Machine::Virt => "virt",
            Machine::Q35 => "q35",
        }
    }

    /// The host's architecture: virt on arm64, q35 elsewhere.
    pub fn host() -> Self {
        if cfg!(target_arch = "aarch64") {
            Machine::Virt
        } else {
            Machine::Q35
        }
    }
}

/// One GPU of the node, where it sits and what it needs.
#[derive(Debug, Clone, Serialize)]
pub struct Gpu {
    /// QEMU device id (`gpu0`, ...).
    pub id: String,
    /// Its root port's id (`rp0`, ...).
    pub root_port: String,
    /// The socket `vgrace serve` listens on for it.
    pub socket: String,
    /// Profile and device id, for people.
    pub device: String,
    /// Prefetchable 64-bit BARs as (BAR number, size).
    pub bars: Vec<(u8, u64)>,
    /// The root port's prefetchable window: the BARs summed, rounded up to the largest.
    pub pref64_window: u64,
    /// First and last NUMA node of the GPU's memory (`nvidia,gpu-mem-pxm-start`, count 8).
    pub numa_nodes: (u32, u32),
}

/// The node: its GPUs and the aperture they need together.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// The machine the arguments are for.
    pub machine: Machine,
    /// The GPUs in order.
    pub gpus: Vec<Gpu>,
    /// Sum of the GPUs' windows, each aligned to its largest BAR: what the guest must find.
    pub aperture_needed: u64,
    /// The aperture to give the machine: the next power of two (virt's highmem-mmio-size must be
    /// one; q35's pci-hole64-size takes the same).
    pub aperture: u64,
    /// q35 only: guest physical address bits that reach the aperture above RAM, with headroom.
    pub phys_bits: Option<u32>,
    /// NUMA nodes in all (node 0 holds CPUs and RAM).
    pub numa_nodes: u32,
    /// The guest kernel's CONFIG_NODES_SHIFT must be at least this.
    pub nodes_shift_needed: u32,
}

/// The window a root port needs for `bars`: their sum rounded up to a multiple of the largest
/// (Linux aligns the window to it).
pub fn window(bars: &[(u8, u64)]) -> u64 {
    let largest = bars.iter().map(|b| b.1).max().unwrap_or(0);
    let sum: u64 = bars.iter().map(|b| b.1).fold(0, u64::saturating_add);
    if largest == 0 {
        return 0;
    }
    sum.div_ceil(largest).saturating_mul(largest)
}

/// Lays the node out from each GPU's layout and socket.
pub fn node(machine: Machine, gpus: &[(&Layout, String)], guest_mem: u64) -> Node {
    let mut out = Vec::with_capacity(gpus.len());
    let mut needed = 0u64;
    for (i, (layout, socket)) in gpus.iter().enumerate() {
        let mut bars: Vec<(u8, u64)> = layout.regions.iter().map(|r| (r.bar, r.bar_size)).collect();
        if let Some(size) = layout.bar1_size {
            bars.push((2, size));
        }
        bars.sort();
        let w = window(&bars);
        // Each window starts aligned to its largest BAR: round the running total up first.
        let align = bars.iter().map(|b| b.1).max().unwrap_or(1).max(1);
        needed = needed
            .div_ceil(align)
            .saturating_mul(align)
            .saturating_add(w);
        let i = i as u32;
        out.push(Gpu {
            id: format!("gpu{i}"),
            root_port: format!("rp{i}"),
            socket: socket.clone(),
            device: format!("{} 10de:{:04x}", layout.profile, layout.device_id),
            bars,
            pref64_window: w,
            numa_nodes: (1 + i * NODES_PER_GPU, (i + 1) * NODES_PER_GPU),
        });
    }
    let aperture = needed
        .max(1)
        .checked_next_power_of_two()
        .unwrap_or(u64::MAX);
    let numa_nodes = 1 + NODES_PER_GPU * gpus.len() as u32;
    let phys_bits = (machine == Machine::Q35).then(|| {
        // The 64-bit hole starts above RAM (at 4 GiB + RAM above 4 GiB at the latest); two more
        // bits leave room for the firmware's and the kernel's alignment.
        let top = (4u64 << 30)
            .saturating_add(guest_mem)
            .saturating_add(aperture);
        (64 - top.leading_zeros()).max(40) + 1
    });
    Node {
        machine,
        gpus: out,
        aperture_needed: needed,
        aperture,
        phys_bits,
        numa_nodes,
        nodes_shift_needed: 32 - (numa_nodes.max(2) - 1).leading_zeros(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use vgrace_device::{GpuConfig, Profile};

    const GIB: u64 = 1 << 30;

    fn layouts(n: usize, size: u64) -> Vec<Layout> {
        (0..n)
            .map(|_| GpuConfig::memfd(Profile::Gh100, size).layout().unwrap())
            .collect()
    }

    /// Four 480 GiB GH200s need a 4 TiB aperture (each 513 GiB window aligned to 512 GiB), as
    /// booting them showed; 2 TiB leaves two of them without memory BARs.
    #[test]
    fn four_480g_gpus_need_a_4t_aperture() {
        let l = layouts(4, 480 * GIB);
        let gpus: Vec<(&Layout, String)> = l.iter().map(|x| (x, String::new())).collect();
        let n = node(Machine::Virt, &gpus, 8 * GIB);
        assert_eq!(n.gpus[0].pref64_window, 1024 * GIB);
        assert_eq!(n.aperture, 4096 * GIB);
        assert_eq!(n.numa_nodes, 33);
        assert_eq!(n.nodes_shift_needed, 6);
        assert_eq!(n.gpus[3].numa_nodes, (25, 32));
    }

    #[test]
    fn q35_phys_bits_reach_the_aperture() {
        let l = layouts(4, 480 * GIB);
        let gpus: Vec<(&Layout, String)> = l.iter().map(|x| (x, String::new())).collect();
        let n = node(Machine::Q35, &gpus, 8 * GIB);
        assert_eq!(n.phys_bits, Some(44));
    }

    #[test]
    fn one_small_gpu_needs_its_window_only() {
        let l = layouts(1, (2660u64) << 20);
        let n = node(Machine::Q35, &[(&l[0], String::new())], 512 << 20);
        assert_eq!(n.aperture_needed, 4 * GIB);
        assert_eq!(n.aperture, 4 * GIB);
        assert_eq!(n.nodes_shift_needed, 4);
    }

    #[test]
    fn window_is_the_sum_rounded_to_the_largest_bar() {
        assert_eq!(window(&[(2, GIB), (4, 512 * GIB)]), 1024 * GIB);
        assert_eq!(window(&[(4, 4 * GIB)]), 4 * GIB);
        assert_eq!(window(&[]), 0);
    }
}
