//! The pieces that let the real nvgrace-gpu-vfio-pci judge vgrace (scripts/qemu-oracle.sh):
//! the SSDT `vgrace acpi` writes, and the host view `vgrace serve --view host` gives an L1
//! guest (the function without memory BARs, its memory in a file QEMU maps).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use test_support::serve::ServeChild;
use vfu::client::Client;

const CONFIG: u32 = 7;

fn cfg32(c: &mut Client, offset: u64) -> u32 {
    u32::from_le_bytes(
        c.region_read(CONFIG, offset, 4)
            .unwrap()
            .try_into()
            .unwrap(),
    )
}

/// `iasl -d` of `aml`, or None (with a note on stderr) where acpica-tools is not installed.
fn decompile(aml: &Path) -> Option<String> {
    let dir = aml.parent().unwrap();
    let out = match Command::new("iasl")
        .arg("-d")
        .arg(aml)
        .current_dir(dir)
        .output()
    {
        Ok(o) => o,
        Err(_) => {
            eprintln!("SKIPPED: iasl (Debian acpica-tools) is not installed");
            return None;
        }
    };
    assert!(out.status.success(), "iasl -d failed: {out:?}");
    Some(std::fs::read_to_string(aml.with_extension("dsl")).unwrap())
}

/// The SSDT decompiles and scopes each GPU's four `_DSD` properties to the device QEMU's DSDT
/// has for its slot (GPU i behind the root port at 00:(i+1).0).
#[test]
fn acpi_ssdt_decompiles_into_one_dsd_scope_per_gpu_with_the_four_properties() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[[device]]\nsocket = \"/tmp/a.sock\"\nmem_size = \"2660M\"\nmem_base = \"0x60000000\"\n\
         [[device]]\nsocket = \"/tmp/b.sock\"\nprofile = \"gb200\"\nmem_size = \"4G\"\nmem_base = \"0x106400000\"\n",
    )
    .unwrap();
    let aml = dir.path().join("ssdt.aml");
    let out = common::vgrace(&[
        "acpi",
        "--config",
        config.to_str().unwrap(),
        "-o",
        aml.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let bytes = std::fs::read(&aml).unwrap();
    assert_eq!(&bytes[..4], b"SSDT");
    let Some(dsl) = decompile(&aml) else { return };
    let compact: String = dsl.split_whitespace().collect();
    for (scope, base, size, pxm) in [
        ("S08.S00", "0x60000000", "0xA6400000", "One"),
        (
            "S10.S00",
            "0x0000000106400000",
            "0x0000000100000000",
            "0x09",
        ),
    ] {
        let at = compact
            .find(&format!("Scope(\\_SB.PCI0.{scope})"))
            .unwrap_or_else(|| panic!("no scope {scope} in\n{dsl}"));
        let body = &compact[at..];
        for want in [
            format!("\"nvidia,gpu-mem-base-pa\",{base}"),
            format!("\"nvidia,gpu-mem-size\",{size}"),
            format!("\"nvidia,gpu-mem-pxm-start\",{pxm}"),
            "\"nvidia,gpu-mem-pxm-count\",0x08".to_string(),
            "ToUUID(\"daffd814-6eba-4d8c-8a91-bc9bbf4aa301\")".to_string(),
        ] {
            assert!(
                body.contains(&want),
                "{want} missing after {scope} in\n{dsl}"
            );
        }
    }
}

/// A base whose memory would run past 2^64 is refused, not written into a table.
#[test]
fn acpi_refuses_a_base_and_size_that_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let aml = dir.path().join("ssdt.aml");
    let out = common::vgrace(&[
        "acpi",
        "--mem-base",
        "0xffffffffffff0000",
        "--mem-size",
        "1G",
        "-o",
        aml.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(!aml.exists());
}

fn serve_host(dir: &Path, extra: &[&str]) -> (ServeChild, std::path::PathBuf) {
    let sock = dir.join("gpu.sock");
    let mem = dir.join("gpu.mem");
    let mut args = vec![
        "--view",
        "host",
        "--socket",
        sock.to_str().unwrap(),
        "--backing",
        mem.to_str().unwrap(),
        "--mem-size",
        "2660M",
    ];
    args.extend_from_slice(extra);
    let child = ServeChild::serve(env!("CARGO_BIN_EXE_vgrace"), args).wait_listening(&[&sock]);
    (child, sock)
}

/// The host view is the bare function: BAR0 (with the readiness registers reading ready) and
/// no memory BARs, neither as regions 2/4 nor in config space; its memory is the backing file,
/// made at the memory's size for QEMU to map.
#[test]
fn host_view_shows_bar0_with_readiness_and_no_memory_bars() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, sock) = serve_host(dir.path(), &[]);
    let mut c = Client::connect(&sock).unwrap();
    assert_eq!(c.region_info(0).unwrap().info.size, 16 << 20);
    for index in [2, 4] {
        assert_eq!(c.region_info(index).unwrap().info.size, 0, "region {index}");
    }
    for bar in 0x18..0x28 {
        assert_eq!(cfg32(&mut c, bar), 0, "BAR register {bar:#x}");
    }
    for reg in [0x1498u64, 0x200bc] {
        let v = c.region_read(0, reg, 4).unwrap();
        assert_eq!(u32::from_le_bytes(v.try_into().unwrap()), 0xff, "{reg:#x}");
    }
    assert_eq!(cfg32(&mut c, 0) & 0xffff, 0x10de);
    let len = std::fs::metadata(dir.path().join("gpu.mem")).unwrap().len();
    assert_eq!(len, 2660 << 20);
}

/// Blackwell's host view keeps its real BAR1 (region 2) and the NVIDIA DVSEC at 0x100.
#[test]
fn host_view_of_gb200_keeps_bar1_and_the_dvsec() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, sock) = serve_host(dir.path(), &["--profile", "gb200", "--bar1-size", "1G"]);
    let mut c = Client::connect(&sock).unwrap();
    assert_eq!(c.region_info(2).unwrap().info.size, 1 << 30);
    assert_eq!(c.region_info(4).unwrap().info.size, 0);
    // Extended capability 0x23 (DVSEC) at 0x100.
    assert_eq!(cfg32(&mut c, 0x100) & 0xffff, 0x23);
}

/// The memory must be a file QEMU can map: a memfd host view is refused with a clear message.
#[test]
fn host_view_refuses_a_memfd_backing() {
    let out = common::vgrace(&["serve", "--view", "host", "--socket", "/nonexistent/x.sock"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("file backing"), "{err}");
}

/// The transcript is canonical: two fresh servers of the same device give the same lines, and
/// the sequence covers info, every config dword, region edges, reset, FLR, D3hot, SET_IRQS per
/// index and action, and a reopen.
#[test]
fn transcript_of_a_fresh_server_is_repeatable_and_covers_the_sequence() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("gpu.sock");
        let _server = ServeChild::serve(
            env!("CARGO_BIN_EXE_vgrace"),
            ["--socket", sock.to_str().unwrap(), "--mem-size", "2660M"],
        )
        .wait_listening(&[&sock]);
        let out = common::vgrace(&["transcript", "--socket", sock.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        runs.push(String::from_utf8(out.stdout).unwrap());
    }
    assert_eq!(runs[0], runs[1]);
    let t = &runs[0];
    assert!(t.lines().count() > 250, "{t}");
    for want in [
        "device_info -> flags=0x3 regions=9 irqs=5",
        "region_info 4 -> flags=0xf size=0x80000000 sparse=0x0+0x60000000",
        "config 0x000 -> de104223",
        "read 4 0x60000000 4 -> ffffffff",
        "reset -> ok",
        "set_irqs 2 trigger eventfd start=0 count=1 -> ok",
        "reopen -> ok",
    ] {
        assert!(t.contains(want), "{want} missing from\n{t}");
    }
}

/// Without a VFIO driver bound the transcript refuses with the reason and a non-zero exit.
#[test]
fn transcript_of_an_unbound_pci_device_fails_cleanly() {
    let out = common::vgrace(&["transcript", "--vfio-device", "0000:ff:1f.7"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("iommu_group"));
}

/// The L1 machine puts the GPU's memory file right after guest RAM and tells the kernel to stay
/// below it; a base the machine cannot honour is refused with the one it can.
#[test]
fn qemu_args_host_view_places_memory_at_its_base_or_names_the_right_one() {
    let out = common::vgrace(&[
        "qemu-args",
        "--view",
        "host",
        "--backing",
        "/tmp/g.mem",
        "--mem-size",
        "2660M",
        "--mem-base",
        "0x60000000",
        "--guest-mem",
        "512M",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["gpus"][0]["mem_base"], 0x6000_0000u64);
    assert_eq!(v["gpus"][0]["acpi_scope"], "\\_SB.PCI0.S08.S00");
    assert_eq!(
        v["kernel_args"],
        "mem=512M vfio.enable_unsafe_noiommu_mode=1"
    );
    let args: Vec<String> = v["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(args
        .iter()
        .any(|a| a
            == "-object memory-backend-file,id=gpu0-mem,mem-path=/tmp/g.mem,size=2660M,share=on"));
    assert!(args.iter().any(|a| a == "-m 3172M"));

    let out = common::vgrace(&[
        "qemu-args",
        "--view",
        "host",
        "--backing",
        "/tmp/g.mem",
        "--mem-size",
        "2660M",
        "--guest-mem",
        "512M",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("0x60000000"));
}
