//! `vgrace qemu-args --format libvirt`: the domain XML parses, and its names line up (each
//! `vfio-user-pci` on the bus its root port's alias makes, each generic initiator on a NUMA cell
//! that exists and holds no memory), with the numbers of the node `--json` describes. No libvirt
//! needed: scripts/qemu-libvirt.sh boots the XML with `virsh` (CI).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use common::vgrace;
use roxmltree::{Document, Node};

const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// A node config of `n` GH100s of `mem` each, sockets in `dir`.
fn node_config(dir: &Path, n: usize, mem: &str) -> PathBuf {
    let cfg = dir.join("node.toml");
    let text: String = (0..n)
        .map(|i| {
            format!(
                "[[device]]\nsocket = \"{}\"\nmem_size = \"{mem}\"\n\n",
                dir.join(format!("gpu{i}.sock")).display()
            )
        })
        .collect();
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// `vgrace qemu-args ARGS --format libvirt`'s XML (the command must succeed).
fn domain_xml(args: &[&str]) -> String {
    let mut all = vec!["qemu-args", "--format", "libvirt"];
    all.extend_from_slice(args);
    let out = vgrace(&all);
    assert!(
        out.status.success(),
        "{all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `vgrace qemu-args ARGS --json`'s node.
fn node_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["qemu-args", "--json"];
    all.extend_from_slice(args);
    let out = vgrace(&all);
    assert!(out.status.success());
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["node"].clone()
}

fn elements<'a, 'i>(doc: &'a Document<'i>, name: &str) -> Vec<Node<'a, 'i>> {
    doc.descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == name)
        .collect()
}

/// The `<qemu:arg>` values in order.
fn qemu_args<'a>(doc: &'a Document) -> Vec<&'a str> {
    doc.descendants()
        .filter(|n| n.has_tag_name((QEMU_NS, "arg")))
        .map(|n| n.attribute("value").unwrap())
        .collect()
}

/// The `vfio-user-pci` devices of the command line, as JSON.
fn devices(args: &[&str]) -> Vec<serde_json::Value> {
    args.windows(2)
        .filter(|w| w[0] == "-device")
        .map(|w| serde_json::from_str::<serde_json::Value>(w[1]).unwrap())
        .filter(|v| v["driver"] == "vfio-user-pci")
        .collect()
}

/// `key=value` pairs of each `-object acpi-generic-initiator,...`.
fn initiators(args: &[&str]) -> Vec<HashMap<String, String>> {
    args.windows(2)
        .filter(|w| w[0] == "-object" && w[1].starts_with("acpi-generic-initiator,"))
        .map(|w| {
            w[1].split(',')
                .skip(1)
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_string(), v.to_string())
                })
                .collect()
        })
        .collect()
}

/// Four 480 GiB GPUs on q35 and on virt: the XML is well-formed, one device per GPU on a
/// distinct root port whose alias is its bus, one initiator per memory-less cell and none
/// elsewhere, cell ids 0..N in order, and the aperture, phys-bits, windows and RAM of `--json`.
#[test]
fn libvirt_domain_for_four_gpus_has_matching_buses_cells_and_initiators() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = node_config(dir.path(), 4, "480G");
    let cfg = cfg.to_str().unwrap();
    for machine in ["q35", "virt"] {
        let common = ["--config", cfg, "--machine", machine, "--guest-mem", "8G"];
        let xml = domain_xml(&common);
        let node = node_json(&common);
        let doc = Document::parse(&xml).unwrap_or_else(|e| panic!("{machine}: {e}\n{xml}"));
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "domain");
        assert_eq!(root.attribute("type"), Some("kvm"), "the default type");

        // Root ports: explicit, distinct indexes and aliases.
        let ports: Vec<Node> = elements(&doc, "controller")
            .into_iter()
            .filter(|c| c.attribute("model") == Some("pcie-root-port"))
            .collect();
        assert_eq!(ports.len(), 4, "{machine}");
        let alias = |c: &Node| {
            c.children()
                .find(|n| n.has_tag_name("alias"))
                .and_then(|a| a.attribute("name"))
                .unwrap()
                .to_string()
        };
        let aliases: BTreeSet<String> = ports.iter().map(alias).collect();
        let indexes: BTreeSet<&str> = ports
            .iter()
            .map(|c| c.attribute("index").unwrap())
            .collect();
        assert_eq!((aliases.len(), indexes.len()), (4, 4), "{machine}");
        assert!(aliases.iter().all(|a| a.starts_with("ua-")), "{aliases:?}");

        // One device per GPU, each alone on a root port named by its alias.
        let args = qemu_args(&doc);
        let devs = devices(&args);
        assert_eq!(devs.len(), 4, "{machine}");
        let buses: BTreeSet<String> = devs
            .iter()
            .map(|d| d["bus"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            buses, aliases,
            "{machine}: the buses are the root ports' aliases"
        );
        for (i, d) in devs.iter().enumerate() {
            assert_eq!(d["addr"], "0.0");
            assert_eq!(d["socket"]["path"], node["gpus"][i]["socket"]);
        }

        // NUMA cells 0..33 in order; cell 0 has the RAM and the CPUs, the others neither.
        let cells = elements(&doc, "cell");
        let ids: Vec<u32> = cells
            .iter()
            .map(|c| c.attribute("id").unwrap().parse().unwrap())
            .collect();
        assert_eq!(ids, (0..33).collect::<Vec<u32>>(), "{machine}");
        assert_eq!(node["numa_nodes"], 33);
        let empty: BTreeSet<String> = cells
            .iter()
            .filter(|c| c.attribute("memory") == Some("0"))
            .map(|c| c.attribute("id").unwrap().to_string())
            .collect();
        assert_eq!(empty.len(), 32);
        assert_eq!(cells[0].attribute("memory"), Some("8388608"));
        assert_eq!(cells[0].attribute("cpus"), Some("0-1"));
        assert!(cells[1..].iter().all(|c| c.attribute("cpus").is_none()));

        // The initiators: one per memory-less cell, eight per GPU, naming a real device.
        let gis = initiators(&args);
        let nodes: BTreeSet<String> = gis.iter().map(|g| g["node"].clone()).collect();
        assert_eq!((gis.len(), nodes), (32, empty), "{machine}");
        let ids: BTreeSet<&str> = devs.iter().map(|d| d["id"].as_str().unwrap()).collect();
        for id in &ids {
            assert_eq!(gis.iter().filter(|g| g["pci-dev"] == *id).count(), 8);
        }

        // The numbers of the node.
        let hole = elements(&doc, "pcihole64");
        assert_eq!(hole.len(), 1);
        assert_eq!(hole[0].attribute("unit"), Some("KiB"));
        let kib: u64 = hole[0].text().unwrap().parse().unwrap();
        assert_eq!(kib * 1024, node["aperture"].as_u64().unwrap());
        assert_eq!(kib * 1024, 4 << 40);
        let bits = elements(&doc, "maxphysaddr");
        match machine {
            "q35" => assert_eq!(
                bits[0].attribute("bits"),
                Some(node["phys_bits"].to_string().as_str())
            ),
            _ => assert!(bits.is_empty(), "virt has no phys-bits"),
        }
        let reserves: Vec<u64> = doc
            .descendants()
            .filter(|n| n.has_tag_name((QEMU_NS, "property")))
            .filter(|n| n.attribute("name") == Some("pref64-reserve"))
            .map(|n| n.attribute("value").unwrap().parse().unwrap())
            .collect();
        let windows: Vec<u64> = (0..4)
            .map(|i| node["gpus"][i]["pref64_window"].as_u64().unwrap())
            .collect();
        assert_eq!(reserves, windows, "{machine}");
        assert_eq!(elements(&doc, "memory")[0].text(), Some("8388608"));
        let source = elements(&doc, "source");
        assert!(source.iter().any(|s| s.attribute("type") == Some("memfd")));
        let access = elements(&doc, "access");
        assert_eq!(access[0].attribute("mode"), Some("shared"));
    }
}

/// Socket paths, the name and the kernel command line may hold XML's markup characters: they
/// come out escaped, and read back exactly.
#[test]
fn libvirt_domain_escapes_a_hostile_socket_path() {
    let socket = "/tmp/it's a <gpu> & \"its\" socket\twith a tab and a bell\u{7}.sock";
    let name = "vm'&<x>";
    let cmdline = "console=ttyS0 a='b' c=\"d\" e&f <g>";
    let xml = domain_xml(&[
        "--socket",
        socket,
        "--machine",
        "q35",
        "--name",
        name,
        "--kernel",
        "/boot/vmlinuz",
        "--cmdline",
        cmdline,
        "--serial-log",
        "/tmp/con&sole's.log",
    ]);
    let doc = Document::parse(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
    let devs = devices(&qemu_args(&doc));
    assert_eq!(devs.len(), 1);
    assert_eq!(devs[0]["socket"]["path"], socket);
    assert_eq!(elements(&doc, "name")[0].text(), Some(name));
    assert_eq!(elements(&doc, "cmdline")[0].text(), Some(cmdline));
    let serial = elements(&doc, "serial")[0];
    let path = serial
        .children()
        .find(|n| n.has_tag_name("source"))
        .unwrap();
    assert_eq!(path.attribute("path"), Some("/tmp/con&sole's.log"));
}

/// A control character in a path cannot be written in XML 1.0, not even as a reference: one
/// line and exit 1, no half document. (In a socket path it can: the device's JSON escapes it.)
#[test]
fn libvirt_domain_refuses_a_path_xml_cannot_carry() {
    let out = vgrace(&[
        "qemu-args",
        "--format",
        "libvirt",
        "--serial-log",
        "/tmp/bell\u{7}.log",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("XML cannot carry"), "{err}");
    assert!(out.stdout.is_empty());
}

/// The domain flags mean nothing to the text format, `--json` nothing to the XML, and the host
/// view has no domain: each is refused, naming the flag.
#[test]
fn libvirt_flags_are_refused_where_they_mean_nothing() {
    for (args, want) in [
        (
            &["qemu-args", "--name", "x"][..],
            "--name is for a libvirt domain",
        ),
        (
            &["qemu-args", "--kernel", "/k"],
            "--kernel is for a libvirt domain",
        ),
        (&["qemu-args", "--domain-type", "qemu"], "--domain-type"),
        (&["qemu-args", "--format", "libvirt", "--json"], "--json"),
        (
            &["qemu-args", "--format", "libvirt", "--view", "host"],
            "--format libvirt is for the vfio view",
        ),
        (
            &["qemu-args", "--format", "libvirt", "--guest-mem", "1000000"],
            "multiple of 1 KiB",
        ),
    ] {
        let out = vgrace(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// A GPU without memory (C2C link down) has no NUMA cells, initiators, window or aperture in
/// the XML either; the direct boot and the TCG type come from the flags.
#[test]
fn libvirt_domain_for_a_link_down_gpu_has_one_cell_and_no_initiators() {
    let xml = domain_xml(&[
        "--mem-size",
        "0",
        "--machine",
        "virt",
        "--domain-type",
        "qemu",
        "--vcpus",
        "1",
    ]);
    let doc = Document::parse(&xml).unwrap();
    assert_eq!(doc.root_element().attribute("type"), Some("qemu"));
    let cells = elements(&doc, "cell");
    assert_eq!(cells.len(), 1);
    assert_eq!(cells[0].attribute("cpus"), Some("0"));
    let args = qemu_args(&doc);
    assert_eq!(devices(&args).len(), 1);
    assert!(initiators(&args).is_empty());
    assert!(elements(&doc, "pcihole64").is_empty());
    assert!(elements(&doc, "override").is_empty());
    // No kernel given: a disk boot, and the UEFI firmware virt needs for ACPI.
    assert_eq!(elements(&doc, "boot")[0].attribute("dev"), Some("hd"));
    assert_eq!(elements(&doc, "os")[0].attribute("firmware"), Some("efi"));
}

/// docs/libvirt.md's example is exactly what its command prints.
#[test]
fn docs_libvirt_example_is_what_qemu_args_prints() {
    let doc = include_str!("../../../docs/libvirt.md");
    let start = doc
        .find("```xml\n")
        .expect("docs/libvirt.md has an xml block")
        + "```xml\n".len();
    let block = &doc[start..];
    let block = &block[..block.find("```").unwrap()];
    let xml = domain_xml(&[
        "--socket",
        "/run/vgrace/gpu0.sock",
        "--mem-size",
        "96G",
        "--machine",
        "q35",
        "--name",
        "gpu-vm",
        "--kernel",
        "/var/lib/libvirt/boot/vmlinuz",
        "--initrd",
        "/var/lib/libvirt/boot/initrd.img",
        "--cmdline",
        "console=ttyS0 root=/dev/vda1",
    ]);
    assert_eq!(block, xml, "docs/libvirt.md's example is stale");
}
