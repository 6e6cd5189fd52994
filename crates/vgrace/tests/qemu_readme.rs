//! README's copy-paste run in a real guest: `vgrace serve` with the flags of README's "One
//! complete run", QEMU (cached Debian sid chroot, TCG) with exactly what README's `vgrace
//! qemu-args` line prints (comments dropped, each line shell words, as README's `eval` takes
//! them) plus `-accel tcg -nographic`, a direct kernel boot and `-no-reboot`, and a busybox guest
//! (scripts/guest/init-lspci) that runs the host's pciutils `lspci -v -d 10de:` (with the
//! libraries it links and the host's pci.ids) and powers off. Both commands are read from
//! README.md itself, so the run is the one README shows.
//!
//! The guest's lines must be README's block whose marker begins `<!-- output(captured): the guest
//! of scripts/qemu-readme.sh`; a difference fails with a diff. `VGRACE_BLESS_DOCS=1` writes the
//! guest's lines into README instead. `VGRACE_README_KEEP=1` keeps the run directory (console) in
//! the chroot's /tmp; `VGRACE_README_WAIT` bounds the guest (300 s).
//!
//! `#[ignore]`d: `bash scripts/qemu-readme.sh` sets up the chroot and pciutils, then runs
//! `cargo test -p vgrace --test qemu_readme -- --ignored --nocapture`. Without the chroot, root
//! or a host lspci: SKIPPED; `VGRACE_QEMU_REQUIRED=1` fails instead.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod qemu_guest;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use qemu_guest::{env_is_1, finish, seconds, serve, vgrace};
use test_support::diff::line_diff;
use test_support::qemu::{output_within, required, Arch, Checks, Chroot, RunDir, Vm, VmOutput};

/// The start of the marker line of README's guest block.
const MARKER: &str = "<!-- output(captured): the guest of scripts/qemu-readme.sh";
const REFRESH: &str = "VGRACE_BLESS_DOCS=1 bash scripts/qemu-readme.sh";

fn readme_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")
}

/// README's two commands, as written: the flags of `vgrace serve ... &` and of the
/// `args=$(vgrace qemu-args ... | ...)` line.
#[derive(Debug, PartialEq)]
struct ReadmeRun {
    serve: Vec<String>,
    qemu_args: Vec<String>,
}

impl ReadmeRun {
    fn parse(readme: &str) -> Result<Self, String> {
        let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        let serve = readme
            .lines()
            .find_map(|l| l.strip_prefix("vgrace serve ")?.strip_suffix(" &"))
            .ok_or("README has no `vgrace serve ... &` line")?;
        let qemu_args = readme
            .lines()
            .find_map(|l| Some(l.strip_prefix("args=$(vgrace ")?.split_once(" |")?.0))
            .ok_or("README has no `args=$(vgrace qemu-args ... |` line")?;
        let run = Self {
            serve: words(serve),
            qemu_args: words(qemu_args),
        };
        match (run.socket(&run.serve), run.socket(&run.qemu_args)) {
            (Some(a), Some(b)) if a == b && run.qemu_args[0] == "qemu-args" => Ok(run),
            _ => Err(format!(
                "README's commands do not name one --socket: {run:?}"
            )),
        }
    }

    /// The value of `--socket` in `args`.
    fn socket<'a>(&self, args: &'a [String]) -> Option<&'a str> {
        let i = args.iter().position(|a| a == "--socket")?;
        args.get(i + 1).map(String::as_str)
    }
}

/// The lines of README's guest block: (index of its first line, index past its last line).
fn guest_block(lines: &[&str]) -> Option<(usize, usize)> {
    let marker = lines.iter().position(|l| l.starts_with(MARKER))?;
    let open = marker + 1;
    lines.get(open).filter(|l| l.starts_with("```"))?;
    let len = lines[open + 1..]
        .iter()
        .position(|l| l.starts_with("```"))?;
    Some((open + 1, open + 1 + len))
}

/// README's text with its guest block replaced by `got`.
fn bless(readme: &str, got: &[&str]) -> Option<String> {
    let lines: Vec<&str> = readme.lines().collect();
    let (start, end) = guest_block(&lines)?;
    let mut out: Vec<&str> = lines[..start].to_vec();
    out.extend(got);
    out.extend(&lines[end..]);
    Some(out.join("\n") + "\n")
}

/// The guest's `lspci` lines: between `VGRACE-LSPCI-BEGIN` (at a line's end: the kernel may have
/// begun the line) and `VGRACE-LSPCI-END`, without the empty line `lspci -v` ends a device with.
fn lspci_lines(console: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = console
        .lines()
        .skip_while(|l| !l.ends_with("VGRACE-LSPCI-BEGIN"))
        .skip(1)
        .take_while(|l| *l != "VGRACE-LSPCI-END")
        .collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

/// The argv of what `vgrace qemu-args` printed: comment lines dropped, the rest shell words,
/// split by `sh` exactly as README's `eval` does.
fn qemu_argv(printed: &str) -> Vec<String> {
    let joined: Vec<&str> = printed.lines().filter(|l| !l.starts_with('#')).collect();
    let mut sh = Command::new("sh");
    sh.args(["-c", "eval \"set -- $1\" && printf '%s\\0' \"$@\"", "sh"])
        .arg(joined.join(" "));
    let out = output_within(&mut sh, Duration::from_secs(10)).unwrap();
    assert!(out.status.success(), "sh could not split {joined:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_terminator('\0')
        .map(str::to_string)
        .collect()
}

/// `--bin` and `--host` options of scripts/qemu-guest.sh for the host's lspci, the libraries it
/// links and pci.ids; `None` without an lspci on the PATH.
fn lspci_guest_files() -> Option<Vec<OsString>> {
    let path = std::env::var_os("PATH")?;
    let lspci = std::env::split_paths(&path)
        .map(|d| d.join("lspci"))
        .find(|p| p.is_file())?;
    let ldd = output_within(Command::new("ldd").arg(&lspci), Duration::from_secs(10)).ok()?;
    let mut opts: Vec<OsString> = vec!["--bin".into(), lspci.into()];
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        opts.extend(["--host".into(), lib.into()]);
    }
    opts.extend(["--host".into(), "/usr/share/misc/pci.ids".into()]);
    Some(opts)
}

/// The socket's directory in the chroot (`/tmp/vgrace` as README has it), made if missing and
/// then removed again; one that was there stays.
struct SocketDir(Option<PathBuf>);

impl SocketDir {
    fn new(dir: &Path) -> Self {
        match std::fs::create_dir(dir) {
            Ok(()) => Self(Some(dir.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self(None),
            Err(e) => panic!("{}: {e}", dir.display()),
        }
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Compares the guest's lines with README's block (or writes them there, `VGRACE_BLESS_DOCS=1`).
fn readme_block_check(checks: &mut Checks, got: &[&str]) {
    let text = std::fs::read_to_string(readme_path()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let Some((start, end)) = guest_block(&lines) else {
        checks.host(
            "readme-guest-block",
            false,
            format!("README has no fenced block after {MARKER:?}"),
        );
        return;
    };
    let want = &lines[start..end];
    if want == got {
        let detail = format!(
            "README's guest block ({} lines) is what the guest printed",
            got.len()
        );
        checks.host("readme-guest-block", true, detail);
    } else if env_is_1("VGRACE_BLESS_DOCS", false) && !got.is_empty() {
        std::fs::write(readme_path(), bless(&text, got).unwrap()).unwrap();
        checks.host("readme-guest-block", true, "README's guest block rewritten");
    } else {
        eprintln!("{}", line_diff(want, got));
        checks.host(
            "readme-guest-block",
            false,
            format!("README's guest block differs from what the guest printed (- README, + guest; diff above); refresh it with {REFRESH}"),
        );
    }
}

#[test]
#[ignore = "needs the QEMU chroot of scripts/qemu-setup.sh, root and pciutils; .ci/run runs it"]
fn readme_run_boots_a_guest_whose_lspci_is_readmes_block() {
    let Some(chroot) = Chroot::find_or_skip(Arch::X86, "qemu-readme") else {
        return;
    };
    let Some(lspci) = lspci_guest_files() else {
        assert!(
            !required(),
            "qemu-readme: VGRACE_QEMU_REQUIRED=1 but no lspci (pciutils)"
        );
        eprintln!("qemu-readme: SKIPPED: no lspci on the PATH (pciutils)");
        return;
    };
    let run = ReadmeRun::parse(&std::fs::read_to_string(readme_path()).unwrap()).unwrap();
    let dir = RunDir::new(
        &chroot,
        "vgrace-readme-",
        env_is_1("VGRACE_README_KEEP", false),
    )
    .unwrap();
    let opts: Vec<&std::ffi::OsStr> = lspci.iter().map(OsString::as_os_str).collect();
    let (kernel, initrd) = dir
        .make_guest_with(&chroot, &opts, "init-lspci", &[])
        .unwrap();

    // README's `vgrace serve`, its socket inside the chroot.
    let inside = run.socket(&run.serve).unwrap();
    let host_sock = chroot.root.join(inside.trim_start_matches('/'));
    let _sock_dir = SocketDir::new(host_sock.parent().unwrap());
    let mut serve_args = run.serve.clone();
    let i = serve_args.iter().position(|a| a == inside).unwrap();
    serve_args[i] = host_sock.display().to_string();
    let server = serve(&serve_args, &[&host_sock]);

    let words: Vec<&str> = run.qemu_args.iter().map(String::as_str).collect();
    let mut args = qemu_argv(&vgrace(&words).unwrap());
    let append = "console=ttyS0 quiet panic=-1";
    for a in [
        "-accel",
        "tcg",
        "-nographic",
        "-kernel",
        &kernel,
        "-initrd",
        &initrd,
    ] {
        args.push(a.to_string());
    }
    args.extend(["-append", append, "-no-reboot"].map(str::to_string));
    eprintln!(
        "[qemu-readme] booting the guest (TCG): qemu-system-x86_64 {}",
        args.join(" ")
    );
    let output = VmOutput {
        console: dir.host("console.log"),
        stderr: None,
    };
    let mut vm = Vm::start(&chroot, &args, output).unwrap();
    let exit = vm.wait_exit(seconds("VGRACE_README_WAIT", 300));
    vm.stop();
    let console = vm.console().text();
    let got = lspci_lines(&console);
    for l in &got {
        println!("{l}");
    }
    let mut checks = Checks::default();
    let exited = match &exit {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    };
    let listed = exit.as_ref().is_ok_and(|s| s.success()) && !got.is_empty();
    let detail = format!("{} lines of lspci -v -d 10de: (QEMU {exited})", got.len());
    checks.host("guest-lists-the-gpu", listed, detail);
    readme_block_check(&mut checks, &got);
    finish("qemu-readme", &checks, listed, &console, &server.log());
}

#[test]
fn readme_names_its_two_commands_and_one_socket() {
    let text = std::fs::read_to_string(readme_path()).unwrap();
    let run = ReadmeRun::parse(&text).unwrap();
    assert_eq!(run.serve[..2], ["--socket", "/tmp/vgrace/gpu0.sock"]);
    assert_eq!(run.qemu_args[0], "qemu-args");
    let bad = "vgrace serve --socket /a &\nargs=$(vgrace qemu-args --socket /b | grep)\n";
    assert!(ReadmeRun::parse(bad).is_err(), "two sockets");
    assert!(guest_block(&text.lines().collect::<Vec<_>>()).is_some());
}

#[test]
fn the_guest_block_is_found_compared_and_rewritten_in_place() {
    let doc = format!("a\n{MARKER}, x -->\n```text\nold 1\nold 2\n```\nb\n");
    let lines: Vec<&str> = doc.lines().collect();
    assert_eq!(guest_block(&lines), Some((3, 5)));
    assert_eq!(
        bless(&doc, &["new"]).unwrap(),
        format!("a\n{MARKER}, x -->\n```text\nnew\n```\nb\n")
    );
    assert_eq!(guest_block(&["no marker"]), None);
    assert_eq!(guest_block(&[MARKER, "not a fence"]), None);
    let console =
        "boot\n[ 1.0] x VGRACE-LSPCI-BEGIN\n01:00.0 3D\n\tFlags\n\nVGRACE-LSPCI-END\nend\n";
    assert_eq!(lspci_lines(console), ["01:00.0 3D", "\tFlags"]);
    assert!(lspci_lines("VGRACE-LSPCI-END\n").is_empty());
}

#[test]
fn qemu_args_lines_are_split_as_shell_words() {
    let printed = "# a comment\n-m 1G\n-device '{\"a\":\"b c\"}'\n";
    assert_eq!(
        qemu_argv(printed),
        ["-m", "1G", "-device", "{\"a\":\"b c\"}"]
    );
}
