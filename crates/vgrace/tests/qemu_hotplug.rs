//! Hot-plug of a vgrace GPU in a real guest, and the watch on a known QEMU bug. vgrace serves one
//! gh100 (memfd); QEMU 11 (cached Debian sid chroot, TCG) boots an x86 q35 busybox guest with an
//! EMPTY pcie-root-port (its reserve hints from `vgrace qemu-args`) and a QMP socket. Then:
//!   1. QMP `device_add` of the vfio-user-pci device `vgrace qemu-args` prints; the guest
//!      (scripts/guest/hotplug) finds the function, enables it and writes and reads back BAR4;
//!   2. QMP `device_del`; the guest's hot-plug driver ejects the function; the outcome is:
//!      (a) QEMU dies (QMP closes before DEVICE_DELETED) and its stderr has
//!      "memory_region_del_subregion: Assertion `subregion->container == mr' failed" (QEMU
//!      11.1.3 on every unplug of a vfio-user-pci device: README's Known issues): prints
//!      "VGRACE-KNOWN-ISSUE qemu-hot-unplug-abort STILL PRESENT (QEMU <version>)", passes;
//!      (b) QEMU sends DEVICE_DELETED, the function is gone from the guest, the guest goes on and
//!      powers off cleanly: prints "VGRACE-KNOWN-ISSUE qemu-hot-unplug-abort FIXED" and fails,
//!      so that CI goes red and somebody updates README; with `VGRACE_HOTPLUG_FIXED_OK=1` (set
//!      it in .ci/run together with the README change) passes;
//!      (c) anything else (the hot-add failed, the guest did not see or could not use the
//!      device, another QEMU error, a timeout, vgrace died): fails.
//!   In every case vgrace must still serve after QEMU is gone: the process is alive and a new
//!   client (`vgrace check`) gets its identity and BAR0 rules answered and passed (the memory
//!   rules may fail: where QEMU reset the device on the way out with memory decode off, the first
//!   memory access answers EIO as Linux 6.19+ does after a reset, which `vgrace check` does not
//!   expect).
//! Knobs: `VGRACE_HOTPLUG_MSIX=0` leaves MSI-X disabled in the guest (default 1: the guest sets
//! the MSI-X enable bit before the unplug, as a driver would); `VGRACE_HOTPLUG_NATIVE=1` uses
//! native PCIe hot-plug (pciehp) instead of QEMU's default ACPI hot-plug of root ports;
//! `VGRACE_HOTPLUG_KEEP=1` keeps the run directory in the chroot's /tmp.
//! `#[ignore]`d: `cargo test -p vgrace --test qemu_hotplug -- --ignored --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod qemu_guest;

use std::time::{Duration, Instant};

use qemu_guest::{
    env_is_1, finish, gpu_numa_arg, serve, vgrace_json, CheckReport, Layout, QemuArgs,
};
use serde_json::{json, Value};
use test_support::qemu::{
    self, Arch, Checks, Chroot, QemuError, Qmp, QmpEmpty, RunDir, Vm, VmOutput,
};

const MEM_SIZE: &str = "2660M";
const GUEST_MEM: &str = "512M";
/// Each step: boot, hot-add, hot-unplug.
const WAIT: Duration = Duration::from_secs(120);
const GW: (u64, u32) = (0x3000, 0x407a_1d0c);
const ASSERTION: &str = "subregion->container == mr";
/// The guest's checks up to the unplug request.
const ADD_CHECKS: [&str; 7] = [
    "boots-without-gpu",
    "hot-add-seen",
    "device-id",
    "enable",
    "bar4-assigned",
    "bar4-write-read-back",
    "msix-capability",
];

/// `qemu-args`' argv split: the boot arguments (without the device and what refers to it: its
/// generic initiators and their NUMA nodes, so the root port is empty) and the device, which is
/// `device_add`'s argument.
fn split_args(qemu: &QemuArgs) -> Result<(Vec<String>, Value), String> {
    let pairs: Vec<&[String]> = qemu.args.chunks(2).collect();
    let is_device =
        |p: &[String]| p.len() == 2 && p[0] == "-device" && p[1].contains("vfio-user-pci");
    let devices: Vec<&[String]> = pairs.iter().copied().filter(|p| is_device(p)).collect();
    let [device] = devices.as_slice() else {
        return Err(format!("not one vfio-user-pci device: {devices:?}"));
    };
    let dev: Value = serde_json::from_str(&device[1]).map_err(|e| format!("{}: {e}", device[1]))?;
    let bus = dev["bus"].as_str().ok_or("the device has no bus")?;
    if dev["driver"] != "vfio-user-pci" || !dev["id"].is_string() {
        return Err(format!("not a vfio-user-pci device with an id: {dev}"));
    }
    let port = format!("id={bus},");
    let ports = pairs
        .iter()
        .filter(|p| p.len() == 2 && p[0] == "-device" && p[1].starts_with("pcie-root-port,"))
        .count();
    if ports != 1
        || !pairs
            .iter()
            .any(|p| p.len() == 2 && p[1].starts_with("pcie-root-port,") && p[1].contains(&port))
    {
        return Err(format!("not one root port {bus}: {:?}", qemu.args));
    }
    let boot = pairs
        .iter()
        .filter(|p| {
            let v = p.get(1).map_or("", String::as_str);
            !is_device(p) && !gpu_numa_arg(v)
        })
        .flat_map(|p| p.iter().cloned())
        .collect();
    Ok((boot, dev))
}

/// How `device_del` ended: DEVICE_DELETED, QMP closed (QEMU died), or neither in time.
#[derive(Debug, PartialEq)]
enum Unplug {
    Deleted,
    Closed,
    Timeout,
}

/// Steps 1 and 2 over QMP, with the guest's side on its console; the unplug outcome.
fn plug_and_unplug(
    qmp_path: &std::path::Path,
    vm: &mut Vm,
    dev: &Value,
    msix: bool,
    checks: &mut Checks,
) -> Result<Unplug, String> {
    let console = vm.console();
    console
        .wait_line("VGRACE-HOTPLUG waiting-for-add", WAIT, vm)
        .map_err(|e| format!("the guest did not boot to its hot-add step: {e}"))?;
    let mut qmp = Qmp::connect(qmp_path, Duration::from_secs(30), vm).map_err(|e| e.to_string())?;
    let id = dev["id"].as_str().unwrap_or_default();
    eprintln!("[qemu-hotplug] hot-adding {id} (QMP device_add)");
    let added = qmp.execute::<QmpEmpty>("device_add", dev.clone());
    let detail = added
        .as_ref()
        .map_or_else(ToString::to_string, |_| "device_add returned {}".into());
    checks.host("qmp-device-add", added.is_ok(), detail);
    added.map_err(|e| e.to_string())?;
    console
        .wait_line(
            "VGRACE-HOTPLUG waiting-for-remove",
            WAIT + Duration::from_secs(60),
            vm,
        )
        .map_err(|e| format!("the guest did not get through its hot-add checks: {e}"))?;
    let guest = Checks::parse(&console.text());
    let missing: Vec<&str> = ADD_CHECKS
        .iter()
        .copied()
        .chain(msix.then_some("msix-enabled"))
        .filter(|c| !guest.passed(c))
        .collect();
    if !missing.is_empty() {
        return Err(format!("guest checks did not pass: {missing:?}"));
    }

    eprintln!("[qemu-hotplug] hot-unplugging {id} (QMP device_del)");
    let t = Instant::now();
    qmp.execute::<QmpEmpty>("device_del", json!({ "id": id }))
        .map_err(|e| format!("device_del: {e}"))?;
    let outcome = match qmp.wait_event("DEVICE_DELETED", WAIT) {
        Ok(_) => Unplug::Deleted,
        Err(QemuError::Closed) => Unplug::Closed,
        Err(QemuError::Timeout(..)) => Unplug::Timeout,
        Err(e) => return Err(format!("waiting for DEVICE_DELETED: {e}")),
    };
    let before: Vec<String> = qmp.take_events().into_iter().map(|e| e.event).collect();
    eprintln!(
        "[qemu-hotplug] device_del: {outcome:?} after {:.1} s; events before: {before:?}",
        t.elapsed().as_secs_f64()
    );
    Ok(outcome)
}

#[test]
#[ignore = "needs the QEMU chroot of scripts/qemu-setup.sh and root; .ci/run runs it"]
fn hot_add_works_and_hot_unplug_is_the_known_qemu_abort() {
    let Some(chroot) = Chroot::find_or_skip(Arch::X86, "qemu-hotplug") else {
        return;
    };
    let t_start = Instant::now();
    let msix = env_is_1("VGRACE_HOTPLUG_MSIX", true);
    let native = env_is_1("VGRACE_HOTPLUG_NATIVE", false);
    let dir = RunDir::new(
        &chroot,
        "vgrace-hotplug-",
        env_is_1("VGRACE_HOTPLUG_KEEP", false),
    )
    .unwrap();
    let (kernel, initrd) = dir.make_guest(&chroot, "init", &["hotplug"]).unwrap();
    let version = chroot.qemu_version().unwrap();
    let socket = dir.inside("gpu.sock");
    let qemu: QemuArgs = vgrace_json(&[
        "qemu-args",
        "--socket",
        &socket,
        "--mem-size",
        MEM_SIZE,
        "--machine",
        "q35",
        "--guest-mem",
        GUEST_MEM,
        "--json",
    ])
    .unwrap();
    let (boot_args, dev) = split_args(&qemu).unwrap();
    let layout: Layout = vgrace_json(&["layout", "--mem-size", MEM_SIZE, "--json"]).unwrap();
    let (_, bar4, _) = layout.region("usemem");
    eprintln!("[qemu-hotplug] QEMU {version}; device_add: {dev}");
    let host_socket = dir.host("gpu.sock");
    let mut server = serve(
        &[
            "--socket".into(),
            host_socket.display().to_string(),
            "--mem-size".into(),
            MEM_SIZE.into(),
        ],
        &[&host_socket],
    );

    let append = format!(
        "console=ttyS0 panic=-1 quiet vgrace.case=hotplug vgrace.devid={:#x} \
            vgrace.bar4={bar4} vgrace.gwoff={:#x} vgrace.gwval={:#x} vgrace.msix={} \
            vgrace.wait={}",
        layout.device_id,
        GW.0,
        GW.1,
        u8::from(msix),
        WAIT.as_secs()
    );
    let mut args = qemu::boot_args("tcg,thread=multi", &kernel, &initrd, &append);
    let qmp = format!("unix:{},server=on,wait=off", dir.inside("qmp.sock"));
    args.extend(["-qmp".to_string(), qmp]);
    args.extend(boot_args);
    if native {
        // Native PCIe hot-plug: the root ports' slots, not ACPI, announce and eject the device.
        args.extend([
            "-global".into(),
            "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off".into(),
        ]);
    }
    eprintln!(
        "[qemu-hotplug] booting the guest (TCG) with the root port empty; MSI-X enabled by \
        the guest: {msix}, native hot-plug: {native}"
    );
    let output = VmOutput {
        console: dir.host("console.log"),
        stderr: Some(dir.host("qemu.err")),
    };
    let mut vm = Vm::start(&chroot, &args, output).unwrap();
    let mut checks = Checks::default();
    let outcome = plug_and_unplug(&dir.host("qmp.sock"), &mut vm, &dev, msix, &mut checks);
    // Let QEMU finish: it dies (the bug) or the guest powers off after its last checks.
    let status = vm.wait_exit(WAIT).ok();
    vm.stop();
    let (text, stderr) = (vm.console().text(), vm.stderr());
    checks.extend(Checks::parse(&text));
    eprintln!(
        "[qemu-hotplug] QEMU exit: {status:?}; stderr: {}",
        stderr.trim()
    );

    // vgrace outlives its client in every case.
    let report = CheckReport::run_when_free(&host_socket, Duration::from_secs(10));
    let serving = server.alive() && report.as_ref().is_ok_and(CheckReport::serves_a_new_client);
    let detail = report.map_or_else(
        |e| e,
        |r| {
            format!(
                "vgrace check: {} passed, {} failed {:?}",
                r.summary.passed,
                r.summary.failed,
                r.failures()
            )
        },
    );
    checks.host("vgrace-serves-after-qemu", serving, detail);
    eprintln!(
        "[qemu-hotplug] times: {:.0} s in all",
        t_start.elapsed().as_secs_f64()
    );

    let clean = status.is_some_and(|s| s.success())
        && checks.passed("hot-unplug-gone")
        && checks.passed("no-gpu-left")
        && text.contains("VGRACE-HOTPLUG guest-alive-after-remove")
        && checks.all_passed();
    match outcome {
        Ok(Unplug::Closed) if stderr.contains(ASSERTION) => {
            println!("VGRACE-KNOWN-ISSUE qemu-hot-unplug-abort STILL PRESENT (QEMU {version})");
            checks.host(
                "hot-unplug-known-abort",
                true,
                format!("QEMU {version} aborted on device_del: {ASSERTION}"),
            );
        }
        Ok(Unplug::Deleted) if clean => {
            println!(
                "VGRACE-KNOWN-ISSUE qemu-hot-unplug-abort FIXED in QEMU {version}: remove it \
                from README's Known issues (and set VGRACE_HOTPLUG_FIXED_OK=1 for this step in \
                .ci/run)"
            );
            checks.host(
                "hot-unplug-clean",
                env_is_1("VGRACE_HOTPLUG_FIXED_OK", false),
                "the known issue is fixed: see above",
            );
        }
        Ok(o) => checks.host(
            "hot-unplug",
            false,
            format!(
                "ended neither in the known abort nor cleanly (device_del: {o:?}, QEMU exit \
            {status:?})"
            ),
        ),
        Err(e) => checks.host("hot-plug-steps", false, e),
    }
    // The guest prints no verdict when QEMU aborts under it; one it prints must be PASS.
    let verdict_ok = checks.guest_result.is_none() || checks.guest_passed();
    finish("qemu-hotplug", &checks, verdict_ok, &text, &server.log());
}

#[test]
fn the_device_leaves_qemu_args_for_device_add_and_its_root_port_stays_empty() {
    let qemu: QemuArgs = vgrace_json(&[
        "qemu-args",
        "--socket",
        "/tmp/g.sock",
        "--mem-size",
        MEM_SIZE,
        "--machine",
        "q35",
        "--guest-mem",
        GUEST_MEM,
        "--json",
    ])
    .unwrap();
    let (boot, dev) = split_args(&qemu).unwrap();
    assert_eq!(
        (dev["driver"].as_str(), dev["id"].as_str()),
        (Some("vfio-user-pci"), Some("gpu0"))
    );
    assert_eq!(dev["socket"]["path"], "/tmp/g.sock");
    assert!(
        boot.iter().any(|a| a.starts_with("pcie-root-port,")),
        "{boot:?}"
    );
    assert!(
        !boot
            .iter()
            .any(|a| a.contains("vfio-user-pci") || a.contains("generic-initiator")),
        "{boot:?}"
    );
    assert!(
        boot.iter().any(|a| a == "node,nodeid=0,memdev=ram0"),
        "{boot:?}"
    );
    assert!(
        !boot.iter().any(|a| a.starts_with("node,nodeid=1")),
        "{boot:?}"
    );
    let mut two = qemu;
    let device = two
        .args
        .iter()
        .position(|a| a.contains("vfio-user-pci"))
        .unwrap();
    two.args
        .extend(["-device".to_string(), two.args[device].clone()]);
    assert!(split_args(&two).is_err(), "two devices");
}
