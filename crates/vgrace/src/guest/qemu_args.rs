//! `vgrace qemu-args`: the QEMU command line that attaches one GPU, or a whole node of them, to a
//! guest: each GPU alone behind its own root port, the aperture their BARs need, shareable guest
//! RAM, eight memory-less NUMA nodes per GPU tied to it by ACPI generic initiators, and what the
//! machine needs for ACPI. Every group of arguments follows a one-line comment.

use std::fmt::Write as _;
use std::io::Write;

use anyhow::{bail, Result};
use vgrace_device::Layout;

use super::node::{node, Gpu, Machine, Node, BAR0_SIZE, NODES_PER_GPU, VIRT_HIGHMEM_MMIO_DEFAULT};
use crate::cli::{QemuArgsArgs, QemuArgsFormat};
use crate::dirs::absolute;
use crate::units::{human, qemu_size};

/// Prints the arguments (or JSON).
pub fn run(args: &QemuArgsArgs) -> Result<()> {
    let libvirt = args.format == QemuArgsFormat::Libvirt;
    if let Some(flag) = super::libvirt::given(&args.libvirt).filter(|_| !libvirt) {
        bail!("{flag} is for a libvirt domain: give --format libvirt too");
    }
    if libvirt && args.json {
        bail!("--json is the text format's arguments as JSON; --format libvirt prints XML");
    }
    if args.view == crate::view::View::Host {
        if libvirt {
            bail!(
                "--format libvirt is for the vfio view (the L1 host of --view host is text only)"
            );
        }
        return super::qemu_host::run(args);
    }
    let gpus: Vec<(Layout, String)> = match &args.config {
        Some(path) => crate::node_file::load(path)?
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
    let mut out = crate::out::stdout();
    if libvirt {
        let domain = super::libvirt::Domain::from_args(&args.libvirt)?;
        write!(out, "{}", super::libvirt::xml(&n, &domain)?)?;
        return Ok(());
    }
    let items = items(&n);
    if args.json {
        let value = serde_json::json!({ "node": n, "args": argv(&items) });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        write!(out, "{}", text(&items))?;
    }
    Ok(())
}

/// One piece of the output: a comment for people, or a group of argv tokens (one line of text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A one-line comment (printed after `# `; left out of the argv).
    Comment(String),
    /// Arguments exactly as QEMU's argv gets them.
    Args(Vec<String>),
}

/// The argv tokens of `items`, in order: what `execve` passes QEMU (the JSON `args`).
pub fn argv(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Args(a) => Some(a.iter().cloned()),
            Item::Comment(_) => None,
        })
        .flatten()
        .collect()
}

/// The text form: each comment on its own line, each group of arguments on one line of
/// shell words (quoted where the shell would change them).
pub fn text(items: &[Item]) -> String {
    let mut out = String::new();
    for item in items {
        let _ = match item {
            Item::Comment(c) => writeln!(out, "# {c}"),
            Item::Args(a) => {
                let words: Vec<String> = a.iter().map(|w| shell_quote(w)).collect();
                writeln!(out, "{}", words.join(" "))
            }
        };
    }
    out
}

/// `word` as one shell word: as it is when only safe characters, else in single quotes.
fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_.,=/:+@%".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// The arguments for `n`, a comment before each group.
pub fn items(n: &Node) -> Vec<Item> {
    let mut out = Items(Vec::new());
    out.header(n);
    match n.machine {
        Machine::Virt => out.virt(n),
        Machine::Q35 => out.q35(n),
    }
    out.ram(n);
    for (i, g) in n.gpus.iter().enumerate() {
        out.gpu(i, g);
    }
    out.0
}

/// The list `items` builds, one group of the command line per method.
struct Items(Vec<Item>);

impl Items {
    fn comment(&mut self, s: impl Into<String>) {
        self.0.push(Item::Comment(s.into()));
    }

    fn args(&mut self, a: &[&str]) {
        self.0
            .push(Item::Args(a.iter().map(|s| (*s).to_string()).collect()));
    }

    /// What is served and how much aperture it takes.
    fn header(&mut self, n: &Node) {
        let count = n.gpus.len();
        self.comment(if n.aperture == 0 {
            format!("{count} Grace GPU(s) served by `vgrace serve`; no 64-bit BARs (no device memory): the machine's default MMIO aperture will do.")
        } else {
            format!(
                "{count} Grace GPU(s) served by `vgrace serve`; the BARs need {} of 64-bit MMIO aperture, given {}.",
                human(n.aperture_needed),
                human(n.aperture)
            )
        });
        self.comment("vfio-user-pci needs QEMU >= 10.1 and only accepts the JSON form.");
    }

    /// arm64 `virt`: the aperture is highmem-mmio-size, ACPI needs UEFI.
    fn virt(&mut self, n: &Node) {
        let mut machine = "virt,gic-version=max".to_string();
        if n.aperture == 0 {
            self.comment("arm64 virt: ACPI (SRAT) needs UEFI, else the guest boots from a device tree with one node.");
        } else {
            self.comment(format!(
                "arm64 virt: highmem-mmio-size is the aperture (a power of two, at least QEMU's {} default); ACPI (SRAT) needs UEFI, else the guest boots from a device tree with one node.",
                human(VIRT_HIGHMEM_MMIO_DEFAULT)
            ));
            let _ = write!(machine, ",highmem-mmio-size={}", qemu_size(n.aperture));
        }
        self.args(&["-machine", &machine]);
        self.comment("The CPU must reach the aperture: -cpu max does, 40-bit CPUs (cortex-a53) drop it silently.");
        self.args(&["-cpu", "max"]);
        self.comment(
            "UEFI firmware (Debian's qemu-efi-aarch64); -kernel/-initrd still work through fw_cfg.",
        );
        self.args(&["-bios", "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"]);
    }

    /// x86 `q35`: phys-bits bound where the firmware puts the BARs.
    fn q35(&mut self, n: &Node) {
        let bits = n.phys_bits.unwrap_or(44);
        let cpu = format!("max,phys-bits={bits}");
        if n.aperture == 0 {
            self.comment(format!(
                "x86 q35 with QEMU's default 64-bit hole; phys-bits {bits} reach above RAM."
            ));
            self.args(&["-machine", "q35"]);
        } else {
            // Under SeaBIOS pci-hole64-size alone does not bound the BARs (QEMU 11.1): the
            // firmware puts them at the top of the phys-bits address space and QEMU's _CRS
            // grows the hole over what it programmed; a 64 GiB hole with phys-bits 44 still
            // fits four 480 GiB GPUs. phys-bits is the bound, and the hole makes QEMU refuse
            // one too small.
            self.comment(format!(
                "x86 q35: phys-bits {bits} give the aperture room above RAM (the firmware puts 64-bit BARs at the top); with pci-hole64-size QEMU refuses fewer bits than the aperture needs."
            ));
            let hole = format!("q35-pcihost.pci-hole64-size={}", qemu_size(n.aperture));
            self.args(&["-machine", "q35", "-global", &hole]);
        }
        self.args(&["-cpu", &cpu]);
    }

    /// Shared guest RAM as NUMA node 0.
    fn ram(&mut self, n: &Node) {
        let ram = qemu_size(n.guest_mem);
        self.comment("Guest RAM must be shareable: the server maps it through DMA_MAP fds. It is node 0's memdev (QEMU refuses -machine memory-backend with -numa memdev), and -m is its size (the memdevs must add up to -m).");
        self.args(&["-m", &ram]);
        self.args(&[
            "-object",
            &format!("memory-backend-memfd,id=ram0,size={ram},share=on"),
        ]);
        if n.numa_nodes > 1 {
            self.comment(format!(
                "NUMA: node 0 holds CPUs and RAM; each GPU with memory gets {NODES_PER_GPU} memory-less nodes (nvidia,gpu-mem-pxm-start/-count), {} in all: the guest kernel needs CONFIG_NODES_SHIFT >= {} (Debian arm64 kernels have 4, amd64 10).",
                n.numa_nodes, n.nodes_shift_needed
            ));
        } else {
            self.comment(
                "NUMA: node 0 holds CPUs and RAM; no GPU has memory, so none has NUMA nodes.",
            );
        }
        // Not also `-machine memory-backend=ram0`: QEMU refuses it next to `-numa memdev` ("'-machine
        // memory-backend' and '-numa memdev' properties are mutually exclusive").
        self.args(&["-numa", "node,nodeid=0,memdev=ram0"]);
    }

    /// GPU `i`: its root port, the vfio-user-pci device, its NUMA nodes and initiators.
    fn gpu(&mut self, i: usize, g: &Gpu) {
        let bars: Vec<String> = std::iter::once(format!("BAR0 {}", human(BAR0_SIZE)))
            .chain(
                g.bars
                    .iter()
                    .map(|(bar, size)| format!("BAR{bar} {}", human(*size))),
            )
            .collect();
        let mut port = format!(
            "pcie-root-port,id={},bus=pcie.0,chassis={},slot={},mem-reserve={}",
            g.root_port,
            i + 1,
            i + 1,
            qemu_size(BAR0_SIZE * 2)
        );
        if g.pref64_window == 0 {
            self.comment(format!(
                "{} ({}: {}) alone behind root port {} at 00.0; no 64-bit BARs, so no prefetchable window.",
                g.id, g.device, bars.join(", "), g.root_port
            ));
        } else {
            self.comment(format!(
                "{} ({}: {}) alone behind root port {} at 00.0, where the guest driver looks for its SRAT entries; window {}.",
                g.id, g.device, bars.join(", "), g.root_port, human(g.pref64_window)
            ));
            let _ = write!(port, ",pref64-reserve={}", qemu_size(g.pref64_window));
        }
        self.args(&["-device", &port]);
        let device = serde_json::json!({
            "driver": "vfio-user-pci",
            "id": g.id,
            "bus": g.root_port,
            "addr": "0.0",
            "socket": { "path": g.socket, "type": "unix" },
        });
        self.args(&["-device", &device.to_string()]);
        let Some((first, last)) = g.numa_nodes else {
            return;
        };
        self.comment(format!(
            "Nodes {first}-{last} for {}'s memory, each tied to it by an acpi-generic-initiator.",
            g.id
        ));
        for node in first..=last {
            self.args(&["-numa", &format!("node,nodeid={node}")]);
            self.args(&[
                "-object",
                &format!(
                    "acpi-generic-initiator,id=gi{node},pci-dev={},node={node}",
                    g.id
                ),
            ]);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use vgrace_device::{GpuConfig, Profile};

    const GIB: u64 = 1 << 30;

    /// `count` GPUs of `profile` with `size` of memory, as `machine` sees them, 8 GiB of RAM.
    fn gpus(machine: Machine, profile: Profile, size: u64, count: usize) -> Node {
        let l: Vec<Layout> = (0..count)
            .map(|_| GpuConfig::memfd(profile, size).layout().unwrap())
            .collect();
        let gpus: Vec<(&Layout, String)> = l
            .iter()
            .enumerate()
            .map(|(i, x)| (x, format!("/run/gpu{i}.sock")))
            .collect();
        node(machine, &gpus, 8 * GIB)
    }

    /// The value of `key=` in the argument after `flag` whose text starts with `start`.
    fn property(argv: &[String], flag: &str, start: &str, key: &str) -> Option<String> {
        argv.windows(2)
            .filter(|w| w[0] == flag && w[1].starts_with(start))
            .flat_map(|w| w[1].split(',').map(str::to_string).collect::<Vec<_>>())
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
    }

    /// QEMU's size syntax back to bytes (what `qemu_size` prints).
    fn bytes(size: &str) -> u64 {
        vgrace_device::parse_size(size).unwrap()
    }

    /// QEMU 11.1 refuses a `virt` highmem-mmio-size below its 512 GiB default, and one that is
    /// not a power of two: one 2 GiB GPU used to get 2G, one 96 GiB GPU 256G.
    #[test]
    fn highmem_mmio_size_is_at_least_512g_on_virt() {
        for profile in [Profile::Gh100, Profile::Gb200] {
            for size in [2 * GIB, 96 * GIB, 480 * GIB, 0] {
                for count in [1, 2, 4] {
                    let n = gpus(Machine::Virt, profile, size, count);
                    let argv = argv(&items(&n));
                    let what = format!("{profile} {size} x{count}");
                    let Some(mmio) = property(&argv, "-machine", "virt", "highmem-mmio-size")
                    else {
                        // Only a device without any 64-bit BAR leaves the default alone.
                        assert_eq!(n.aperture_needed, 0, "{what}");
                        continue;
                    };
                    let mmio = bytes(&mmio);
                    assert!(mmio >= 512 * GIB, "{what}: {mmio}");
                    assert!(mmio.is_power_of_two(), "{what}: {mmio}");
                    assert!(mmio >= n.aperture_needed, "{what}");
                }
            }
        }
    }

    /// `--json` args are argv tokens (what execve passes), not shell-quoted groups: the device
    /// is one token of plain JSON, every flag its own element, and the text form splits into
    /// the same tokens.
    #[test]
    fn json_args_are_one_token_per_element() {
        let items = items(&gpus(Machine::Q35, Profile::Gb200, 96 * GIB, 2));
        let argv = argv(&items);
        for (i, flag) in argv.iter().enumerate().step_by(2) {
            assert!(flag.starts_with('-') && !flag.contains(' '), "{i}: {flag}");
        }
        let devices: Vec<&String> = argv.iter().filter(|a| a.starts_with('{')).collect();
        assert_eq!(devices.len(), 2);
        for d in devices {
            let v: serde_json::Value = serde_json::from_str(d).unwrap();
            assert_eq!(v["driver"], "vfio-user-pci");
        }
        assert!(argv
            .iter()
            .all(|a| !a.starts_with('\'') && !a.starts_with('#')));
        // The text form is the same argv in shell words.
        let words: Vec<String> = text(&items)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .flat_map(|l| {
                let mut words = Vec::new();
                let mut rest = l;
                while !rest.is_empty() {
                    if let Some(quoted) = rest.strip_prefix('\'') {
                        let end = quoted.find('\'').unwrap();
                        words.push(quoted[..end].to_string());
                        rest = quoted[end + 1..].trim_start();
                    } else {
                        let end = rest.find(' ').unwrap_or(rest.len());
                        words.push(rest[..end].to_string());
                        rest = rest[end..].trim_start();
                    }
                }
                words
            })
            .collect();
        assert_eq!(words, argv);
    }

    #[test]
    fn shell_quoting_keeps_a_quote_in_a_word() {
        assert_eq!(shell_quote("max,phys-bits=44"), "max,phys-bits=44");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    /// A device without memory (`--mem-size 0`, C2C link down) used to get a 1-byte aperture
    /// and 8 NUMA nodes: it needs neither, nor generic initiators or a 64-bit window.
    #[test]
    fn link_down_device_needs_no_aperture_or_numa_nodes() {
        for machine in [Machine::Virt, Machine::Q35] {
            let n = gpus(machine, Profile::Gh100, 0, 2);
            let argv = argv(&items(&n));
            let all = argv.join(" ");
            assert_eq!(n.aperture, 0);
            assert!(!all.contains("highmem-mmio-size"), "{all}");
            assert!(!all.contains("pci-hole64-size"), "{all}");
            assert!(!all.contains("pref64-reserve"), "{all}");
            assert!(!all.contains("acpi-generic-initiator"), "{all}");
            assert_eq!(argv.iter().filter(|a| *a == "-numa").count(), 1, "{all}");
            assert_eq!(all.matches("vfio-user-pci").count(), 2, "{all}");
        }
        // gb200 keeps its real BAR1 without memory: a window and an aperture for it, no nodes.
        let n = gpus(Machine::Virt, Profile::Gb200, 0, 1);
        let argv = argv(&items(&n));
        assert_eq!(
            property(&argv, "-device", "pcie-root-port", "pref64-reserve").as_deref(),
            Some("128G")
        );
        assert_eq!(
            property(&argv, "-machine", "virt", "highmem-mmio-size").as_deref(),
            Some("512G")
        );
        assert!(!argv.join(" ").contains("acpi-generic-initiator"));
    }

    /// With `-numa node,memdev=` QEMU wants the memdevs to add up to `-m` (its default RAM is
    /// 128 MiB): `-m` is printed and equals the one memory backend's size.
    #[test]
    fn m_matches_the_numa_memdevs() {
        for machine in [Machine::Virt, Machine::Q35] {
            for ram in [512 << 20, 8 * GIB, 3 * GIB + (1 << 20)] {
                let l = GpuConfig::memfd(Profile::Gh100, 96 * GIB).layout().unwrap();
                let n = node(machine, &[(&l, "/s".into())], ram);
                let argv = argv(&items(&n));
                let m: Vec<&String> = argv
                    .windows(2)
                    .filter(|w| w[0] == "-m")
                    .map(|w| &w[1])
                    .collect();
                assert_eq!(m.len(), 1, "{argv:?}");
                assert_eq!(bytes(m[0]), ram);
                let memdevs: Vec<String> = argv
                    .windows(2)
                    .filter(|w| w[0] == "-numa")
                    .filter_map(|w| {
                        w[1].split(',')
                            .find_map(|kv| kv.strip_prefix("memdev=").map(str::to_string))
                    })
                    .collect();
                let sum: u64 = memdevs
                    .iter()
                    .map(|id| {
                        bytes(
                            &property(
                                &argv,
                                "-object",
                                &format!("memory-backend-memfd,id={id},"),
                                "size",
                            )
                            .unwrap(),
                        )
                    })
                    .sum();
                assert_eq!(sum, ram, "{argv:?}");
            }
        }
    }

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
        let text = text(&items(&four()));
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
        let text = text(&items(&four()));
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
            let text = text(&items(&n));
            assert!(!text.contains("memory-backend="), "{text}");
            assert_eq!(text.matches("memdev=ram0").count(), 1, "{text}");
            assert!(text.contains("-object memory-backend-memfd,id=ram0,size=8G,share=on"));
        }
    }

    #[test]
    fn every_argument_group_follows_a_comment() {
        let text = text(&items(&four()));
        assert!(text.lines().next().unwrap().starts_with('#'));
    }

    #[test]
    fn sizes_print_in_qemu_units() {
        assert_eq!(qemu_size(4 << 40), "4T");
        assert_eq!(qemu_size(513 << 30), "513G");
        assert_eq!(qemu_size(32 << 20), "32M");
        assert_eq!(qemu_size(12345), "12345");
    }
}
