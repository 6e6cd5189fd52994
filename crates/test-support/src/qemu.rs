//! The harness of the `#[ignore]`d QEMU guest tests (crates/vgrace/tests/qemu_*.rs), written once:
//!
//! - [`Chroot`]: the cached Debian sid chroot with QEMU that scripts/qemu-setup*.sh build, or why
//!   the test is skipped (`VGRACE_QEMU_REQUIRED=1`, as in CI, turns a skip into a failure);
//! - [`RunDir`]: a fresh directory in the chroot's `/tmp`, seen from the host and from QEMU;
//! - [`Vm`]: QEMU started through scripts/qemu-run.sh (the one launch line), killed and reaped
//!   with its whole process group on drop;
//! - [`Daemon`]: any other long-running helper (libvirt's daemons), ended with its process group
//!   on drop; [`output_within`]: a command run to its end within a bound ([`Chroot::command`]
//!   runs one in the chroot);
//! - [`wait_for`], [`wait_socket`], [`Console::wait_line`]: every wait is bounded;
//! - [`Qmp`]: a QMP client (greeting, capabilities, `execute` with typed replies, events);
//! - [`Checks`]: the one pass/fail format, `VGRACE-CHECK <name> PASS|FAIL <detail>` lines of the
//!   guest's serial console and the host's own checks, and its one parser.
//!
//! Nothing that QEMU or the guest sends is unwrapped: it comes back as a [`QemuError`].

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

/// What went wrong in a QEMU run.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// A bounded wait ran out.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    /// QEMU exited while something was still expected of it.
    #[error("QEMU exited ({0}) while waiting for {1}")]
    Exited(ExitStatus, String),
    /// QEMU closed its QMP socket.
    #[error("QEMU closed QMP")]
    Closed,
    /// QEMU sent something that is not the QMP it should be.
    #[error("QMP: {0}")]
    Protocol(String),
    /// QEMU answered a command with an error.
    #[error("QMP {command}: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// An I/O error (with what was being done).
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

impl QemuError {
    fn io(what: impl fmt::Display) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.to_string();
        move |e| Self::Io(what, e)
    }
}

/// The repository's scripts/ directory (the launcher and the guest's files).
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts")
}

/// True when `VGRACE_QEMU_REQUIRED=1`: a missing chroot fails the test instead of skipping it.
pub fn required() -> bool {
    std::env::var_os("VGRACE_QEMU_REQUIRED").is_some_and(|v| v == "1")
}

/// The guest architectures, each with its own cached chroot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `qemu-system-x86_64` (q35) from scripts/qemu-setup.sh.
    X86,
    /// `qemu-system-aarch64` (virt) from scripts/qemu-setup-arm64.sh.
    Arm64,
}

/// A cached chroot with QEMU and a guest kernel and busybox next to it.
#[derive(Debug, Clone)]
pub struct Chroot {
    /// The architecture.
    pub arch: Arch,
    /// The cache directory (`~/.cache/vgrace-qemu[-arm64]` or the env override).
    pub cache: PathBuf,
    /// The chroot (`cache/root`).
    pub root: PathBuf,
}

impl Chroot {
    /// The chroot of `arch`, or why it cannot be used (missing, or not root).
    pub fn find(arch: Arch) -> Result<Self, String> {
        let (env, dir, setup) = match arch {
            Arch::X86 => ("VGRACE_QEMU_CACHE", "vgrace-qemu", "qemu-setup.sh"),
            Arch::Arm64 => (
                "VGRACE_QEMU_ARM64_CACHE",
                "vgrace-qemu-arm64",
                "qemu-setup-arm64.sh",
            ),
        };
        let cache = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache")
                .join(dir)
        });
        let chroot = Self {
            arch,
            root: cache.join("root"),
            cache,
        };
        for need in [
            chroot.root.join("usr/bin").join(chroot.binary()),
            chroot.kernel(),
            chroot.busybox(),
        ] {
            if !need.exists() {
                return Err(format!(
                    "{} is missing (run scripts/{setup})",
                    need.display()
                ));
            }
        }
        if !nix::unistd::Uid::effective().is_root() {
            return Err("chroot and mount need root".into());
        }
        Ok(chroot)
    }

    /// [`Chroot::find`], or `None` after printing `<test>: SKIPPED: why`; panics instead when
    /// [`required`].
    pub fn find_or_skip(arch: Arch, test: &str) -> Option<Self> {
        match Self::find(arch) {
            Ok(c) => Some(c),
            Err(why) if required() => panic!("{test}: VGRACE_QEMU_REQUIRED=1 but {why}"),
            Err(why) => {
                eprintln!("{test}: SKIPPED: {why}");
                None
            }
        }
    }

    /// The QEMU binary's name.
    pub fn binary(&self) -> &'static str {
        match self.arch {
            Arch::X86 => "qemu-system-x86_64",
            Arch::Arm64 => "qemu-system-aarch64",
        }
    }

    /// The cached guest kernel.
    pub fn kernel(&self) -> PathBuf {
        self.cache.join(match self.arch {
            Arch::X86 => "vmlinuz",
            Arch::Arm64 => "Image",
        })
    }

    /// The cached static busybox of the guest.
    pub fn busybox(&self) -> PathBuf {
        self.cache.join("busybox")
    }

    /// `program` run in the chroot (`chroot ROOT program`), without /proc or /dev there: for
    /// what needs neither (`id`, `cat`); add arguments and run it with [`output_within`].
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("chroot");
        cmd.arg(&self.root).arg(program);
        cmd
    }

    /// The chroot QEMU's version, e.g. `11.1.3`, or why not.
    pub fn qemu_version(&self) -> Result<String, QemuError> {
        let out = Command::new("chroot")
            .arg(&self.root)
            .args([self.binary(), "--version"])
            .output()
            .map_err(QemuError::io("chroot QEMU --version"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "version")
            .nth(1)
            .map(str::to_string)
            .ok_or_else(|| QemuError::Protocol(format!("QEMU --version said {text:?}")))
    }
}

/// A fresh directory in the chroot's `/tmp`: the host (vgrace) and QEMU (in the chroot) reach the
/// same files by different paths. Removed on drop, unless `keep` was set (then its path is
/// printed).
#[derive(Debug)]
pub struct RunDir {
    dir: Option<tempfile::TempDir>,
    inside: String,
    keep: bool,
}

impl RunDir {
    /// A new directory `<chroot>/tmp/<prefix>XXXX`; `keep` leaves it behind for a look.
    pub fn new(chroot: &Chroot, prefix: &str, keep: bool) -> Result<Self, QemuError> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(chroot.root.join("tmp"))
            .map_err(QemuError::io("run directory"))?;
        let name = dir.path().file_name().map(|n| n.to_string_lossy());
        let inside = format!("/tmp/{}", name.unwrap_or_default());
        Ok(Self {
            dir: Some(dir),
            inside,
            keep,
        })
    }

    /// `name` in the directory, as the host sees it.
    pub fn host(&self, name: &str) -> PathBuf {
        self.dir
            .as_ref()
            .map_or_else(PathBuf::new, |d| d.path().join(name))
    }

    /// `name` in the directory, as QEMU in the chroot sees it.
    pub fn inside(&self, name: &str) -> String {
        format!("{}/{name}", self.inside)
    }

    /// Packs the guest's initramfs (`initrd.gz`: busybox, `init` as /init and `files`, all from
    /// scripts/guest/) and copies the cached kernel (`kernel`) here; returns their paths inside.
    pub fn make_guest(
        &self,
        chroot: &Chroot,
        init: &str,
        files: &[&str],
    ) -> Result<(String, String), QemuError> {
        self.make_guest_with(chroot, &[], init, files)
    }

    /// [`RunDir::make_guest`] with qemu-guest.sh's options first (`--bin FILE`, `--acpi AML`).
    pub fn make_guest_with(
        &self,
        chroot: &Chroot,
        options: &[&std::ffi::OsStr],
        init: &str,
        files: &[&str],
    ) -> Result<(String, String), QemuError> {
        let guest = scripts_dir().join("guest");
        let status = Command::new("bash")
            .arg(scripts_dir().join("qemu-guest.sh"))
            .args(options)
            .arg(chroot.busybox())
            .arg(self.host(""))
            .arg(guest.join(init))
            .args(files.iter().map(|f| guest.join(f)))
            .status()
            .map_err(QemuError::io("qemu-guest.sh"))?;
        if !status.success() {
            return Err(QemuError::Protocol(format!("qemu-guest.sh: {status}")));
        }
        std::fs::copy(chroot.kernel(), self.host("kernel"))
            .map_err(QemuError::io("copying the kernel"))?;
        Ok((self.inside("kernel"), self.inside("initrd.gz")))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep {
            if let Some(d) = self.dir.take() {
                eprintln!("kept {}", d.keep().display());
            }
        }
    }
}

/// The arguments every guest boot of the tests has: no default devices, no display, the serial
/// console on stdout, `accel` (TCG here), 2 CPUs, the direct kernel boot, no reboot (a guest that
/// powers off or panics ends QEMU). The machine comes after them.
pub fn boot_args(accel: &str, kernel: &str, initrd: &str, append: &str) -> Vec<String> {
    [
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-accel",
        accel,
        "-smp",
        "2",
        "-kernel",
        kernel,
        "-initrd",
        initrd,
        "-append",
        append,
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Polls `poll` every 100 ms until it gives a value, an error, or `limit` passes (then
/// [`QemuError::Timeout`] naming `what`).
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut poll: impl FnMut() -> Result<Option<T>, QemuError>,
) -> Result<T, QemuError> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = poll()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(QemuError::Timeout(limit, what.to_string()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until a unix socket at `path` accepts a connection (the connection is returned).
pub fn wait_socket(path: &Path, limit: Duration) -> Result<UnixStream, QemuError> {
    wait_for(&format!("{}", path.display()), limit, || {
        Ok(UnixStream::connect(path).ok())
    })
}

/// Waits until `path` exists.
pub fn wait_file(path: &Path, limit: Duration) -> Result<(), QemuError> {
    wait_for(&format!("{}", path.display()), limit, || {
        Ok(path.exists().then_some(()))
    })
}

/// Where a QEMU's stdout (the serial console with `-serial stdio`) and stderr go.
#[derive(Debug, Clone)]
pub struct VmOutput {
    /// The console file.
    pub console: PathBuf,
    /// QEMU's stderr: its own file, or `None` for the console file.
    pub stderr: Option<PathBuf>,
}

/// A QEMU started through scripts/qemu-run.sh in its own process group; on drop the group gets
/// SIGTERM, then SIGKILL if QEMU is not gone within 10 s, and QEMU is reaped.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    status: Option<ExitStatus>,
    output: VmOutput,
}

impl Vm {
    /// Starts `chroot`'s QEMU with `args`, stdin closed, output as `output` says.
    pub fn start<S: AsRef<std::ffi::OsStr>>(
        chroot: &Chroot,
        args: impl IntoIterator<Item = S>,
        output: VmOutput,
    ) -> Result<Self, QemuError> {
        let console = File::create(&output.console).map_err(QemuError::io("console file"))?;
        let stderr = match &output.stderr {
            Some(p) => File::create(p),
            None => console.try_clone(),
        }
        .map_err(QemuError::io("stderr file"))?;
        let child = Command::new("bash")
            .arg(scripts_dir().join("qemu-run.sh"))
            .arg(&chroot.root)
            .arg(chroot.binary())
            .args(args)
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(QemuError::io("starting qemu-run.sh"))?;
        Ok(Self {
            child,
            status: None,
            output,
        })
    }

    /// Its exit status once it has exited (reaping it), `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `limit` for QEMU to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus, QemuError> {
        wait_for("QEMU to exit", limit, || Ok(self.exited()))
    }

    /// Stops QEMU (SIGTERM to its group, SIGKILL after 10 s) and returns how it ended.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = stop_group(&mut self.child, Duration::from_secs(10));
        }
        self.status
    }

    /// The serial console.
    pub fn console(&self) -> Console {
        Console(self.output.console.clone())
    }

    /// What QEMU wrote to stderr (its own file, or the console).
    pub fn stderr(&self) -> String {
        read_lossy(self.output.stderr.as_ref().unwrap_or(&self.output.console))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Ends `child`'s process group (it was started with `process_group(0)`): SIGTERM, SIGKILL after
/// `grace`; reaps `child` and returns how it ended (at once if it already had).
fn stop_group(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(s)) = child.try_wait() {
        return Some(s);
    }
    let group = Pid::from_raw(i32::try_from(child.id()).ok()?);
    let _ = killpg(group, Signal::SIGTERM);
    if let Ok(s) = wait_for("a process group to end", grace, || {
        Ok(child.try_wait().ok().flatten())
    }) {
        return Some(s);
    }
    let _ = killpg(group, Signal::SIGKILL);
    child.wait().ok()
}

/// A long-running helper (a daemon in the chroot, say) started in its own process group and
/// ended with it on drop (SIGTERM, SIGKILL after `grace`), like [`Vm`].
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    grace: Duration,
}

impl Daemon {
    /// Spawns `cmd` (stdin closed) in a new process group.
    pub fn spawn(mut cmd: Command, grace: Duration) -> Result<Self, QemuError> {
        let child = cmd
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(QemuError::io(format!("starting {:?}", cmd.get_program())))?;
        Ok(Self { child, grace })
    }

    /// Its process id (the group's id too).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status once it has exited (reaping it), `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Ends its process group now; how it ended.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        stop_group(&mut self.child, self.grace)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `cmd` to its end, at most `limit` (then it is killed: [`QemuError::Timeout`]); its
/// output whatever its exit status. Both pipes are read meanwhile, so a chatty command does not
/// stall.
pub fn output_within(
    cmd: &mut Command,
    limit: Duration,
) -> Result<std::process::Output, QemuError> {
    let what = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(QemuError::io(format!("starting {what}")))?;
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let status = wait_for(&what, limit, || Ok(child.try_wait().ok().flatten()));
    if status.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(std::process::Output {
        status: status?,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// A file's text as lines a parser can trust: `\r` removed (a serial console ends lines with
/// `\r\n`) and terminal control sequences too (UEFI clears the screen with `ESC [ 2 J` and friends
/// right before the guest's first line); empty if unreadable.
fn read_lossy(path: &Path) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    strip_control(&text)
}

/// `text` without `\r` and without CSI sequences (`ESC [`, parameter bytes, one final byte in
/// `@`..=`~`); a lone ESC goes too.
fn strip_control(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\x1b' => {
                if chars.next_if_eq(&'[').is_some() {
                    while chars.next().is_some_and(|p| !('@'..='~').contains(&p)) {}
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// A guest's serial console log, as QEMU writes it.
#[derive(Debug, Clone)]
pub struct Console(pub PathBuf);

impl Console {
    /// Everything so far, `\r` removed.
    pub fn text(&self) -> String {
        read_lossy(&self.0)
    }

    /// The first line starting with `prefix`, if any.
    pub fn line(&self, prefix: &str) -> Option<String> {
        self.text()
            .lines()
            .find(|l| l.starts_with(prefix))
            .map(str::to_string)
    }

    /// Waits up to `limit` for a line starting with `prefix` (returned); an error when QEMU
    /// exits first.
    pub fn wait_line(
        &self,
        prefix: &str,
        limit: Duration,
        vm: &mut Vm,
    ) -> Result<String, QemuError> {
        wait_for(&format!("a console line {prefix:?}"), limit, || {
            if let Some(l) = self.line(prefix) {
                return Ok(Some(l));
            }
            match vm.exited() {
                // QEMU may have printed the line as it went: look once more.
                Some(s) => self
                    .line(prefix)
                    .map(Some)
                    .ok_or_else(|| QemuError::Exited(s, format!("{prefix:?}"))),
                None => Ok(None),
            }
        })
    }
}

/// Where a check ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// In the guest (a `VGRACE-CHECK` line of its console).
    Guest,
    /// On the host (the test itself).
    Host,
}

/// One check and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Guest or host.
    pub side: Side,
    /// Its name, e.g. `bar4-64bit-prefetchable-sized`.
    pub name: String,
    /// Whether it passed.
    pub pass: bool,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = match self.side {
            Side::Guest => "VGRACE-CHECK",
            Side::Host => "VGRACE-HOST",
        };
        let outcome = if self.pass { "PASS" } else { "FAIL" };
        write!(f, "{side} {} {outcome} {}", self.name, self.detail)
    }
}

impl Check {
    /// Parses one console line `VGRACE-CHECK <name> PASS|FAIL <detail>` (also `VGRACE-HOST`);
    /// `None` for any other line.
    pub fn parse(line: &str) -> Option<Self> {
        let (side, rest) = if let Some(r) = line.strip_prefix("VGRACE-CHECK ") {
            (Side::Guest, r)
        } else {
            (Side::Host, line.strip_prefix("VGRACE-HOST ")?)
        };
        let mut words = rest.splitn(3, ' ');
        let name = words.next().filter(|n| !n.is_empty())?.to_string();
        let pass = match words.next()? {
            "PASS" => true,
            "FAIL" => false,
            _ => return None,
        };
        let detail = words.next().unwrap_or_default().to_string();
        Some(Self {
            side,
            name,
            pass,
            detail,
        })
    }
}

/// The checks of a run: the guest's (parsed from its console) and the host's (added by the
/// test, printed as they are made).
#[derive(Debug, Default, Clone)]
pub struct Checks {
    /// Every check, in order.
    pub all: Vec<Check>,
    /// The guest's `VGRACE-RESULT PASS|FAIL p/n` verdict: (pass, the `p/n` text).
    pub guest_result: Option<(bool, String)>,
}

impl Checks {
    /// The checks and the verdict in a console's text.
    pub fn parse(console: &str) -> Self {
        let mut checks = Self::default();
        for line in console.lines() {
            if let Some(c) = Check::parse(line) {
                checks.all.push(c);
            } else if let Some(r) = line.strip_prefix("VGRACE-RESULT ") {
                let (verdict, counts) = r.split_once(' ').unwrap_or((r, ""));
                checks.guest_result = Some((verdict == "PASS", counts.trim().to_string()));
            }
        }
        checks
    }

    /// Records a host check.
    pub fn host(&mut self, name: &str, pass: bool, detail: impl Into<String>) {
        let c = Check {
            side: Side::Host,
            name: name.to_string(),
            pass,
            detail: detail.into(),
        };
        self.all.push(c);
    }

    /// Adds `other`'s checks (a guest console parsed after the host's checks began).
    pub fn extend(&mut self, other: Checks) {
        self.all.extend(other.all);
        self.guest_result = other.guest_result.or(self.guest_result.take());
    }

    /// Whether the check `name` ran and passed.
    pub fn passed(&self, name: &str) -> bool {
        self.all.iter().any(|c| c.name == name && c.pass)
    }

    /// The checks that failed.
    pub fn failed(&self) -> Vec<&Check> {
        self.all.iter().filter(|c| !c.pass).collect()
    }

    /// (passed, total) on one side.
    pub fn count(&self, side: Side) -> (usize, usize) {
        let on: Vec<_> = self.all.iter().filter(|c| c.side == side).collect();
        (on.iter().filter(|c| c.pass).count(), on.len())
    }

    /// The guest's verdict as it printed it (`PASS 15/15`), or `no verdict`.
    pub fn verdict(&self) -> String {
        match &self.guest_result {
            Some((pass, counts)) => format!("{} {counts}", if *pass { "PASS" } else { "FAIL" }),
            None => "no verdict".into(),
        }
    }

    /// `guest 15/15, host 7/7`.
    pub fn summary(&self) -> String {
        let (gp, gn) = self.count(Side::Guest);
        let (hp, hn) = self.count(Side::Host);
        format!("guest {gp}/{gn}, host {hp}/{hn}")
    }

    /// True when the guest printed `VGRACE-RESULT PASS p/n` and `n` is the number of its checks
    /// parsed here (a check line the parser missed is a failure, not a smaller count).
    pub fn guest_passed(&self) -> bool {
        let Some((true, counts)) = &self.guest_result else {
            return false;
        };
        let total = counts
            .split('/')
            .nth(1)
            .and_then(|n| n.parse::<usize>().ok());
        total == Some(self.count(Side::Guest).1)
    }

    /// True when at least one check ran and none failed.
    pub fn none_failed(&self) -> bool {
        !self.all.is_empty() && self.failed().is_empty()
    }

    /// True when the guest said PASS, at least one check ran and none failed.
    pub fn all_passed(&self) -> bool {
        self.guest_passed() && self.none_failed()
    }
}

/// QEMU's version in `query-version`.
#[derive(Debug, Clone, Deserialize)]
pub struct QmpVersion {
    /// major, minor, micro.
    pub qemu: QmpVersionTriple,
    /// The distribution's package string.
    #[serde(default)]
    pub package: String,
}

/// `{major, minor, micro}`.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct QmpVersionTriple {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Micro.
    pub micro: u32,
}

impl fmt::Display for QmpVersionTriple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// `query-status`'s reply.
#[derive(Debug, Clone, Deserialize)]
pub struct QmpStatus {
    /// e.g. `running`, `prelaunch`.
    pub status: String,
    /// Whether the CPUs run.
    #[serde(default)]
    pub running: bool,
}

/// The empty `{}` reply of commands such as `device_add`.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct QmpEmpty {}

/// An asynchronous QMP event.
#[derive(Debug, Clone, Deserialize)]
pub struct QmpEvent {
    /// Its name, e.g. `DEVICE_DELETED`.
    pub event: String,
    /// Its data (event specific).
    #[serde(default)]
    pub data: Value,
}

#[derive(Deserialize)]
struct QmpErrorBody {
    class: String,
    desc: String,
}

/// One message from QEMU.
#[derive(Deserialize)]
#[serde(untagged)]
enum QmpMessage {
    Return {
        #[serde(rename = "return")]
        ret: Value,
    },
    Error {
        error: QmpErrorBody,
    },
    Event(QmpEvent),
    Greeting {
        #[serde(rename = "QMP")]
        _qmp: Value,
    },
}

/// A QMP session over a unix socket: commands one at a time; events that arrive meanwhile are
/// queued for [`Qmp::wait_event`]. Every read is bounded by the session's timeout.
#[derive(Debug)]
pub struct Qmp {
    stream: BufReader<UnixStream>,
    writer: UnixStream,
    partial: Vec<u8>,
    events: VecDeque<QmpEvent>,
    timeout: Duration,
}

impl Qmp {
    /// Connects to `path` (waiting up to `timeout` for QEMU to listen; an error if `vm` exits
    /// first), reads the greeting and leaves capabilities negotiation.
    pub fn connect(path: &Path, timeout: Duration, vm: &mut Vm) -> Result<Self, QemuError> {
        let stream = wait_for("the QMP socket", timeout, || {
            if let Ok(s) = UnixStream::connect(path) {
                return Ok(Some(s));
            }
            match vm.exited() {
                Some(s) => Err(QemuError::Exited(s, "the QMP socket".into())),
                None => Ok(None),
            }
        })?;
        Self::handshake(stream, timeout)
    }

    /// Reads the greeting on `stream` and sends `qmp_capabilities`; `timeout` bounds each reply.
    pub fn handshake(stream: UnixStream, timeout: Duration) -> Result<Self, QemuError> {
        let writer = stream.try_clone().map_err(QemuError::io("QMP socket"))?;
        let mut qmp = Self {
            stream: BufReader::new(stream),
            writer,
            partial: Vec::new(),
            events: VecDeque::new(),
            timeout,
        };
        match qmp.message(Instant::now() + timeout)? {
            QmpMessage::Greeting { .. } => {}
            _ => return Err(QemuError::Protocol("no greeting".into())),
        }
        qmp.execute::<QmpEmpty>("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    /// The next message, before `deadline`.
    fn message(&mut self, deadline: Instant) -> Result<QmpMessage, QemuError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QemuError::Timeout(self.timeout, "a QMP message".into()));
            }
            self.stream
                .get_ref()
                .set_read_timeout(Some(left))
                .map_err(QemuError::io("QMP socket"))?;
            // read_until keeps a partial line in `partial` across a timed-out read.
            match self.stream.read_until(b'\n', &mut self.partial) {
                Ok(0) => return Err(QemuError::Closed),
                Ok(_) if self.partial.ends_with(b"\n") => {
                    let line = std::mem::take(&mut self.partial);
                    return serde_json::from_slice(&line).map_err(|e| {
                        QemuError::Protocol(format!("{}: {e}", String::from_utf8_lossy(&line)))
                    });
                }
                Ok(_) => return Err(QemuError::Closed),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Err(QemuError::Closed),
                Err(e) => return Err(QemuError::Io("QMP read".into(), e)),
            }
        }
    }

    /// Runs `command` with `arguments` and decodes its `return` value as `T`.
    pub fn execute<T: DeserializeOwned>(
        &mut self,
        command: &str,
        arguments: Value,
    ) -> Result<T, QemuError> {
        // One write: QEMU acts on a complete object at once (a `quit` written in two pieces can
        // be obeyed, and the socket closed, before the second).
        let msg = format!(
            "{}\n",
            json!({ "execute": command, "arguments": arguments })
        );
        self.writer
            .write_all(msg.as_bytes())
            .map_err(|e| match e.kind() {
                ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => QemuError::Closed,
                _ => QemuError::Io(format!("QMP write ({command})"), e),
            })?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.message(deadline)? {
                QmpMessage::Return { ret } => {
                    return serde_json::from_value(ret.clone())
                        .map_err(|e| QemuError::Protocol(format!("{command} returned {ret}: {e}")))
                }
                QmpMessage::Error { error } => {
                    return Err(QemuError::Command {
                        command: command.to_string(),
                        class: error.class,
                        desc: error.desc,
                    })
                }
                QmpMessage::Event(e) => self.events.push_back(e),
                QmpMessage::Greeting { .. } => {
                    return Err(QemuError::Protocol("a second greeting".into()))
                }
            }
        }
    }

    /// Waits up to `limit` for the event `name` (returned), also looking at the ones queued;
    /// the other events seen meanwhile are returned by [`Qmp::take_events`].
    pub fn wait_event(&mut self, name: &str, limit: Duration) -> Result<QmpEvent, QemuError> {
        let mut skipped = Vec::new();
        let found = (|| {
            while let Some(e) = self.events.pop_front() {
                if e.event == name {
                    return Ok(e);
                }
                skipped.push(e);
            }
            let deadline = Instant::now() + limit;
            loop {
                match self.message(deadline) {
                    Ok(QmpMessage::Event(e)) if e.event == name => return Ok(e),
                    Ok(QmpMessage::Event(e)) => skipped.push(e),
                    Ok(_) => {}
                    Err(QemuError::Timeout(..)) => {
                        return Err(QemuError::Timeout(limit, format!("QMP event {name}")))
                    }
                    Err(e) => return Err(e),
                }
            }
        })();
        self.events.extend(skipped);
        found
    }

    /// The events received and not yet waited for, oldest first.
    pub fn take_events(&mut self) -> Vec<QmpEvent> {
        self.events.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_lines_parse_with_their_detail_and_other_lines_do_not() {
        let c = Check::parse("VGRACE-CHECK bar4-sized PASS start=0x1 size=0x2").unwrap();
        assert_eq!(
            (c.side, c.name.as_str(), c.pass),
            (Side::Guest, "bar4-sized", true)
        );
        assert_eq!(c.detail, "start=0x1 size=0x2");
        let h = Check::parse("VGRACE-HOST check-after-qemu FAIL").unwrap();
        assert_eq!((h.side, h.pass, h.detail.as_str()), (Side::Host, false, ""));
        for bad in [
            "VGRACE-CHECK x MAYBE y",
            "VGRACE-CHECK  PASS y",
            "VGRACE-SYNC link-down?",
            "VGRACE-CHECK",
            "[    0.1] VGRACE-CHECK x PASS",
        ] {
            assert_eq!(Check::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn checks_need_the_guest_verdict_and_no_failure() {
        let text = "boot\nVGRACE-CHECK a PASS x\nVGRACE-CHECK b PASS y\nVGRACE-RESULT PASS 2/2\n";
        let mut checks = Checks::parse(text);
        assert!(checks.all_passed());
        assert_eq!(checks.summary(), "guest 2/2, host 0/0");
        checks.host("h", false, "no");
        assert!(!checks.all_passed());
        assert_eq!(checks.failed().len(), 1);
        assert!(
            !Checks::parse("VGRACE-CHECK a PASS x\n").all_passed(),
            "no verdict"
        );
        assert!(
            !Checks::parse("VGRACE-RESULT PASS 0/0\n").all_passed(),
            "no checks"
        );
    }

    #[test]
    fn console_text_loses_carriage_returns_and_terminal_escapes() {
        let raw = "\x1b[2J\x1b[001;001H\x1b[=3hVGRACE-CHECK a PASS x\r\nnext\x1b\r\n";
        assert_eq!(strip_control(raw), "VGRACE-CHECK a PASS x\nnext\n");
        let checks = Checks::parse(&strip_control(raw));
        assert_eq!(checks.all.len(), 1);
    }

    #[test]
    fn qmp_client_negotiates_returns_typed_replies_and_queues_events() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let qemu = std::thread::spawn(move || {
            let mut r = BufReader::new(theirs.try_clone().unwrap());
            let mut w = theirs;
            let mut line = String::new();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"), "{line}");
            w.write_all(b"{\"return\": {}}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("query-status"), "{line}");
            // An event before the reply, the reply in two writes.
            w.write_all(b"{\"event\": \"RESUME\", \"data\": {}, \"timestamp\": {}}\n{\"return\": {\"status\": \"run")
                .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            w.write_all(b"ning\", \"running\": true}}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            w.write_all(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}}\n")
                .unwrap();
            // Then nothing: QEMU goes away.
        });
        let mut qmp = Qmp::handshake(ours, Duration::from_secs(10)).unwrap();
        let status: QmpStatus = qmp.execute("query-status", json!({})).unwrap();
        assert_eq!((status.status.as_str(), status.running), ("running", true));
        let err = qmp
            .execute::<QmpEmpty>("device_del", json!({"id": "x"}))
            .unwrap_err();
        assert!(
            matches!(&err, QemuError::Command { class, .. } if class == "GenericError"),
            "{err}"
        );
        assert_eq!(
            qmp.wait_event("RESUME", Duration::from_secs(5))
                .unwrap()
                .event,
            "RESUME"
        );
        qemu.join().unwrap();
        let closed = qmp.wait_event("DEVICE_DELETED", Duration::from_secs(5));
        assert!(matches!(closed, Err(QemuError::Closed)), "{closed:?}");
    }

    #[test]
    fn qmp_waits_are_bounded_and_a_wrong_reply_type_is_an_error() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut w = theirs.try_clone().unwrap();
        w.write_all(b"{\"QMP\": {}}\n{\"return\": {}}\n").unwrap();
        let mut qmp = Qmp::handshake(ours, Duration::from_millis(300)).unwrap();
        let t = Instant::now();
        let r = qmp.wait_event("DEVICE_DELETED", Duration::from_millis(200));
        assert!(matches!(r, Err(QemuError::Timeout(..))), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
        w.write_all(b"{\"return\": 7}\n").unwrap();
        let r = qmp.execute::<QmpStatus>("query-status", json!({}));
        assert!(matches!(r, Err(QemuError::Protocol(_))), "{r:?}");
        w.write_all(b"not json\n").unwrap();
        let r = qmp.execute::<QmpEmpty>("stop", json!({}));
        assert!(matches!(r, Err(QemuError::Protocol(_))), "{r:?}");
        let r = qmp.execute::<QmpEmpty>("stop", json!({}));
        assert!(matches!(r, Err(QemuError::Timeout(..))), "{r:?}");
        drop(theirs);
    }

    #[test]
    fn output_within_returns_any_exit_and_kills_at_its_limit() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = output_within(&mut cmd, Duration::from_secs(10)).unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(
            (&out.stdout[..], &out.stderr[..]),
            (&b"out\n"[..], &b"err\n"[..])
        );
        let t = Instant::now();
        let r = output_within(Command::new("sleep").arg("30"), Duration::from_millis(200));
        assert!(matches!(r, Err(QemuError::Timeout(..))), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_daemon_ends_with_its_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let mut cmd = Command::new("sh");
        // A child in the background that ignores nothing: SIGTERM to the group ends it too.
        cmd.arg("-c")
            .arg("sleep 60 & echo $! >\"$0\"; wait")
            .arg(&pid_file);
        let mut d = Daemon::spawn(cmd, Duration::from_secs(5)).unwrap();
        let pid: i32 = wait_for("the pid file", Duration::from_secs(10), || {
            Ok(std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.trim().parse().ok()))
        })
        .unwrap();
        assert!(d.stop().is_some());
        // Gone, or a zombie its new parent has not reaped yet.
        let stat = format!("/proc/{pid}/stat");
        let gone = wait_for("the background child", Duration::from_secs(5), || {
            let s = std::fs::read_to_string(&stat).unwrap_or_default();
            Ok((s.is_empty() || s.contains(") Z ")).then_some(()))
        });
        assert!(
            gone.is_ok(),
            "the group's other process outlived the daemon"
        );
    }

    #[test]
    fn wait_for_gives_up_at_its_limit() {
        let t = Instant::now();
        let r = wait_for::<()>("nothing", Duration::from_millis(250), || Ok(None));
        assert!(matches!(r, Err(QemuError::Timeout(..))));
        assert!(t.elapsed() >= Duration::from_millis(250) && t.elapsed() < Duration::from_secs(5));
        let dir = tempfile::tempdir().unwrap();
        assert!(wait_file(&dir.path().join("no"), Duration::from_millis(150)).is_err());
        assert!(wait_file(dir.path(), Duration::from_millis(150)).is_ok());
        assert!(wait_socket(&dir.path().join("s"), Duration::from_millis(150)).is_err());
    }
}
