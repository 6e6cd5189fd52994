//! Real QEMU 11.1 starts with exactly the arguments `vgrace qemu-args --json` prints, for every
//! combination of 1, 2 and 4 GPUs; `virt` (qemu-system-aarch64) and `q35` (qemu-system-x86_64);
//! 2 GiB, 96 GiB, 480 GiB and no memory (`--mem-size 0`, link down); gh100 and gb200 (BAR1).
//!
//! Each QEMU runs in the Debian sid chroot that scripts/qemu-setup.sh (x86) or
//! scripts/qemu-setup-arm64.sh (aarch64) builds, paused (`-S -display none -nodefaults`) with a
//! QMP socket, against a real `vgrace serve` (with the device flags for one GPU, `--config` for a
//! node). Over QMP the test checks that the machine is in `prelaunch`, that every `vfio-user-pci`
//! device was realized (it connected to its server) with the BARs of the node `qemu-args`
//! describes, then sends `quit`. Every wait is bounded.
//!
//! `#[ignore]`d: `cargo test -p vgrace --test qemu_matrix -- --ignored --nocapture` (.ci/run does,
//! after the setup scripts). Without a chroot (or not as root, which chroot needs) it says
//! SKIPPED on stderr, and fails instead with `VGRACE_QEMU_MATRIX_REQUIRED=1` (set in CI).
//! `VGRACE_QEMU_MATRIX_FILTER=q35` runs only the combinations whose name contains it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_support::qemu::{Arch, Chroot, Qmp, QmpEmpty, QmpStatus, QmpVersion};
use test_support::ServeChild;

const BIN: &str = env!("CARGO_BIN_EXE_vgrace");
/// How long one QMP reply, or QEMU's exit after `quit`, may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(30);
/// BAR0 of every GPU.
const BAR0: u64 = 16 << 20;

/// A QEMU binary in a chroot (test-support's harness finds it).
struct Qemu {
    machine: &'static str,
    root: PathBuf,
    binary: &'static str,
}

impl Qemu {
    /// The chroot of `arch`, or why not.
    fn find(machine: &'static str, arch: Arch) -> Result<Self, String> {
        let chroot = Chroot::find(arch)?;
        Ok(Self {
            machine,
            binary: chroot.binary(),
            root: chroot.root,
        })
    }
}

/// One combination of the matrix.
#[derive(Clone, Copy)]
struct Combo {
    gpus: usize,
    profile: &'static str,
    mem_size: &'static str,
}

impl Combo {
    fn name(&self, machine: &str) -> String {
        let mem = if self.mem_size == "0" {
            "link-down"
        } else {
            self.mem_size
        };
        format!("{machine} {} {mem} x{}", self.profile, self.gpus)
    }
}

/// `vgrace ARGS...`: its stdout, or its stderr as the error.
fn vgrace(args: &[&str]) -> Result<String, String> {
    let out = Command::new(BIN).args(args).output().unwrap();
    if !out.status.success() {
        return Err(format!(
            "vgrace {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `[[device]]` tables of `combo` with sockets in `dir`.
fn config(combo: Combo, dir: &str) -> String {
    (0..combo.gpus)
        .map(|i| {
            format!(
                "[[device]]\nsocket = \"{dir}/gpu{i}.sock\"\nprofile = \"{}\"\nmem_size = \"{}\"\n\n",
                combo.profile, combo.mem_size
            )
        })
        .collect()
}

/// The BARs `info qtree` shows for each `vfio-user-pci` device, by id, as (BAR, size). Under
/// `-S` nothing is mapped: a BAR reads `mem at 0xffffffffffffffff [ADDR + SIZE - 1]`.
fn qtree_bars(qtree: &str) -> Vec<(String, Vec<(u64, u64)>)> {
    qtree
        .split("dev: vfio-user-pci, id \"")
        .skip(1)
        .map(|chunk| {
            let id = chunk.split('"').next().unwrap_or_default().to_string();
            let body = chunk.split("dev: ").next().unwrap_or_default();
            let bars = body
                .lines()
                .filter_map(|l| {
                    let rest = l.trim().strip_prefix("bar ")?;
                    let (bar, rest) = rest.split_once(": mem at 0x")?;
                    let (addr, rest) = rest.split_once(" [0x")?;
                    let end = rest.strip_suffix(']')?;
                    let addr = u64::from_str_radix(addr, 16).ok()?;
                    let end = u64::from_str_radix(end, 16).ok()?;
                    Some((bar.parse().ok()?, end.wrapping_sub(addr).wrapping_add(1)))
                })
                .collect();
            (id, bars)
        })
        .collect()
}

/// Serves `combo`, starts QEMU with what `qemu-args` prints for it and checks it over QMP.
/// Returns a one-line summary, or what went wrong.
fn run(qemu: &Qemu, combo: Combo) -> Result<String, String> {
    let tmp = qemu.root.join("tmp");
    let dir = tempfile::Builder::new()
        .prefix("vgrace-qmatrix-")
        .tempdir_in(&tmp)
        .unwrap();
    // The server runs outside the chroot, QEMU inside: the same directory seen from each side.
    let host = dir.path().to_str().unwrap().to_string();
    let inside = format!("/tmp/{}", dir.path().file_name().unwrap().to_str().unwrap());
    let machine = ["--machine", qemu.machine];
    let device = ["--profile", combo.profile, "--mem-size", combo.mem_size];
    let sockets: Vec<PathBuf> = (0..combo.gpus)
        .map(|i| dir.path().join(format!("gpu{i}.sock")))
        .collect();
    let (serve_args, json) = if combo.gpus == 1 {
        let host_socket = format!("{host}/gpu0.sock");
        let serve = [&["--socket", &host_socket][..], &device].concat();
        let socket = format!("{inside}/gpu0.sock");
        let args = [
            &["qemu-args", "--json", "--socket", &socket][..],
            &device,
            &machine,
        ]
        .concat();
        (
            serve.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            vgrace(&args)?,
        )
    } else {
        let host_toml = format!("{host}/host.toml");
        let guest_toml = format!("{host}/guest.toml");
        std::fs::write(&host_toml, config(combo, &host)).unwrap();
        std::fs::write(&guest_toml, config(combo, &inside)).unwrap();
        let args = [
            &["qemu-args", "--json", "--config", &guest_toml][..],
            &machine,
        ]
        .concat();
        (vec!["--config".to_string(), host_toml], vgrace(&args)?)
    };
    let printed: Value = serde_json::from_str(&json).map_err(|e| format!("--json: {e}"))?;
    let argv: Vec<String> = printed["args"]
        .as_array()
        .ok_or("--json has no args")?
        .iter()
        .map(|a| {
            a.as_str()
                .map(str::to_string)
                .ok_or("an arg is not a string")
        })
        .collect::<Result<_, _>>()?;
    let node = &printed["node"];

    let serve = ServeChild::serve(BIN, &serve_args)
        .wait_listening(&sockets.iter().map(PathBuf::as_path).collect::<Vec<_>>());

    let qmp_host = dir.path().join("qmp.sock");
    let mut cmd = Command::new("chroot");
    cmd.arg(&qemu.root)
        .arg(qemu.binary)
        .args(["-S", "-display", "none", "-nodefaults", "-accel", "tcg"])
        .arg("-qmp")
        .arg(format!("unix:{inside}/qmp.sock,server=on,wait=off"))
        .args(&argv);
    let started = Instant::now();
    let mut vm = ServeChild::spawn(cmd).unwrap();
    // QEMU listens on QMP early (the file exists a moment before it accepts); it greets once
    // every device is realized, or exits.
    let deadline = started + QMP_TIMEOUT;
    let stream = loop {
        if let Ok(stream) = UnixStream::connect(&qmp_host) {
            break stream;
        }
        if !vm.alive() || Instant::now() > deadline {
            let log = vm
                .wait_exit(Duration::from_secs(5))
                .map_or_else(|| vm.kill().1, |e| e.1);
            return Err(format!("QEMU did not start: {}", log.trim()));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let checked = (|| {
        let mut qmp = Qmp::handshake(stream, QMP_TIMEOUT).map_err(|e| e.to_string())?;
        let status: QmpStatus = qmp
            .execute("query-status", json!({}))
            .map_err(|e| e.to_string())?;
        if status.status != "prelaunch" {
            return Err(format!("status {status:?}"));
        }
        let version: QmpVersion = qmp
            .execute("query-version", json!({}))
            .map_err(|e| e.to_string())?;
        let qtree: String = qmp
            .execute(
                "human-monitor-command",
                json!({"command-line": "info qtree"}),
            )
            .map_err(|e| e.to_string())?;
        let found = qtree_bars(&qtree);
        let gpus = node["gpus"].as_array().ok_or("node has no gpus")?;
        let mut want = Vec::new();
        for g in gpus {
            let mut bars = vec![(0, BAR0)];
            for b in g["bars"].as_array().ok_or("a gpu without bars")? {
                bars.push((b[0].as_u64().unwrap_or(99), b[1].as_u64().unwrap_or(0)));
            }
            want.push((g["id"].as_str().unwrap_or_default().to_string(), bars));
        }
        let mut found = found;
        found.sort();
        if found != want {
            return Err(format!(
                "vfio-user-pci BARs {found:?}, qemu-args said {want:?}"
            ));
        }
        // QEMU may close the socket as it exits before its reply is read: its exit status
        // (checked below) says whether it quit cleanly.
        let _ = qmp.execute::<QmpEmpty>("quit", json!({}));
        Ok(format!("QEMU {}", version.qemu))
    })();
    let version = match checked {
        Ok(v) => v,
        Err(e) => {
            // QEMU's last words (a refused argument) come as it exits: let it, then kill it.
            let (status, log) = vm.wait_exit(Duration::from_secs(5)).map_or_else(
                || ("killed".to_string(), vm.kill().1),
                |(s, l)| (s.to_string(), l),
            );
            return Err(format!(
                "{e}; QEMU ({status}) said: {}; vgrace said: {}",
                log.trim(),
                serve.log().trim()
            ));
        }
    };
    match vm.wait_exit(QMP_TIMEOUT) {
        None => return Err("QEMU did not exit after quit".into()),
        Some((status, log)) if !status.success() => {
            return Err(format!("QEMU exited {status} after quit: {}", log.trim()))
        }
        Some(_) => {}
    }
    drop(serve);
    let bars: usize = node["gpus"].as_array().map_or(0, |g| {
        g.iter()
            .map(|g| 1 + g["bars"].as_array().map_or(0, Vec::len))
            .sum()
    });
    Ok(format!(
        "started ({version}, {} vfio-user-pci, {bars} BARs, {} NUMA nodes, aperture {}) and quit in {:.1} s",
        combo.gpus,
        node["numa_nodes"],
        node["aperture"].as_u64().map_or("?".into(), |a| format!("{} GiB", a >> 30)),
        started.elapsed().as_secs_f64()
    ))
}

/// Every combination starts QEMU 11.1 with the printed arguments and no others but `-S`,
/// `-display none`, `-nodefaults`, `-accel tcg` and the QMP socket.
#[test]
#[ignore = "needs the QEMU chroots of scripts/qemu-setup*.sh and root; .ci/run runs it"]
fn qemu_starts_with_the_printed_arguments_for_every_combination() {
    let required = std::env::var_os("VGRACE_QEMU_MATRIX_REQUIRED").is_some_and(|v| v == "1");
    let filter = std::env::var("VGRACE_QEMU_MATRIX_FILTER").unwrap_or_default();
    let qemus = [
        Qemu::find("q35", Arch::X86),
        Qemu::find("virt", Arch::Arm64),
    ];
    let mut failed = Vec::new();
    let (mut ran, mut started) = (0, 0);
    let all = Instant::now();
    for qemu in &qemus {
        let qemu = match qemu {
            Ok(q) => q,
            Err(why) => {
                eprintln!("qemu-matrix: SKIPPED: {why}");
                failed.extend(required.then(|| format!("skipped: {why}")));
                continue;
            }
        };
        for gpus in [1, 2, 4] {
            for profile in ["gh100", "gb200"] {
                for mem_size in ["2G", "96G", "480G", "0"] {
                    let combo = Combo {
                        gpus,
                        profile,
                        mem_size,
                    };
                    let name = combo.name(qemu.machine);
                    if !name.contains(&filter) {
                        continue;
                    }
                    ran += 1;
                    match run(qemu, combo) {
                        Ok(line) => {
                            started += 1;
                            eprintln!("qemu-matrix: {name}: {line}");
                        }
                        Err(e) => {
                            eprintln!("qemu-matrix: {name}: FAILED: {e}");
                            failed.push(format!("{name}: {e}"));
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "qemu-matrix: {started} of {ran} combinations started, {:.1} s in all",
        all.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "{failed:#?}");
}
