//! `vgrace acpi`: the SSDT a Grace host's firmware gives each GPU, so that the real
//! `nvgrace-gpu-vfio-pci` can probe a GPU that `vgrace serve --view host` shows an L1 guest.
//!
//! Per GPU: `_DSD` device properties (the ACPI device-properties UUID) with
//! `nvidia,gpu-mem-base-pa`, `nvidia,gpu-mem-size`, `nvidia,gpu-mem-pxm-start` and
//! `nvidia,gpu-mem-pxm-count`, added with `Scope` to the device QEMU's DSDT already has for the
//! GPU's slot: a second device with the same `_ADR` would not become the function's ACPI
//! companion, and the driver reads the properties through the companion
//! (`nvgrace_gpu_fetch_memory_property`). The AML is built with rust-vmm's `acpi_tables`.

use acpi_tables::aml::{Name, Package, Path as AmlPath, Scope, Uuid};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;
use anyhow::{Context, Result};

use crate::guest::host_view::{gpu_scope, HostGpu};

/// The device-properties UUID of `_DSD` (ACPI 6.x, "Device Properties UUID").
const DEVICE_PROPERTIES_UUID: &str = "daffd814-6eba-4d8c-8a91-bc9bbf4aa301";
/// OEM id and table id of the SSDT (what the guest's "Table Upgrade: install" line names).
const OEM_ID: [u8; 6] = *b"VGRACE";
const OEM_TABLE_ID: [u8; 8] = *b"GRACEGPU";

/// Writes the SSDT for the GPUs the flags or the file describe.
pub fn run(args: &crate::cli::AcpiArgs) -> Result<()> {
    let gpus = crate::guest::host_view::gpus(args.config.as_deref(), &args.device)?;
    let table = ssdt(&gpus);
    std::fs::write(&args.output, &table)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    for g in &gpus {
        println!(
            "{}: _DSD at {} (base {:#x}, size {:#x}, pxm {}+{})",
            g.id,
            gpu_scope(g.index),
            g.mem_base,
            g.mem_size,
            g.pxm_start,
            g.pxm_count
        );
    }
    Ok(())
}

/// The SSDT (header and AML) for `gpus`.
pub fn ssdt(gpus: &[HostGpu]) -> Vec<u8> {
    let mut aml = Vec::new();
    for g in gpus {
        gpu_dsd(g).to_aml_bytes(&mut aml);
    }
    let mut table = Sdt::new(*b"SSDT", 36, 2, OEM_ID, OEM_TABLE_ID, 1);
    table.append_slice(&aml);
    table.as_slice().to_vec()
}

/// `Scope (\_SB.PCI0.Sxx.S00) { Name (_DSD, Package { ToUUID (...), Package { ... } }) }`.
fn gpu_dsd(g: &HostGpu) -> ScopeOwned {
    ScopeOwned {
        path: gpu_scope(g.index),
        base: g.mem_base,
        size: g.mem_size,
        pxm_start: u64::from(g.pxm_start),
        pxm_count: u64::from(g.pxm_count),
    }
}

/// The values one GPU's scope holds; rendered on demand because the crate's AML objects borrow
/// their children.
struct ScopeOwned {
    path: String,
    base: u64,
    size: u64,
    pxm_start: u64,
    pxm_count: u64,
}

impl Aml for ScopeOwned {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let uuid = Uuid::new(DEVICE_PROPERTIES_UUID);
        let base = Package::new(vec![&"nvidia,gpu-mem-base-pa", &self.base]);
        let size = Package::new(vec![&"nvidia,gpu-mem-size", &self.size]);
        let pxm_start = Package::new(vec![&"nvidia,gpu-mem-pxm-start", &self.pxm_start]);
        let pxm_count = Package::new(vec![&"nvidia,gpu-mem-pxm-count", &self.pxm_count]);
        let properties = Package::new(vec![&base, &size, &pxm_start, &pxm_count]);
        let dsd = Package::new(vec![&uuid, &properties]);
        let name = Name::new(AmlPath::new("_DSD"), &dsd);
        Scope::new(AmlPath::new(&padded(&self.path)), vec![&name]).to_aml_bytes(sink);
    }
}

/// An ASL path with each name segment padded to four characters with `_`, as AML stores it
/// (`\_SB.PCI0.S08` is `\_SB_.PCI0.S08_`).
fn padded(path: &str) -> String {
    let (root, rest) = match path.strip_prefix('\\') {
        Some(rest) => ("\\", rest),
        None => ("", path),
    };
    let segments: Vec<String> = rest.split('.').map(|s| format!("{s:_<4}")).collect();
    format!("{root}{}", segments.join("."))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn gpu(index: u32) -> HostGpu {
        HostGpu {
            index,
            id: format!("gpu{index}"),
            mem_base: 0x6000_0000,
            mem_size: 2660 << 20,
            pxm_start: 1 + 8 * index,
            pxm_count: 8,
        }
    }

    #[test]
    fn paths_are_padded_to_four_character_segments() {
        assert_eq!(padded("\\_SB.PCI0.S08.S00"), "\\_SB_.PCI0.S08_.S00_");
    }

    /// The table's length field covers the whole table and its bytes sum to 0 (mod 256), or
    /// the kernel's table upgrade refuses it.
    #[test]
    fn ssdt_length_and_checksum_are_valid() {
        let t = ssdt(&[gpu(0), gpu(1)]);
        assert_eq!(&t[0..4], b"SSDT");
        assert_eq!(
            u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
            t.len()
        );
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(&t[10..16], b"VGRACE");
    }

    /// Each GPU's properties are in the table as strings the driver looks up by name.
    #[test]
    fn ssdt_names_every_property_once_per_gpu() {
        let t = ssdt(&[gpu(0), gpu(1)]);
        for p in [
            "nvidia,gpu-mem-base-pa",
            "nvidia,gpu-mem-size",
            "nvidia,gpu-mem-pxm-start",
            "nvidia,gpu-mem-pxm-count",
        ] {
            let n = t
                .windows(p.len() + 1)
                .filter(|w| &w[..p.len()] == p.as_bytes() && w[p.len()] == 0)
                .count();
            assert_eq!(n, 2, "{p}");
        }
    }
}
