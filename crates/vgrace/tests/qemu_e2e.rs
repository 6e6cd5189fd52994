//! End to end in a real guest: vgrace serves a device, QEMU 11 (from the cached Debian sid chroot
//! of scripts/qemu-setup.sh) boots a busybox guest under TCG with it, the guest
//! (scripts/guest/init) checks identity, BAR layout and memory semantics, and the host checks
//! the backing file, the protocol trace and that `vgrace check` passes against the device QEMU
//! left behind.
//!
//! `VGRACE_E2E_PROFILE` picks the case:
//!   gh100    (default) non-power-of-two memory, file backing: resmem at BAR2, usemem at BAR4
//!   gb200    Blackwell: all memory is usemem at BAR4, the real BAR1 at region 2 (BAR2),
//!            `VGRACE_E2E_BAR1_SIZE` (default 256M, small so that the guest's aperture has room)
//!   linkdown the C2C link is down (memory size 0): a plain vfio-pci function, BAR0 only
//! `VGRACE_E2E_MEM_SIZE` sets the memory size (gh100, gb200; default 2660 MiB);
//! `VGRACE_E2E_KEEP=1` keeps the run directory (console, trace, backing file) in the chroot's
//! /tmp; `VGRACE_E2E_QEMU_ARGS` adds QEMU arguments (split at blanks), e.g. "-trace vfio_user_*".
//!
//! gh100 adds a live phase (`VGRACE_E2E_LIVE=0` skips it): after its checks the guest
//! (scripts/guest/live) asks for one change at a time with a `VGRACE-SYNC <step>?` console line;
//! the test changes the running device with `vgrace ctl` and pokes the step's token into a BAR4
//! mailbox word the guest polls. Steps: link-down (BAR0+0x1498 must not read 0xff), link-up (0xff
//! again), poke (a value at the BAR4 offset the guest names). The host checks with `ctl peek`
//! what the guest wrote and with `ctl stats` that the guest's BAR0 readiness read was one
//! REGION_READ (its page is not mapped) while polling BAR4 (mmap) sent none. Every wait is bounded
//! (`VGRACE_E2E_WAIT` seconds per step, default 120). `VGRACE_E2E_REPLY_DELAY=1` ends the live
//! phase with the reply-delay probe: vgrace delays its next reply by 6 s, past QEMU's
//! x-msg-timeout (5 s), while the guest reads BAR0 (README's "Fault injection").
//!
//! `#[ignore]`d: `cargo test -p vgrace --test qemu_e2e -- --ignored --nocapture` (.ci/run runs
//! the four cases, after scripts/qemu-setup.sh). Without the chroot or root it says SKIPPED;
//! `VGRACE_QEMU_REQUIRED=1` (CI) makes that a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod qemu_guest;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qemu_guest::{
    env_is_1, env_or, finish, seconds, serve, vgrace, vgrace_json, CheckReport, Layout,
};
use serde::Deserialize;
use test_support::qemu::{boot_args, Arch, Checks, Chroot, Console, RunDir, Vm, VmOutput};

/// BAR0 is 16 MiB on every profile (`vgrace layout` does not print it).
const BAR0_SIZE: u64 = 16 << 20;
/// A value the host writes in the backing file, where the guest must find it in BAR4.
const PRE: (u64, u32) = (0x1000, 0xc0ff_ee11);
/// A value the guest writes in BAR4, which the host must find in the backing file.
const GW: (u64, u32) = (0x2000, 0x5eed_1234);
const B1_VAL: u32 = 0xb1a5_5e7e;
/// The live phase's BAR4 mailbox and the value the host pokes where the guest asks.
const MBOX_OFF: u64 = 0x3000;
const POKE_VAL: u32 = 0x9a7e_c0de;
/// BAR0's link status register (readiness page, not mapped: every read is a REGION_READ).
const LINK: u64 = 0x1498;
/// The whole guest run (QEMU's `timeout 300` before).
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// One run's settings, from the environment.
struct Case {
    profile: String,
    mem_size: String,
    bar1_size: String,
    live: bool,
    reply_delay: bool,
    wait: Duration,
}

impl Case {
    fn from_env() -> Self {
        let profile = env_or("VGRACE_E2E_PROFILE", "gh100");
        let live = profile == "gh100" && env_is_1("VGRACE_E2E_LIVE", true);
        Self {
            mem_size: env_or("VGRACE_E2E_MEM_SIZE", &(2660u64 << 20).to_string()),
            bar1_size: env_or("VGRACE_E2E_BAR1_SIZE", "256M"),
            reply_delay: live && env_is_1("VGRACE_E2E_REPLY_DELAY", false),
            wait: seconds("VGRACE_E2E_WAIT", 120),
            live,
            profile,
        }
    }

    /// The device flags of the case.
    fn device_args(&self) -> Vec<String> {
        let v = |s: &[&str]| s.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        match self.profile.as_str() {
            "gh100" => v(&["--profile", "gh100", "--mem-size", &self.mem_size]),
            "gb200" => v(&[
                "--profile",
                "gb200",
                "--mem-size",
                &self.mem_size,
                "--bar1-size",
                &self.bar1_size,
            ]),
            "linkdown" => v(&["--profile", "gh100", "--mem-size", "0"]),
            p => panic!("unknown VGRACE_E2E_PROFILE {p:?} (gh100, gb200 or linkdown)"),
        }
    }

    /// The layout must be the case's shape, or the guest would check the wrong thing.
    fn shape_ok(&self, l: &Layout) -> bool {
        let (_, bar2, _) = l.region("resmem");
        let (_, bar4, _) = l.region("usemem");
        let bar1 = l.bar1_size.unwrap_or(0);
        let core = l.core_only.as_deref();
        match self.profile.as_str() {
            "gh100" => core.is_none() && bar2 > 0 && bar4 > 0 && bar1 == 0,
            "gb200" => core.is_none() && bar2 == 0 && bar4 > 0 && bar1 > 0,
            _ => core == Some("link-down") && bar2 == 0 && bar4 == 0 && bar1 == 0,
        }
    }

    /// The guest's expectations, on its kernel command line (a BAR size of 0: absent).
    fn append(&self, l: &Layout) -> String {
        let (mem4, bar4, _) = l.region("usemem");
        let (mem2, bar2, _) = l.region("resmem");
        let bar1 = l.bar1_size.unwrap_or(0);
        let mut a = format!(
            "console=ttyS0 panic=-1 quiet vgrace.case={} vgrace.devid={:#x}",
            self.profile, l.device_id
        );
        a += &match self.profile.as_str() {
            "gh100" => format!(
                " vgrace.bar2={bar2} vgrace.bar4={bar4} vgrace.mem2={mem2} vgrace.mem4={mem4}"
            ),
            // BAR2 is BAR1: ordinary memory over the whole BAR (memory = size, no tail).
            "gb200" => format!(
                " vgrace.bar0={BAR0_SIZE} vgrace.bar1={bar1} vgrace.bar2={bar1} \
                    vgrace.bar4={bar4} vgrace.mem2={bar1} vgrace.mem4={mem4} \
                    vgrace.b1val={B1_VAL:#x}"
            ),
            _ => format!(" vgrace.bar0={BAR0_SIZE} vgrace.bar2=0 vgrace.bar4=0"),
        };
        if mem4 > 0 {
            a += &format!(
                " vgrace.preoff={:#x} vgrace.preval={:#x} vgrace.gwoff={:#x} vgrace.gwval={:#x}",
                PRE.0, PRE.1, GW.0, GW.1
            );
        }
        if self.live {
            a += &format!(
                " vgrace.live=1 vgrace.mbox={MBOX_OFF:#x} vgrace.pokeval={POKE_VAL:#x} \
                    vgrace.wait={} vgrace.delay={}",
                self.wait.as_secs(),
                u8::from(self.reply_delay)
            );
        }
        a
    }
}

/// The live phase's host side: the control socket, the console, QEMU.
struct Live<'a> {
    ctl: PathBuf,
    console: Console,
    vm: &'a mut Vm,
    wait: Duration,
}

impl Live<'_> {
    fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let ctl = self.ctl.to_str().unwrap();
        vgrace(&[&["ctl", "--control", ctl][..], args].concat())
    }

    /// Runs `vgrace ctl ARGS...` and logs what it says.
    fn act(&self, args: &[&str]) -> Result<(), String> {
        eprintln!("[qemu-e2e] live: vgrace ctl {}", args.join(" "));
        let out = self.ctl(args)?;
        for l in out.lines() {
            eprintln!("[qemu-e2e]   ctl: {l}");
        }
        Ok(())
    }

    /// A 32-bit word of a region, as the device has it (`ctl peek --raw`).
    fn peek32(&self, region: &str, offset: u64) -> Result<u32, String> {
        let off = format!("{offset:#x}");
        let out = std::process::Command::new(qemu_guest::BIN)
            .args(["ctl", "--control", self.ctl.to_str().unwrap()])
            .args([
                "peek", "--region", region, "--offset", &off, "--count", "4", "--raw",
            ])
            .output()
            .map_err(|e| e.to_string())?;
        let bytes: [u8; 4] = out.stdout.as_slice().try_into().map_err(|_| {
            format!(
                "ctl peek {region}+{off}: {:?} {}",
                out.stdout,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok(u32::from_le_bytes(bytes))
    }

    /// How many REGION_READ messages vgrace has answered so far (`ctl --json stats`).
    fn region_reads(&self) -> Result<u64, String> {
        #[derive(Deserialize)]
        struct Stats {
            devices: Vec<Device>,
        }
        #[derive(Deserialize)]
        struct Device {
            commands: Vec<Command>,
        }
        #[derive(Deserialize)]
        struct Command {
            cmd: String,
            count: u64,
        }
        let ctl = self.ctl.to_str().unwrap();
        let stats: Stats = vgrace_json(&["ctl", "--control", ctl, "--json", "stats"])?;
        let dev = stats.devices.first().ok_or("no device in ctl stats")?;
        Ok(dev
            .commands
            .iter()
            .filter(|c| c.cmd == "REGION_READ")
            .map(|c| c.count)
            .sum())
    }

    /// Gives the guest the go for a step: its token in the mailbox.
    fn go(&self, token: u32) -> Result<(), String> {
        self.ctl(&[
            "poke",
            "--region",
            "bar4",
            "--offset",
            &format!("{MBOX_OFF:#x}"),
            "--value",
            &format!("{token:#x}"),
        ])
        .map(drop)
    }

    /// Waits for the guest's `VGRACE-SYNC <step>` line.
    fn sync(&mut self, step: &str) -> Result<String, String> {
        self.console
            .wait_line(&format!("VGRACE-SYNC {step}"), self.wait, self.vm)
            .map_err(|e| format!("the guest did not reach {step:?}: {e}"))
    }

    /// The steps; an error ends the phase as a failed check (the guest gives up on its own).
    fn run(&mut self, checks: &mut Checks, reply_delay: bool) -> Result<(), String> {
        self.sync("link-down?")?;
        // What the guest wrote before, seen from the host through the control socket.
        let v = self.peek32("bar4", GW.0)?;
        checks.host(
            "ctl-peek-guest-write",
            v == GW.1,
            format!(
                "ctl peek bar4+{:#x} = {v:#010x} (guest wrote {:#x})",
                GW.0, GW.1
            ),
        );
        // --quiet: the guest is to see the link status, so QEMU must not stop it on the error
        // interrupt a real link-down raises (the default).
        self.act(&["fault", "link-down", "--quiet"])?;
        let v = self.peek32("bar0", LINK)?;
        checks.host(
            "ctl-peek-link-status-down",
            v != 0xff,
            format!("ctl peek bar0+{LINK:#x} = {v:#010x}"),
        );
        let reads0 = self.region_reads()?;
        self.go(0x11ec_0001)?;

        self.sync("link-up?")?;
        // Between the two sync lines the guest polled the mailbox (BAR4, mapped) and read BAR0 once.
        let reads1 = self.region_reads()?;
        checks.host(
            "guest-bar0-read-is-one-region-read",
            reads1.checked_sub(reads0) == Some(1),
            format!(
                "REGION_READ count {reads0} -> {reads1} across the guest's BAR0 read and its \
                BAR4 mailbox polls (the BAR0 readiness page: REGION_READ, BAR4: mmap)"
            ),
        );
        self.act(&["fault", "link-down", "--clear"])?;
        self.go(0x11ec_0002)?;

        let line = self.sync("poke? bar4+")?;
        let off = line
            .trim_start_matches("VGRACE-SYNC poke? bar4+")
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        self.act(&[
            "poke",
            "--region",
            "bar4",
            "--offset",
            &off,
            "--value",
            &format!("{POKE_VAL:#x}"),
        ])?;
        self.go(0x11ec_0003)?;

        if reply_delay {
            self.sync("delay?")?;
            eprintln!("[qemu-e2e] live: the next reply waits 6 s, past QEMU's x-msg-timeout (5 s)");
            self.act(&["fault", "delay-replies", "--delay", "6s", "--count", "1"])?;
            self.go(0x11ec_0004)?;
        }
        self.sync("done")?;
        self.act(&["events"])?;
        self.act(&["stats"])
    }
}

/// One line of the protocol trace (`serve --trace`, JSON lines): the fields the checks use.
#[derive(Debug, Deserialize)]
struct TraceLine {
    #[serde(default)]
    dir: String,
    cmd: Option<String>,
    event: Option<String>,
    region: Option<u32>,
    offset: Option<u64>,
    us: Option<u64>,
}

/// The trace's lines (unreadable lines skipped: the header and any future kind).
fn trace_lines(path: &Path) -> Vec<TraceLine> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// QEMU's realize sequence in the trace: VERSION first, then DEVICE_GET_INFO, a region info and
/// a config space read, in this order, among its first 40 messages; and the first ones, as runs.
fn realize_sequence(trace: &[TraceLine]) -> (bool, String) {
    let msgs: Vec<String> = trace
        .iter()
        .filter(|t| t.dir == "in")
        .filter_map(|t| {
            let cmd = t.cmd.clone()?;
            Some(match t.region {
                Some(r) if cmd.starts_with("REGION_") => format!("{cmd} region={r}"),
                _ => cmd,
            })
        })
        .take(40)
        .collect();
    let first = |p: &dyn Fn(&str) -> bool| msgs.iter().position(|m| p(m));
    let at = [
        first(&|m| m == "VERSION"),
        first(&|m| m == "DEVICE_GET_INFO"),
        first(&|m| m.starts_with("DEVICE_GET_REGION_INFO")),
        first(&|m| m == "REGION_READ region=7"),
    ];
    let ok =
        at[0] == Some(0) && at.iter().all(Option::is_some) && at.windows(2).all(|w| w[0] <= w[1]);
    let mut runs: Vec<(&str, usize)> = Vec::new();
    for m in msgs.iter().take(24) {
        match runs.last_mut() {
            Some((last, n)) if last == m => *n += 1,
            _ => runs.push((m, 1)),
        }
    }
    let runs: Vec<String> = runs
        .iter()
        .map(|(m, n)| {
            if *n == 1 {
                m.to_string()
            } else {
                format!("{m} x{n}")
            }
        })
        .collect();
    (ok, format!("first messages: {}, ...", runs.join(", ")))
}

/// The protocol trace checks (after QEMU is gone and the trace has its disconnect).
fn trace_checks(checks: &mut Checks, trace: &Path, case: &Case) {
    let _ = test_support::qemu::wait_for("the trace's disconnect", Duration::from_secs(5), || {
        Ok(trace_lines(trace)
            .iter()
            .any(|t| t.event.as_deref() == Some("disconnected"))
            .then_some(()))
    });
    let lines = trace_lines(trace);
    let (ok, detail) = realize_sequence(&lines);
    checks.host("trace-realize-sequence", ok, detail);
    match vgrace(&["trace", trace.to_str().unwrap()]) {
        Ok(summary) => summary
            .lines()
            .for_each(|l| eprintln!("[qemu-e2e]   trace: {l}")),
        Err(e) => checks.host("trace-summary", false, format!("vgrace trace failed: {e}")),
    }
    if !case.live {
        return;
    }
    let link_reads = lines
        .iter()
        .filter(|t| {
            t.dir == "in"
                && t.cmd.as_deref() == Some("REGION_READ")
                && t.region == Some(0)
                && t.offset == Some(LINK)
        })
        .count();
    checks.host(
        "trace-guest-link-status-reads",
        link_reads >= 3,
        format!(
            "{link_reads} REGION_READs of BAR0+{LINK:#x} in the trace (the guest's live reads)"
        ),
    );
    if case.reply_delay {
        let late = lines.iter().any(|t| {
            t.dir == "out"
                && t.cmd.as_deref() == Some("REGION_READ")
                && t.us.is_some_and(|us| us >= 6_000_000)
        });
        checks.host(
            "trace-late-reply",
            late,
            "a REGION_READ reply sent after 6 s or more",
        );
    }
}

/// After the reply-delay probe: what QEMU and vgrace made of the late reply.
fn reply_delay_checks(checks: &mut Checks, console: &str, socket: &Path) {
    checks.host(
        "qemu-timed-out",
        console.contains("timed out waiting for reply"),
        "QEMU's vfio-user client gave up on the delayed REGION_READ (x-msg-timeout)",
    );
    checks.host(
        "qemu-late-reply-unexpected",
        console.contains("unexpected reply"),
        "QEMU called vgrace's late reply unexpected",
    );
    // vgrace outlives the broken session: a new client is served (identity and BAR0 rules pass).
    let (ok, detail) = match CheckReport::run_when_free(socket, Duration::from_secs(10)) {
        Ok(r) => (
            r.serves_a_new_client(),
            format!(
                "vgrace check: {} passed, {} failed",
                r.summary.passed, r.summary.failed
            ),
        ),
        Err(e) => (false, e),
    };
    checks.host("vgrace-serves-after-late-reply", ok, detail);
}

/// The backing file, `size` bytes, with the host's value where the guest must find it.
fn backing_file(path: &Path, size: u64, usemem_fd: u64) -> File {
    let f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(&PRE.1.to_le_bytes(), usemem_fd + PRE.0)
        .unwrap();
    f
}

#[test]
#[ignore = "needs the QEMU chroot of scripts/qemu-setup.sh and root; .ci/run runs it"]
fn guest_sees_the_device_and_the_host_sees_the_guest() {
    let case = Case::from_env();
    let Some(chroot) = Chroot::find_or_skip(Arch::X86, "qemu-e2e") else {
        return;
    };
    let device = case.device_args();
    let layout_args: Vec<&str> = ["layout", "--json"]
        .into_iter()
        .chain(device.iter().map(String::as_str))
        .collect();
    let layout: Layout = vgrace_json(&layout_args).unwrap();
    assert!(
        case.shape_ok(&layout),
        "vgrace layout is not a {} shape: {layout:?}",
        case.profile
    );
    eprintln!("[qemu-e2e] case {}", case.profile);

    let dir = RunDir::new(&chroot, "vgrace-e2e-", env_is_1("VGRACE_E2E_KEEP", false)).unwrap();
    let (kernel, initrd) = dir
        .make_guest(&chroot, "init", &["node", "hotplug", "live"])
        .unwrap();
    let (usemem, _, usemem_fd) = layout.region("usemem");
    let mut serve_args: Vec<String> = ["--socket", "--control", "--trace"]
        .iter()
        .zip(["gpu.sock", "ctl.sock", "gpu.trace"])
        .flat_map(|(flag, name)| [flag.to_string(), dir.host(name).display().to_string()])
        .chain(device.iter().cloned())
        .collect();
    let backing = (usemem > 0).then(|| {
        serve_args.extend([
            "--backing".to_string(),
            dir.host("gpu.mem").display().to_string(),
        ]);
        backing_file(&dir.host("gpu.mem"), layout.mem_size, usemem_fd)
    });
    let socket = dir.host("gpu.sock");
    let server = serve(&serve_args, &[&socket]);

    // No 64-bit hole options: the firmware puts the 64-bit BARs in a window above RAM sized from
    // the CPU's physical address bits (a BAR that does not fit is left unassigned, start 0, and
    // the guest reports it as a FAIL).
    let device_json = format!(
        r#"{{"driver":"vfio-user-pci","socket":{{"path":"{}","type":"unix"}}}}"#,
        dir.inside("gpu.sock")
    );
    let mut args = boot_args("tcg,thread=multi", &kernel, &initrd, &case.append(&layout));
    args.extend(
        [
            "-m",
            "512",
            "-object",
            "memory-backend-memfd,id=mem,size=512M,share=on",
            "-machine",
            "q35,memory-backend=mem",
            "-device",
            &device_json,
        ]
        .map(String::from),
    );
    args.extend(
        std::env::var("VGRACE_E2E_QEMU_ARGS")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string),
    );
    eprintln!(
        "[qemu-e2e] booting the guest (TCG){}",
        if case.live {
            ", then the live phase"
        } else {
            ""
        }
    );
    let started = Instant::now();
    let output = VmOutput {
        console: dir.host("console.log"),
        stderr: None,
    };
    let mut vm = Vm::start(&chroot, &args, output).unwrap();
    let console = vm.console();

    let mut checks = Checks::default();
    if case.live {
        let mut live = Live {
            ctl: dir.host("ctl.sock"),
            console: console.clone(),
            vm: &mut vm,
            wait: case.wait,
        };
        if let Err(e) = live.run(&mut checks, case.reply_delay) {
            checks.host("live-phase", false, e);
        }
    }
    // QEMU ends when the guest powers off.
    let status = vm.wait_exit(RUN_LIMIT.saturating_sub(started.elapsed()));
    let status = status.map_err(|e| e.to_string()).and_then(|s| {
        if s.success() {
            Ok(())
        } else {
            Err(format!("QEMU exited {s}"))
        }
    });
    if let Err(e) = &status {
        checks.host("qemu-exit", false, e.clone());
        vm.stop();
    }
    eprintln!(
        "[qemu-e2e] guest run {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let text = console.text();
    // What else the guest and QEMU said (the checks come at the end).
    let said = |l: &&str| {
        !l.starts_with("VGRACE-CHECK")
            && (l.starts_with("VGRACE-")
                || l.starts_with("qemu-system")
                || ["vfio", "error", "Kernel panic"]
                    .iter()
                    .any(|w| l.contains(w)))
    };
    text.lines().filter(said).for_each(|l| println!("{l}"));
    let guest = Checks::parse(&text);
    checks.extend(guest);
    if case.reply_delay {
        reply_delay_checks(&mut checks, &text, &socket);
    }
    trace_checks(&mut checks, &dir.host("gpu.trace"), &case);

    if let Some(f) = &backing {
        let mut word = [0u8; 4];
        let at = usemem_fd + GW.0;
        let (ok, got) = match f.read_exact_at(&mut word, at) {
            Ok(()) => {
                let v = u32::from_le_bytes(word);
                (v == GW.1, format!("{v:#010x}"))
            }
            Err(e) => (false, e.to_string()),
        };
        checks.host(
            "guest-write-in-backing-file",
            ok,
            format!("{got} at file offset {at:#x}, expected {:#x}", GW.1),
        );
    }
    // QEMU left the device as it does on its way out (memory decode off in
    // `vfio_pci_pre_reset`, then a reset). The next client gets a freshly opened device
    // (`vfio_pci_core_enable`), so the conformance client passes against the same server without
    // a restart. (It writes memory, so it runs after the backing file check.)
    let (ok, detail) = match CheckReport::run_when_free(&socket, Duration::from_secs(10)) {
        Ok(r) if r.failures().is_empty() && r.summary.passed > 0 => (
            true,
            format!(
                "{} rules passed against the device QEMU left behind",
                r.summary.passed
            ),
        ),
        Ok(r) => (false, r.failures().join("; ")),
        Err(e) => (false, e),
    };
    checks.host("check-after-qemu", ok, detail);
    finish(
        &format!("qemu-e2e {}", case.profile),
        &checks,
        status.is_ok() && checks.guest_passed(),
        &text,
        &server.log(),
    );
}

#[test]
fn realize_sequence_needs_version_first_then_info_region_info_and_config_reads() {
    let line = |dir: &str, cmd: &str, region: Option<u32>| TraceLine {
        dir: dir.into(),
        cmd: Some(cmd.into()),
        event: None,
        region,
        offset: None,
        us: None,
    };
    let good = vec![
        line("in", "VERSION", None),
        line("out", "VERSION", None),
        line("in", "DEVICE_GET_INFO", None),
        line("in", "DEVICE_GET_REGION_INFO", Some(0)),
        line("in", "DEVICE_GET_REGION_INFO", Some(1)),
        line("in", "REGION_READ", Some(7)),
    ];
    let (ok, detail) = realize_sequence(&good);
    assert!(ok, "{detail}");
    assert_eq!(
        detail,
        "first messages: VERSION, DEVICE_GET_INFO, DEVICE_GET_REGION_INFO x2, REGION_READ region=7, ..."
    );
    let mut late_info = good;
    late_info.swap(2, 5);
    assert!(!realize_sequence(&late_info).0);
    assert!(!realize_sequence(&[line("in", "DEVICE_GET_INFO", None)]).0);
}

#[test]
fn guest_command_line_is_one_word_per_setting_for_every_profile() {
    for (profile, live) in [("gh100", true), ("gb200", false), ("linkdown", false)] {
        let case = Case {
            profile: profile.into(),
            mem_size: (2660u64 << 20).to_string(),
            bar1_size: "256M".into(),
            live,
            reply_delay: live,
            wait: Duration::from_secs(120),
        };
        let device = case.device_args();
        let args: Vec<&str> = ["layout", "--json"]
            .into_iter()
            .chain(device.iter().map(String::as_str))
            .collect();
        let layout: Layout = vgrace_json(&args).unwrap();
        assert!(case.shape_ok(&layout), "{profile}: {layout:?}");
        let line = case.append(&layout);
        let mut keys = Vec::new();
        for word in line.split(' ').filter(|w| w.contains("vgrace.")) {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            assert!(
                !value.is_empty() && !value.contains("vgrace.") && !key.contains('='),
                "{profile}: {word:?} in {line:?}"
            );
            keys.push(key);
        }
        let n = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), n, "{profile}: a setting twice in {line:?}");
        assert!(
            keys.contains(&"vgrace.bar4") && keys.contains(&"vgrace.devid"),
            "{line}"
        );
        assert_eq!(keys.contains(&"vgrace.live"), live, "{line}");
    }
}
