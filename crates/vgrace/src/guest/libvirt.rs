//! `vgrace qemu-args --format libvirt`: the node of [`super::node`] as a libvirt domain XML for
//! `virsh define`. What libvirt has elements for is said with them: the machine and its 64-bit
//! aperture (`<pcihole64>`: q35's pci-hole64-size, virt's highmem-mmio-size), the CPU and its
//! physical address bits, shared memfd guest RAM, the NUMA nodes (memory-less `<cell>`s for the
//! GPU memory), one `pcie-root-port` per GPU. What it has none for goes in `<qemu:commandline>`:
//! the `vfio-user-pci` devices (libvirt 12.8 has no vfio-user device) and their
//! `acpi-generic-initiator` objects (libvirt makes those only for host PCI devices, from their
//! `<acpi nodeset>`), and in `<qemu:override>` the root ports' `pref64-reserve`.
//!
//! Names line up by construction: a root port's alias `ua-vgrace-rpN` is its QEMU id, so it is
//! the device's `bus`; a `<cell id='N'>` is QEMU's `-numa node,nodeid=N`, so it is the
//! initiator's `node`. Every value from outside (paths, the name, the kernel command line) is
//! escaped; a character XML 1.0 cannot carry at all is refused.

use std::fmt::Write as _;

use anyhow::{bail, Result};

use super::node::{Gpu, Machine, Node, BAR0_SIZE, NODES_PER_GPU};
use crate::cli::{DomainType, LibvirtArgs};
use crate::units::human;

/// libvirt's QEMU namespace (`<qemu:commandline>`, `<qemu:override>`).
pub const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";
/// One root port per bus-0 slot from 1: q35 has its LPC/SATA/SMBus functions at 0x1f.
pub const MAX_GPUS: usize = 30;

/// The domain around the node, from the `--format libvirt` flags.
#[derive(Debug, Clone)]
pub struct Domain {
    /// `<name>`.
    pub name: String,
    /// `<domain type=...>`.
    pub kind: DomainType,
    /// `<vcpu>`, all in NUMA cell 0.
    pub vcpus: u32,
    /// Direct kernel boot: kernel, initramfs and command line.
    pub kernel: Option<String>,
    /// The initramfs.
    pub initrd: Option<String>,
    /// The kernel's command line.
    pub cmdline: Option<String>,
    /// A file for the serial console (else a pty).
    pub serial_log: Option<String>,
}

impl Domain {
    /// The domain from the flags, with their defaults; paths made absolute (libvirt wants
    /// them so).
    pub fn from_args(a: &LibvirtArgs) -> Result<Self> {
        let path =
            |p: &Option<std::path::PathBuf>| p.as_deref().map(crate::dirs::absolute).transpose();
        Ok(Self {
            name: a.name.clone().unwrap_or_else(|| "vgrace".into()),
            kind: a.domain_type.unwrap_or(DomainType::Kvm),
            vcpus: a.vcpus.unwrap_or(2),
            kernel: path(&a.kernel)?,
            initrd: path(&a.initrd)?,
            cmdline: a.cmdline.clone(),
            serial_log: path(&a.serial_log)?,
        })
    }
}

/// The first `--format libvirt` flag given, to refuse it with the text format.
pub fn given(a: &LibvirtArgs) -> Option<&'static str> {
    [
        (a.name.is_some(), "--name"),
        (a.domain_type.is_some(), "--domain-type"),
        (a.vcpus.is_some(), "--vcpus"),
        (a.kernel.is_some(), "--kernel"),
        (a.initrd.is_some(), "--initrd"),
        (a.cmdline.is_some(), "--cmdline"),
        (a.serial_log.is_some(), "--serial-log"),
    ]
    .into_iter()
    .find_map(|(set, flag)| set.then_some(flag))
}

/// The alias of `gpu`'s root port: libvirt passes a `ua-` alias to QEMU as the device id, so
/// it is the bus the GPU's `vfio-user-pci` names.
pub fn root_port_alias(gpu: &Gpu) -> String {
    format!("ua-vgrace-{}", gpu.root_port)
}

/// `s` for an XML attribute value (always in single quotes here, so `"` stays as it is: the
/// devices' JSON reads plainly) or text: `&`, `<`, `>`, `'` and the white space an attribute
/// would normalize (tab, newline, carriage return) as references. A character XML 1.0
/// cannot carry even as a reference (other control characters, U+FFFE, U+FFFF) is refused.
pub fn escape(s: &str) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => {
                let _ = write!(out, "&#{};", u32::from(c));
            }
            c if c < ' ' || c == '\u{fffe}' || c == '\u{ffff}' => {
                bail!("{s:?} has the character {c:?}, which XML cannot carry")
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// An XML comment line for people (`--` may not appear inside one).
fn comment(out: &mut String, indent: &str, text: &str) {
    let _ = writeln!(out, "{indent}<!-- {} -->", text.replace("--", "- -"));
}

/// The domain XML for `n`.
pub fn xml(n: &Node, d: &Domain) -> Result<String> {
    if n.gpus.len() > MAX_GPUS {
        bail!(
            "--format libvirt puts each GPU's root port in its own bus-0 slot: at most {MAX_GPUS} GPUs, not {}",
            n.gpus.len()
        );
    }
    if !n.guest_mem.is_multiple_of(1024) {
        bail!("libvirt counts memory in KiB: --guest-mem must be a multiple of 1 KiB");
    }
    let kind = match d.kind {
        DomainType::Kvm => "kvm",
        DomainType::Qemu => "qemu",
    };
    let mut out = String::new();
    comment(&mut out, "", &format!(
        "{} Grace GPU(s) served by `vgrace serve` (serve them with a socket group and mode that let libvirt's QEMU user connect); vfio-user-pci needs QEMU >= 10.1.",
        n.gpus.len()
    ));
    let _ = writeln!(out, "<domain type='{kind}' xmlns:qemu='{QEMU_NS}'>");
    let _ = writeln!(out, "  <name>{}</name>", escape(&d.name)?);
    comment(
        &mut out,
        "  ",
        "Guest RAM: NUMA cell 0's, shared memfd (the server maps it through DMA_MAP fds).",
    );
    let _ = writeln!(out, "  <memory unit='KiB'>{}</memory>", n.guest_mem / 1024);
    let _ = writeln!(out, "  <vcpu>{}</vcpu>", d.vcpus);
    out.push_str("  <memoryBacking>\n    <source type='memfd'/>\n    <access mode='shared'/>\n  </memoryBacking>\n");
    os(&mut out, n, d)?;
    cpu(&mut out, n, d);
    devices(&mut out, n, d)?;
    commandline(&mut out, n)?;
    out.push_str("</domain>\n");
    Ok(out)
}

/// `<os>` (machine, firmware, direct kernel boot) and `<features>`.
fn os(out: &mut String, n: &Node, d: &Domain) -> Result<()> {
    let arch = match n.machine {
        Machine::Q35 => "x86_64",
        Machine::Virt => "aarch64",
    };
    if n.machine == Machine::Virt {
        comment(out, "  ", "UEFI without secure boot (an unsigned kernel boots), which libvirt picks from the firmware the distribution describes (Debian: qemu-efi-aarch64): ACPI, and so the SRAT, needs it on arm64; a kernel still boots directly through fw_cfg.");
        out.push_str("  <os firmware='efi'>\n    <firmware>\n      <feature enabled='no' name='secure-boot'/>\n    </firmware>\n");
    } else {
        out.push_str("  <os>\n");
    }
    let _ = writeln!(
        out,
        "    <type arch='{arch}' machine='{}'>hvm</type>",
        n.machine.name()
    );
    match &d.kernel {
        Some(kernel) => {
            let _ = writeln!(out, "    <kernel>{}</kernel>", escape(kernel)?);
            if let Some(initrd) = &d.initrd {
                let _ = writeln!(out, "    <initrd>{}</initrd>", escape(initrd)?);
            }
            if let Some(cmdline) = &d.cmdline {
                let _ = writeln!(out, "    <cmdline>{}</cmdline>", escape(cmdline)?);
            }
        }
        None => {
            comment(out, "    ", "No --kernel: boot from a disk added to <devices> (<disk type='file' device='disk'>...).");
            out.push_str("    <boot dev='hd'/>\n");
        }
    }
    out.push_str("  </os>\n  <features>\n    <acpi/>\n");
    if n.machine == Machine::Virt {
        out.push_str("    <gic version='3'/>\n");
    }
    out.push_str("  </features>\n");
    Ok(())
}

/// `<cpu>`: QEMU's `max` model, on q35 the physical address bits that reach the aperture, and
/// the NUMA cells.
fn cpu(out: &mut String, n: &Node, d: &Domain) {
    out.push_str("  <cpu mode='maximum' check='none'>\n");
    if let Some(bits) = n.phys_bits {
        comment(out, "    ", &format!("phys-bits {bits} give the aperture room above RAM (the firmware puts 64-bit BARs at the top)."));
        let _ = writeln!(out, "    <maxphysaddr mode='emulate' bits='{bits}'/>");
    }
    if n.numa_nodes > 1 {
        comment(out, "    ", &format!(
            "NUMA: cell 0 holds CPUs and RAM; each GPU with memory gets {NODES_PER_GPU} memory-less cells (nvidia,gpu-mem-pxm-start/-count), {} in all: the guest kernel needs CONFIG_NODES_SHIFT >= {}. Cell N is QEMU's node N.",
            n.numa_nodes, n.nodes_shift_needed
        ));
    }
    out.push_str("    <numa>\n");
    let cpus = match d.vcpus {
        1 => "0".to_string(),
        v => format!("0-{}", v - 1),
    };
    let _ = writeln!(
        out,
        "      <cell id='0' cpus='{cpus}' memory='{}' unit='KiB'/>",
        n.guest_mem / 1024
    );
    for node in 1..n.numa_nodes {
        let _ = writeln!(out, "      <cell id='{node}' memory='0' unit='KiB'/>");
    }
    out.push_str("    </numa>\n  </cpu>\n");
}

/// `<devices>`: the aperture, a root port per GPU, no default USB or balloon (they would take
/// a GPU's root port), the serial console.
fn devices(out: &mut String, n: &Node, d: &Domain) -> Result<()> {
    out.push_str("  <devices>\n");
    if n.aperture == 0 {
        comment(
            out,
            "    ",
            "No 64-bit BARs (no device memory): the machine's default aperture will do.",
        );
        out.push_str("    <controller type='pci' index='0' model='pcie-root'/>\n");
    } else {
        let what = match n.machine {
            Machine::Q35 => "q35-pcihost.pci-hole64-size",
            Machine::Virt => {
                "virt's highmem-mmio-size (a power of two, at least its 512 GiB default)"
            }
        };
        comment(
            out,
            "    ",
            &format!(
                "The BARs need {} of 64-bit aperture, given {} ({what}).",
                human(n.aperture_needed),
                human(n.aperture)
            ),
        );
        let _ = writeln!(
            out,
            "    <controller type='pci' index='0' model='pcie-root'>\n      <pcihole64 unit='KiB'>{}</pcihole64>\n    </controller>",
            n.aperture / 1024
        );
    }
    for (i, g) in n.gpus.iter().enumerate() {
        let window = match g.pref64_window {
            0 => "no 64-bit BARs, so no prefetchable window".to_string(),
            w => format!("window {} (pref64-reserve, in <qemu:override>)", human(w)),
        };
        comment(out, "    ", &format!(
            "{}'s root port: the GPU alone at 00.0 behind it, where the guest driver looks for its SRAT entries; {window}.",
            g.id
        ));
        let _ = writeln!(
            out,
            "    <controller type='pci' index='{index}' model='pcie-root-port'>\n      <target chassis='{index}' memReserve='{reserve}'/>\n      <alias name='{alias}'/>\n      <address type='pci' domain='0x0000' bus='0x00' slot='{index:#04x}' function='0x0'/>\n    </controller>",
            index = i + 1,
            reserve = BAR0_SIZE * 2 / 1024,
            alias = root_port_alias(g),
        );
    }
    out.push_str("    <controller type='usb' model='none'/>\n    <memballoon model='none'/>\n");
    match &d.serial_log {
        Some(path) => {
            let _ = writeln!(out, "    <serial type='file'>\n      <source path='{}'/>\n      <target port='0'/>\n    </serial>", escape(path)?);
        }
        None => out.push_str("    <serial type='pty'>\n      <target port='0'/>\n    </serial>\n"),
    }
    out.push_str("  </devices>\n");
    Ok(())
}

/// `<qemu:commandline>` (the devices and their initiators) and `<qemu:override>` (the root
/// ports' prefetchable windows).
fn commandline(out: &mut String, n: &Node) -> Result<()> {
    comment(out, "  ", "What libvirt has no element for: each vfio-user-pci device on its root port (bus = the port's alias), and an acpi-generic-initiator for each of its NUMA cells (node = the cell id).");
    out.push_str("  <qemu:commandline>\n");
    let arg = |out: &mut String, v: &str| -> Result<()> {
        let _ = writeln!(out, "    <qemu:arg value='{}'/>", escape(v)?);
        Ok(())
    };
    for g in &n.gpus {
        let device = serde_json::json!({
            "driver": "vfio-user-pci",
            "id": g.id,
            "bus": root_port_alias(g),
            "addr": "0.0",
            "socket": { "path": g.socket, "type": "unix" },
        });
        arg(out, "-device")?;
        arg(out, &device.to_string())?;
        let nodes = g.numa_nodes.map(|(first, last)| first..=last);
        for node in nodes.into_iter().flatten() {
            arg(out, "-object")?;
            arg(
                out,
                &format!(
                    "acpi-generic-initiator,id=gi{node},pci-dev={},node={node}",
                    g.id
                ),
            )?;
        }
    }
    out.push_str("  </qemu:commandline>\n");
    if n.gpus.iter().any(|g| g.pref64_window > 0) {
        out.push_str("  <qemu:override>\n");
        for g in n.gpus.iter().filter(|g| g.pref64_window > 0) {
            let _ = writeln!(
                out,
                "    <qemu:device alias='{}'>\n      <qemu:frontend>\n        <qemu:property name='pref64-reserve' type='unsigned' value='{}'/>\n      </qemu:frontend>\n    </qemu:device>",
                root_port_alias(g),
                g.pref64_window
            );
        }
        out.push_str("  </qemu:override>\n");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn escape_turns_markup_and_white_space_into_references() {
        assert_eq!(
            escape("a&b<c>'d\"\te\nf").unwrap(),
            "a&amp;b&lt;c&gt;&apos;d\"&#9;e&#10;f"
        );
        assert_eq!(
            escape("/run/vgrace/gpu0.sock").unwrap(),
            "/run/vgrace/gpu0.sock"
        );
    }

    #[test]
    fn escape_refuses_what_xml_cannot_carry() {
        for bad in ["a\u{1}b", "\u{0}", "x\u{ffff}"] {
            let err = escape(bad).unwrap_err().to_string();
            assert!(err.contains("XML cannot carry"), "{err}");
        }
    }
}
