//! A whole Grace node in a real guest: one `vgrace serve --config` serves four 480 GiB GH100s
//! (memfd backing, sparse), QEMU 11 (cached Debian sid chroot) boots a busybox guest under TCG
//! with exactly the arguments `vgrace qemu-args --config ... --json` prints, plus generic boot
//! arguments only, and the guest checks the node: each GPU alone at 00.0 behind a root port, BARs
//! assigned and sized, memory through each BAR4, the SRAT's generic initiators.
//!
//! - `node_q35_four_gpus_boot_and_a_small_aperture_fails` (qemu-system-x86_64, guest
//!   scripts/guest/node): also boots the same guest without GPUs (for the boot time) and with a
//!   hand-made 64 GiB aperture in a 42-bit address space, which must fail with BAR assignment
//!   errors; prints boot and `serve --config` start timings. `VGRACE_NODE_GPUS` (4),
//!   `VGRACE_NODE_MEM_SIZE` (480G), `VGRACE_NODE_GUEST_MEM` (2G), `VGRACE_NODE_RUNS`: boots of
//!   each guest for the median boot time (3).
//! - `node_arm64_virt_four_gpus_boot` (qemu-system-aarch64 `virt` with UEFI, the NODES_SHIFT=6
//!   kernel of scripts/qemu-setup-arm64.sh, guest scripts/guest/init-node: also the kernel's
//!   NUMA view). `VGRACE_NODE_TIMEOUT` bounds the boot (900 s).
//!
//! `VGRACE_NODE_KEEP=1` keeps the run directory (consoles, configs) in the chroot's /tmp.
//! `#[ignore]`d: `cargo test -p vgrace --test qemu_node -- --ignored --nocapture NAME` (.ci/run
//! runs both). Without the chroot or root: SKIPPED; `VGRACE_QEMU_REQUIRED=1` fails instead.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod qemu_guest;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use qemu_guest::{
    env_is_1, env_or, finish, gpu_numa_arg, node_toml, seconds, serve, vgrace_json, QemuArgs, BIN,
};
use test_support::procfs::status_kib;
use test_support::qemu::{boot_args, Arch, Checks, Chroot, RunDir, Vm, VmOutput};
use test_support::ServeChild;

/// The negative boot: a 64 GiB 64-bit hole in a 42-bit (4 TiB) physical address space.
const SMALL_APERTURE: &str = "64G";
const SMALL_PHYS_BITS: &str = "42";

/// A node's run directory, its configs (sockets as seen from the host and from QEMU) and what
/// `qemu-args` printed for it.
struct Node {
    dir: RunDir,
    gpus: usize,
    host_config: PathBuf,
    qemu: QemuArgs,
    sockets: Vec<PathBuf>,
}

impl Node {
    fn new(chroot: &Chroot, machine: &str, gpus: usize, mem: &str, guest_mem: &str) -> Self {
        let dir = RunDir::new(chroot, "vgrace-node-", env_is_1("VGRACE_NODE_KEEP", false)).unwrap();
        let config = |sock: &dyn Fn(usize) -> String| {
            node_toml(&(0..gpus).map(sock).collect::<Vec<_>>(), mem)
        };
        let sockets: Vec<PathBuf> = (0..gpus)
            .map(|i| dir.host(&format!("gpu{i}.sock")))
            .collect();
        let host_config = dir.host("node-host.toml");
        std::fs::write(&host_config, config(&|i| sockets[i].display().to_string())).unwrap();
        std::fs::write(
            dir.host("node-guest.toml"),
            config(&|i| dir.inside(&format!("gpu{i}.sock"))),
        )
        .unwrap();
        let guest_config = dir.host("node-guest.toml");
        let qemu: QemuArgs = vgrace_json(&[
            "qemu-args",
            "--json",
            "--config",
            guest_config.to_str().unwrap(),
            "--machine",
            machine,
            "--guest-mem",
            guest_mem,
        ])
        .unwrap();
        assert_eq!(qemu.node.gpus.len(), gpus, "qemu-args: {:?}", qemu.node);
        // Every GPU the same: the guest checks each against one expectation.
        let first = &qemu.node.gpus[0];
        assert!(qemu.node.gpus.iter().all(|g| g.bars == first.bars
            && g.numa_nodes.1 - g.numa_nodes.0 == first.numa_nodes.1 - first.numa_nodes.0));
        Self {
            dir,
            gpus,
            host_config,
            qemu,
            sockets,
        }
    }

    /// (BAR2, BAR4, NUMA nodes per GPU) of every GPU.
    fn shape(&self) -> (u64, u64, u32) {
        let g = &self.qemu.node.gpus[0];
        (g.bar(2), g.bar(4), g.numa_nodes.1 - g.numa_nodes.0 + 1)
    }

    fn serve(&self) -> ServeChild {
        let args = [
            "--config".to_string(),
            self.host_config.display().to_string(),
        ];
        serve(
            &args,
            &self
                .sockets
                .iter()
                .map(PathBuf::as_path)
                .collect::<Vec<_>>(),
        )
    }
}

/// Boots `args` (after the generic ones) to its end within `limit`: (QEMU exited 0, the guest's
/// checks and verdict, the wall time in ms).
fn boot(
    chroot: &Chroot,
    dir: &RunDir,
    name: &str,
    generic: &[String],
    args: &[String],
    limit: Duration,
) -> (bool, Checks, u128, String) {
    let console = dir.host(&format!("{name}.log"));
    let started = Instant::now();
    let mut vm = Vm::start(
        chroot,
        generic.iter().chain(args),
        VmOutput {
            console,
            stderr: None,
        },
    )
    .unwrap();
    let ok = match vm.wait_exit(limit) {
        Ok(s) => s.success(),
        Err(e) => {
            eprintln!("[qemu-node] {name}: {e}");
            false
        }
    };
    vm.stop();
    let wall = started.elapsed().as_millis();
    let text = vm.console().text();
    (ok, Checks::parse(&text), wall, text)
}

/// `args` without the GPUs: no root ports, vfio-user devices, generic initiators or their nodes.
fn without_gpus(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for pair in args.chunks(2) {
        let value = pair.get(1).map_or("", String::as_str);
        let gpu = value.starts_with("pcie-root-port")
            || value.contains("vfio-user-pci")
            || gpu_numa_arg(value);
        if !gpu {
            out.extend(pair.iter().cloned());
        }
    }
    out
}

/// `args` with the 64-bit hole and the CPU's physical address bits replaced (the negative boot).
fn small_aperture(args: &[String]) -> Vec<String> {
    let replace = |a: &str, key: &str, value: &str| match a.find(key) {
        Some(i) => format!("{}{key}{value}", &a[..i]),
        None => a.to_string(),
    };
    args.iter()
        .map(|a| {
            replace(
                &replace(a, "pci-hole64-size=", SMALL_APERTURE),
                "phys-bits=",
                SMALL_PHYS_BITS,
            )
        })
        .collect()
}

/// `vgrace serve --config`: the time from the spawn until every socket accepts a connection and
/// the server's VmRSS then, median of 5 starts (each stopped with SIGTERM).
fn serve_start_figures(node: &Node) -> (f64, u64) {
    let (mut ms, mut rss) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"]).arg(&node.host_config);
        let mut s = ServeChild::spawn(cmd).unwrap().wait_listening(
            &node
                .sockets
                .iter()
                .map(PathBuf::as_path)
                .collect::<Vec<_>>(),
        );
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        rss.push(status_kib(s.process(), "VmRSS").ok().flatten().unwrap_or(0));
        s.signal(nix::sys::signal::Signal::SIGTERM);
    }
    ms.sort_by(f64::total_cmp);
    rss.sort_unstable();
    (ms[2], rss[2])
}

/// The median of the `key` figures (`VGRACE-UPTIME 4.93`) in the consoles.
fn median(consoles: &[String], key: &str) -> Option<f64> {
    let mut v: Vec<f64> = consoles
        .iter()
        .filter_map(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len().checked_sub(1)? / 2).copied()
}

#[test]
#[ignore = "needs the QEMU chroot of scripts/qemu-setup.sh and root; .ci/run runs it"]
fn node_q35_four_gpus_boot_and_a_small_aperture_fails() {
    let Some(chroot) = Chroot::find_or_skip(Arch::X86, "qemu-node") else {
        return;
    };
    let gpus: usize = env_or("VGRACE_NODE_GPUS", "4").parse().unwrap();
    let mem = env_or("VGRACE_NODE_MEM_SIZE", "480G");
    let runs: usize = env_or("VGRACE_NODE_RUNS", "3").parse().unwrap();
    let node = Node::new(
        &chroot,
        "q35",
        gpus,
        &mem,
        &env_or("VGRACE_NODE_GUEST_MEM", "2G"),
    );
    let (bar2, bar4, gis) = node.shape();
    eprintln!(
        "[qemu-node] qemu-args: {} arguments; each GPU: BAR2 {bar2}, BAR4 {bar4}, {gis} \
        generic initiators",
        node.qemu.args.len()
    );
    let (kernel, initrd) = node.dir.make_guest(&chroot, "init", &["node"]).unwrap();
    let (serve_ms, rss_start) = serve_start_figures(&node);
    for s in &node.sockets {
        let _ = std::fs::remove_file(s);
    }
    let server = node.serve();

    let append = format!(
        "console=ttyS0 panic=-1 quiet vgrace.case=node vgrace.bar2={bar2} \
        vgrace.bar4={bar4} vgrace.gis={gis}"
    );
    let tcg = "tcg,thread=multi";
    let with = boot_args(
        tcg,
        &kernel,
        &initrd,
        &format!("{append} vgrace.gpus={gpus}"),
    );
    let without = boot_args(tcg, &kernel, &initrd, &format!("{append} vgrace.gpus=0"));
    let base_args = without_gpus(&node.qemu.args);
    let limit = Duration::from_secs(120);
    eprintln!("[qemu-node] booting the node guest (TCG, {gpus} GPUs)");
    let (node_ok, mut checks, node_wall, node_text) =
        boot(&chroot, &node.dir, "node", &with, &node.qemu.args, limit);
    let rss_after = status_kib(server.process(), "VmRSS")
        .ok()
        .flatten()
        .unwrap_or(0);
    eprintln!("[qemu-node] booting the same guest without GPUs");
    let (base_ok, base, base_wall, base_text) =
        boot(&chroot, &node.dir, "base", &without, &base_args, limit);
    checks.host(
        "guest-without-gpus-passes",
        base_ok && base.all_passed(),
        format!("{} (QEMU exit ok: {base_ok})", base.summary()),
    );

    // On q35 pci-hole64-size alone does not bound the BARs: SeaBIOS places them at the top of the
    // phys-bits address space and QEMU's _CRS grows the hole to cover them. So the small
    // aperture is a 64 GiB hole in a 42-bit (4 TiB) address space.
    eprintln!(
        "[qemu-node] booting the node guest with a {SMALL_APERTURE} aperture, phys-bits \
        {SMALL_PHYS_BITS} (must fail)"
    );
    let (_, small, _, _) = boot(
        &chroot,
        &node.dir,
        "small",
        &with,
        &small_aperture(&node.qemu.args),
        limit,
    );
    let refused = small
        .all
        .iter()
        .find(|c| c.name == "no-bar-assignment-errors" && !c.pass);
    checks.host(
        "small-aperture-fails-bar-assignment",
        matches!(small.guest_result, Some((false, _))) && refused.is_some(),
        format!(
            "guest {}: {}",
            small.verdict(),
            refused.map_or("no BAR assignment failure", |c| c.detail.as_str())
        ),
    );

    // Boot times: the median of `runs` boots of each guest (the first ones above included).
    let (mut nodes, mut bases) = (vec![node_text.clone()], vec![base_text]);
    for r in 2..=runs {
        nodes.push(
            boot(
                &chroot,
                &node.dir,
                &format!("node{r}"),
                &with,
                &node.qemu.args,
                limit,
            )
            .3,
        );
        bases.push(
            boot(
                &chroot,
                &node.dir,
                &format!("base{r}"),
                &without,
                &base_args,
                limit,
            )
            .3,
        );
    }
    let fig = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{v:.2}"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "n/a".into(),
    };
    let (ni, bi) = (
        median(&nodes, "VGRACE-INIT-UPTIME"),
        median(&bases, "VGRACE-INIT-UPTIME"),
    );
    let (nu, bu) = (
        median(&nodes, "VGRACE-UPTIME"),
        median(&bases, "VGRACE-UPTIME"),
    );
    println!(
        "qemu-node: guest boot, median of {runs} (TCG): kernel start to /init {} s with \
            {gpus} GPUs, {} s without: {}; to the result line {} s vs {} s: {} (goal <= \
            1.15x); QEMU wall (first boots) {node_wall} ms vs {base_wall} ms",
        fig(ni),
        fig(bi),
        ratio(ni, bi),
        fig(nu),
        fig(bu),
        ratio(nu, bu)
    );
    println!(
        "qemu-node: vgrace serve --config ({gpus} x {mem}): all sockets accept \
        {serve_ms:.1} ms after the spawn (median of 5; goal <= 50 ms); VmRSS {rss_start} \
        KiB then, {rss_after} KiB after serving the node guest (goal <= 16384 KiB)"
    );
    finish(
        "qemu-node q35",
        &checks,
        node_ok && checks.guest_passed(),
        &node_text,
        &server.log(),
    );
}

#[test]
#[ignore = "needs the QEMU chroot of scripts/qemu-setup-arm64.sh and root; .ci/run runs it"]
fn node_arm64_virt_four_gpus_boot() {
    let Some(chroot) = Chroot::find_or_skip(Arch::Arm64, "qemu-node-arm64") else {
        return;
    };
    let node = Node::new(
        &chroot,
        "virt",
        4,
        "480G",
        &env_or("VGRACE_NODE_GUEST_MEM", "2G"),
    );
    let (bar2, bar4, per_gpu) = node.shape();
    let devid = node.qemu.node.gpus[0]
        .device
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let (kernel, initrd) = node.dir.make_guest(&chroot, "init-node", &[]).unwrap();
    let server = node.serve();
    let append = format!(
        "console=ttyAMA0 panic=-1 vgrace.gpus={} vgrace.pergpu={per_gpu} \
        vgrace.devid=0x{devid} vgrace.bar2={bar2} vgrace.bar4={bar4}",
        node.gpus
    );
    eprintln!(
        "[qemu-node-arm64] booting the arm64 virt guest (TCG): {} x 480G GPUs, {} NUMA nodes",
        node.gpus,
        node.gpus as u32 * per_gpu + 1
    );
    let started = Instant::now();
    let generic = boot_args("tcg", &kernel, &initrd, &append);
    let (ok, checks, _, text) = boot(
        &chroot,
        &node.dir,
        "console",
        &generic,
        &node.qemu.args,
        seconds("VGRACE_NODE_TIMEOUT", 900),
    );
    eprintln!(
        "[qemu-node-arm64] guest ran {} s",
        started.elapsed().as_secs()
    );
    // The whole console outlives the run directory, for a look after a pass too.
    let _ = std::fs::write(chroot.cache.join("last-console.log"), &text);
    finish(
        "qemu-node arm64",
        &checks,
        ok && checks.guest_passed(),
        &text,
        &server.log(),
    );
}

#[test]
fn gpu_arguments_are_dropped_and_the_aperture_replaced() {
    let args: Vec<String> = [
        "-machine",
        "q35",
        "-global",
        "q35-pcihost.pci-hole64-size=4T",
        "-cpu",
        "max,phys-bits=46",
        "-numa",
        "node,nodeid=0,memdev=ram0",
        "-device",
        "pcie-root-port,id=rp0,bus=pcie.0",
        "-device",
        r#"{"driver":"vfio-user-pci","id":"gpu0"}"#,
        "-numa",
        "node,nodeid=1",
        "-object",
        "acpi-generic-initiator,id=gi1,pci-dev=gpu0,node=1",
        "-numa",
        "node,nodeid=12",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        without_gpus(&args),
        [
            "-machine",
            "q35",
            "-global",
            "q35-pcihost.pci-hole64-size=4T",
            "-cpu",
            "max,phys-bits=46",
            "-numa",
            "node,nodeid=0,memdev=ram0"
        ]
    );
    let small = small_aperture(&args);
    assert_eq!(small[3], "q35-pcihost.pci-hole64-size=64G");
    assert_eq!(small[5], "max,phys-bits=42");
    assert_eq!(small[7..], args[7..]);
}
