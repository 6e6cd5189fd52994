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
/// QEMU's `virt` default `highmem-mmio-size`: QEMU 11.1 refuses a smaller one ("cannot be set to
/// a lower value than the default (512 GiB)").
pub const VIRT_HIGHMEM_MMIO_DEFAULT: u64 = 512 << 30;

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
    /// First and last NUMA node of the GPU's memory (`nvidia,gpu-mem-pxm-start`, count 8); none
    /// for a GPU without memory regions (C2C link down): there is no memory to put in a node.
    pub numa_nodes: Option<(u32, u32)>,
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
    /// The aperture to give the machine, 0 when no GPU has a 64-bit BAR (the machine's default
    /// is left alone): the next power of two (virt's highmem-mmio-size must be one, and at least
    /// QEMU's 512 GiB default; q35's pci-hole64-size takes the same).
    pub aperture: u64,
    /// Guest RAM: the size of node 0's memory backend and of `-m` (QEMU refuses NUMA memdevs
    /// that do not add up to `-m`).
    pub guest_mem: u64,
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
    let mut next_node = 1u32;
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
        // The NUMA nodes stand for device memory; a GPU without memory regions gets none.
        let numa_nodes = (!layout.regions.is_empty()).then(|| {
            let first = next_node;
            next_node += NODES_PER_GPU;
            (first, next_node - 1)
        });
        out.push(Gpu {
            id: format!("gpu{i}"),
            root_port: format!("rp{i}"),
            socket: socket.clone(),
            device: format!("{} 10de:{:04x}", layout.profile, layout.device_id),
            bars,
            pref64_window: w,
            numa_nodes,
        });
    }
    let aperture = aperture(machine, needed);
    let numa_nodes = next_node;
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
        guest_mem,
        phys_bits,
        numa_nodes,
        // ceil(log2(nodes)): 2^shift nodes must fit them all.
        nodes_shift_needed: 32 - (numa_nodes.max(1) - 1).leading_zeros(),
    }
}

/// The aperture `machine` is given for BARs that need `needed` bytes: none for none, else the
/// next power of two, on `virt` at least QEMU's default.
fn aperture(machine: Machine, needed: u64) -> u64 {
    if needed == 0 {
        return 0;
    }
    let pow2 = needed.checked_next_power_of_two().unwrap_or(1 << 63);
    match machine {
        Machine::Virt => pow2.max(VIRT_HIGHMEM_MMIO_DEFAULT),
        Machine::Q35 => pow2,
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
        assert_eq!(n.gpus[3].numa_nodes, Some((25, 32)));
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

    /// QEMU 11.1 refuses a `virt` highmem-mmio-size below its 512 GiB default: one small GPU
    /// gets 512 GiB, not the 4 GiB its window needs.
    #[test]
    fn virt_aperture_is_at_least_qemus_512g_default() {
        for size in [2 * GIB, 96 * GIB] {
            let l = layouts(1, size);
            let n = node(Machine::Virt, &[(&l[0], String::new())], 8 * GIB);
            assert_eq!(n.aperture, 512 * GIB, "{size}");
        }
        let l = layouts(4, 480 * GIB);
        let gpus: Vec<(&Layout, String)> = l.iter().map(|x| (x, String::new())).collect();
        assert_eq!(node(Machine::Virt, &gpus, 8 * GIB).aperture, 4096 * GIB);
    }

    /// A GPU without memory regions (C2C link down) has no memory for NUMA nodes; the GPUs
    /// after it number their nodes on without a gap.
    #[test]
    fn gpus_without_memory_get_no_numa_nodes() {
        let down = GpuConfig::memfd(Profile::Gh100, 0).layout().unwrap();
        let up = layouts(1, 96 * GIB);
        let n = node(
            Machine::Q35,
            &[(&down, String::new()), (&up[0], String::new())],
            8 * GIB,
        );
        assert_eq!(n.gpus[0].numa_nodes, None);
        assert_eq!(n.gpus[1].numa_nodes, Some((1, 8)));
        assert_eq!(n.numa_nodes, 9);
        let alone = node(Machine::Virt, &[(&down, String::new())], 8 * GIB);
        assert_eq!((alone.aperture_needed, alone.aperture), (0, 0));
        assert_eq!((alone.numa_nodes, alone.nodes_shift_needed), (1, 0));
    }

    #[test]
    fn window_is_the_sum_rounded_to_the_largest_bar() {
        assert_eq!(window(&[(2, GIB), (4, 512 * GIB)]), 1024 * GIB);
        assert_eq!(window(&[(4, 4 * GIB)]), 4 * GIB);
        assert_eq!(window(&[]), 0);
    }
}
