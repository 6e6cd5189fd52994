//! libvirt end to end: `vgrace qemu-args --format libvirt` writes the domain XML of a node of GPUs
//! (default two 96 GiB GH100s, memfd backing) for the guest kernel and busybox initramfs of the
//! QEMU tests; libvirt (Debian sid's, installed in the cached x86 chroot by
//! scripts/qemu-setup-libvirt.sh) validates it against its schema, `virsh define`s and `virsh
//! start`s it under TCG; the guest runs the node checks (scripts/guest/node: each GPU alone
//! behind its root port, BARs assigned and sized, memory read/write through BAR4, the SRAT
//! generic initiators on the NUMA cells) and prints them on the serial console, which the domain
//! writes to a file. `vgrace serve` gives the sockets the group of libvirt's QEMU user (its
//! number, which only the chroot knows) and mode 0660; first a start without `--socket-group`
//! must be refused.
//!
//! libvirtd and virtlogd run without systemd in the chroot, in mount and network namespaces of
//! their own (scripts/libvirt-run.sh); every virsh call runs in there (`nsenter -m`), bounded.
//! Everything is undone at the end (domain, daemons, server, run directory).
//!
//! `VGRACE_LIBVIRT_GPUS` (2), `VGRACE_LIBVIRT_MEM_SIZE` (96G), `VGRACE_LIBVIRT_WAIT` (seconds for
//! the guest, 300), `VGRACE_LIBVIRT_KEEP=1` keeps the run directory (domain.xml, console, logs)
//! in the chroot's /tmp. `#[ignore]`d: `bash scripts/qemu-libvirt.sh` sets up the chroot and
//! libvirt, then runs `cargo test -p vgrace --test qemu_libvirt -- --ignored --nocapture`.
//! Without the chroot, libvirt in it, or root: SKIPPED; `VGRACE_QEMU_REQUIRED=1` fails instead.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod qemu_guest;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use qemu_guest::{env_is_1, env_or, finish, node_toml, seconds, serve, vgrace, QemuArgs};
use test_support::qemu::{
    output_within, required, scripts_dir, wait_for, Arch, Checks, Chroot, Console, Daemon, RunDir,
};
use test_support::ServeChild;

/// The domain's name.
const NAME: &str = "vgrace-ci";
/// The bound of each command run in the daemons' namespace.
const CALL: Duration = Duration::from_secs(60);

/// libvirtd and virtlogd in the chroot (scripts/libvirt-run.sh); the domain is destroyed and
/// undefined, and both daemons stopped, on drop.
struct Libvirt {
    root: PathBuf,
    daemon: Daemon,
    virtlogd_pid: PathBuf,
}

impl Libvirt {
    /// Starts both daemons (their log in `dir`) and waits until virsh gets an answer.
    fn start(chroot: &Chroot, dir: &RunDir) -> Result<Self, String> {
        let log = std::fs::File::create(dir.host("libvirtd.log")).unwrap();
        let mut cmd = Command::new("bash");
        cmd.arg(scripts_dir().join("libvirt-run.sh"))
            .arg(&chroot.root)
            .arg(dir.host(""))
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut lv = Self {
            root: chroot.root.clone(),
            daemon: Daemon::spawn(cmd, Duration::from_secs(10)).map_err(|e| e.to_string())?,
            virtlogd_pid: dir.host("virtlogd.pid"),
        };
        wait_for("libvirtd to answer", Duration::from_secs(30), || {
            if let Some(s) = lv.daemon.exited() {
                return Err(test_support::qemu::QemuError::Exited(s, "libvirtd".into()));
            }
            if lv.virsh(&["version"]).status.success() {
                return Ok(Some(()));
            }
            std::thread::sleep(Duration::from_millis(400));
            Ok(None)
        })
        .map_err(|e| format!("{e}: {}", read(&dir.host("libvirtd.log"))))?;
        Ok(lv)
    }

    /// `args` run in the chroot in the daemons' mount namespace, within [`CALL`] (a command that
    /// cannot start or is killed at the bound reads as a failure with the reason on stderr).
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.daemon.pid().to_string(), "-m", "chroot"])
            .arg(&self.root)
            .args(args);
        output_within(&mut cmd, CALL).unwrap_or_else(|e| Output {
            status: std::process::ExitStatus::from_raw(1 << 8),
            stdout: Vec::new(),
            stderr: e.to_string().into_bytes(),
        })
    }

    fn virsh(&self, args: &[&str]) -> Output {
        let mut all = vec!["virsh", "-q", "-c", "qemu:///system"];
        all.extend(args);
        self.run(&all)
    }

    /// The domain's state (`running`, `shut off`), or `gone`.
    fn state(&self) -> String {
        let out = self.virsh(&["domstate", NAME]);
        match out.status.success() {
            true => text(&out).trim().to_string(),
            false => "gone".into(),
        }
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        self.virsh(&["destroy", NAME]);
        self.virsh(&["undefine", NAME]);
        self.daemon.stop();
        // virtlogd is in libvirtd's process group; should it have left it, it goes here.
        let pid = std::fs::read_to_string(&self.virtlogd_pid).unwrap_or_default();
        if let Ok(pid) = pid.trim().parse::<i32>() {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// stdout and stderr of a command, as one text.
fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The last `n` lines of `path` (for the report of a failed run).
fn tail(path: &std::path::Path, n: usize) -> String {
    let t = read(path);
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The node: its two configs (sockets as the host and as QEMU see them) and the host's sockets.
struct Node {
    gpus: usize,
    host_config: PathBuf,
    guest_config: PathBuf,
    sockets: Vec<PathBuf>,
}

impl Node {
    fn new(dir: &RunDir, gpus: usize, mem: &str) -> Self {
        let names: Vec<String> = (0..gpus).map(|i| format!("gpu{i}.sock")).collect();
        let sockets: Vec<PathBuf> = names.iter().map(|n| dir.host(n)).collect();
        let host: Vec<String> = sockets.iter().map(|s| s.display().to_string()).collect();
        let guest: Vec<String> = names.iter().map(|n| dir.inside(n)).collect();
        let node = Self {
            gpus,
            host_config: dir.host("node-host.toml"),
            guest_config: dir.host("node-guest.toml"),
            sockets,
        };
        std::fs::write(&node.host_config, node_toml(&host, mem)).unwrap();
        std::fs::write(&node.guest_config, node_toml(&guest, mem)).unwrap();
        node
    }

    /// `vgrace serve --config` with `extra` flags, once every socket accepts.
    fn serve(&self, extra: &[&str]) -> ServeChild {
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
        let mut args = vec![
            "--config".to_string(),
            self.host_config.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let sockets: Vec<&std::path::Path> = self.sockets.iter().map(PathBuf::as_path).collect();
        serve(&args, &sockets)
    }

    /// The guest's kernel command line: the node checks and what each GPU must show.
    fn append(&self) -> String {
        let guest = self.guest_config.to_str().unwrap();
        let json = vgrace(&["qemu-args", "--config", guest, "--machine", "q35", "--json"]);
        let qemu: QemuArgs = serde_json::from_str(&json.unwrap()).unwrap();
        let g = &qemu.node.gpus[0];
        format!(
            "console=ttyS0 panic=-1 quiet vgrace.case=node vgrace.gpus={} vgrace.bar2={} \
            vgrace.bar4={} vgrace.gis={}",
            self.gpus,
            g.bar(2),
            g.bar(4),
            g.numa_nodes.1 - g.numa_nodes.0 + 1
        )
    }
}

/// The domain XML of `qemu-args --format libvirt` for the node and the guest, in `dir`; its path
/// inside the chroot.
fn write_domain(dir: &RunDir, node: &Node, kernel: &str, initrd: &str) -> String {
    let guest = node.guest_config.to_str().unwrap();
    let (append, console) = (node.append(), dir.inside("console.log"));
    let xml = vgrace(&[
        "qemu-args",
        "--config",
        guest,
        "--machine",
        "q35",
        "--guest-mem",
        "2G",
        "--format",
        "libvirt",
        "--name",
        NAME,
        "--domain-type",
        "qemu",
        "--vcpus",
        "2",
        "--kernel",
        kernel,
        "--initrd",
        initrd,
        "--cmdline",
        &append,
        "--serial-log",
        &console,
    ])
    .unwrap();
    std::fs::write(dir.host("domain.xml"), xml).unwrap();
    dir.inside("domain.xml")
}

/// A start without `--socket-group` (sockets 0600, root's) must be refused: libvirt's QEMU user
/// cannot connect.
fn check_start_refused(checks: &mut Checks, lv: &Libvirt, node: &Node) {
    let server = node.serve(&[]);
    let out = lv.virsh(&["start", NAME]);
    let err = text(&out);
    lv.virsh(&["destroy", NAME]);
    drop(server);
    let refused = err
        .find("Failed to connect to '")
        .and_then(|i| Some(&err[i..i + err[i..].find("': Permission denied")? + 20]))
        .unwrap_or_default();
    checks.host(
        "no-socket-group-no-start",
        !out.status.success() && !refused.is_empty(),
        format!("virsh start refused: {refused}"),
    );
}

/// Starts the domain and waits (up to `limit`) for the guest to power off; a panic reboots it
/// (on_reboot), so the console is watched too.
fn check_start_and_poweroff(checks: &mut Checks, lv: &Libvirt, console: &Console, limit: Duration) {
    eprintln!("[qemu-libvirt] virsh start {NAME} (TCG; the guest powers off after its checks)");
    let t0 = Instant::now();
    let out = lv.virsh(&["start", NAME]);
    if !out.status.success() {
        eprintln!("[qemu-libvirt] {}", text(&out).trim());
        checks.host(
            "virsh-start-and-guest-poweroff",
            false,
            "virsh start failed",
        );
        return;
    }
    let _ = wait_for("the guest to power off", limit, || {
        let ended = lv.state() == "shut off" || console.text().contains("Kernel panic");
        if !ended {
            std::thread::sleep(Duration::from_millis(900));
        }
        Ok(ended.then_some(()))
    });
    let state = lv.state();
    checks.host(
        "virsh-start-and-guest-poweroff",
        state == "shut off",
        format!("domain {state} after {} s", t0.elapsed().as_secs()),
    );
}

/// Serves the node with the group libvirt runs QEMU with (Debian: libvirt-qemu), by number (the
/// host has no such group), and mode 0660; the server.
fn check_socket_group(checks: &mut Checks, chroot: &Chroot, node: &Node) -> ServeChild {
    let id = output_within(chroot.command("id").args(["-g", "libvirt-qemu"]), CALL).unwrap();
    let gid: u32 = text(&id).trim().parse().unwrap();
    let server = node.serve(&["--socket-group", &gid.to_string(), "--socket-mode", "0660"]);
    let modes: BTreeSet<String> = node
        .sockets
        .iter()
        .map(|s| std::fs::metadata(s).unwrap())
        .map(|m| format!("{} {:o}", m.gid(), m.mode() & 0o7777))
        .collect();
    let modes: Vec<String> = modes.into_iter().collect();
    checks.host(
        "socket-group-and-mode",
        modes == [format!("{gid} 660")],
        format!(
            "sockets: gid and mode {} (libvirt-qemu is gid {gid} in the chroot)",
            modes.join(" ")
        ),
    );
    server
}

/// What a failed run leaves to look at: the domain XML, QEMU's log and libvirtd's.
fn dump_logs(chroot: &Chroot, dir: &RunDir) {
    let qemu_log = chroot.root.join(format!("var/log/libvirt/qemu/{NAME}.log"));
    eprintln!("--- domain.xml\n{}", read(&dir.host("domain.xml")));
    eprintln!("--- {}\n{}", qemu_log.display(), tail(&qemu_log, 50));
    eprintln!("--- libvirtd.log\n{}", tail(&dir.host("libvirtd.log"), 50));
}

#[test]
#[ignore = "needs the QEMU chroot of scripts/qemu-setup.sh with libvirt, and root; .ci/run runs it"]
fn libvirt_defines_and_starts_the_domain_xml_and_the_guest_sees_the_node() {
    let Some(chroot) = Chroot::find_or_skip(Arch::X86, "qemu-libvirt") else {
        return;
    };
    if !chroot.root.join("usr/sbin/libvirtd").exists() {
        let why = "the chroot has no libvirt (run scripts/qemu-setup-libvirt.sh)";
        assert!(
            !required(),
            "qemu-libvirt: VGRACE_QEMU_REQUIRED=1 but {why}"
        );
        eprintln!("qemu-libvirt: SKIPPED: {why}");
        return;
    }
    let gpus: usize = env_or("VGRACE_LIBVIRT_GPUS", "2").parse().unwrap();
    let mem = env_or("VGRACE_LIBVIRT_MEM_SIZE", "96G");
    let dir = RunDir::new(
        &chroot,
        "vgrace-libvirt-",
        env_is_1("VGRACE_LIBVIRT_KEEP", false),
    )
    .unwrap();
    // libvirt's QEMU user must reach the kernel, the initramfs and the sockets in here.
    std::fs::set_permissions(dir.host(""), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (kernel, initrd) = dir.make_guest(&chroot, "init", &["node"]).unwrap();
    let node = Node::new(&dir, gpus, &mem);
    let domain = write_domain(&dir, &node, &kernel, &initrd);
    let qemu_conf = read(&chroot.root.join("etc/libvirt/qemu.conf")) + "namespaces = []\n";
    std::fs::write(dir.host("qemu.conf"), qemu_conf).unwrap();

    eprintln!("[qemu-libvirt] starting virtlogd and libvirtd in the chroot");
    let lv = Libvirt::start(&chroot, &dir).unwrap();
    let version = text(&lv.virsh(&["version"]));
    let version: Vec<String> = version
        .lines()
        .filter(|l| l.contains("library") || l.contains("hypervisor"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    eprintln!("[qemu-libvirt] {}", version.join(";"));

    let mut checks = Checks::default();
    if chroot.root.join("usr/bin/virt-xml-validate").exists() {
        let out = lv.run(&["virt-xml-validate", &domain, "domain"]);
        let detail = format!("virt-xml-validate: {}", text(&out).trim());
        checks.host("domain-xml-validates", out.status.success(), detail);
    }
    let defined = lv.virsh(&["define", &domain]).status.success();
    checks.host("virsh-define", defined, format!("domain {NAME}"));
    check_start_refused(&mut checks, &lv, &node);

    let server = check_socket_group(&mut checks, &chroot, &node);

    let console = Console(dir.host("console.log"));
    let limit = seconds("VGRACE_LIBVIRT_WAIT", 300);
    check_start_and_poweroff(&mut checks, &lv, &console, limit);
    let text = console.text();
    for l in text.lines() {
        if l.starts_with("VGRACE-") && !l.starts_with("VGRACE-CHECK ") || l.contains("Kernel panic")
        {
            eprintln!("{l}");
        }
    }
    checks.extend(Checks::parse(&text));
    if !(checks.guest_passed() && checks.none_failed()) {
        dump_logs(&chroot, &dir);
    }
    drop(lv);
    finish(
        "qemu-libvirt",
        &checks,
        checks.guest_passed(),
        &text,
        &server.log(),
    );
}

#[test]
fn a_node_config_has_one_memfd_gh100_per_socket() {
    let t = node_toml(&["/a/gpu0.sock".into(), "/a/gpu1.sock".into()], "96G");
    let v: toml::Value = toml::from_str(&t).unwrap();
    let devices = v["device"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[1]["socket"].as_str(), Some("/a/gpu1.sock"));
    assert_eq!(devices[0]["backing"].as_str(), Some("memfd"));
    assert_eq!(devices[0]["mem_size"].as_str(), Some("96G"));
}
