//! End-to-end tests of the `vgrace` binary: real processes, real sockets, real signals.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use test_support::ServeChild;

use common::vgrace;

const BIN: &str = env!("CARGO_BIN_EXE_vgrace");

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `vgrace ARGS` must exit with `code` and say why in exactly one line on stderr; returns it.
fn refused(args: &[&str], code: i32) -> String {
    let out = vgrace(args);
    let err = stderr_of(&out);
    let cmd = args.join(" ");
    assert_eq!(out.status.code(), Some(code), "vgrace {cmd}: {err}");
    assert_eq!(err.lines().count(), 1, "vgrace {cmd}: {err}");
    err
}

/// `vgrace ARGS` must succeed; returns its stdout.
fn succeeds(args: &[&str]) -> String {
    let out = vgrace(args);
    let cmd = args.join(" ");
    assert!(out.status.success(), "vgrace {cmd}: {}", stderr_of(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `vgrace serve --socket SOCKET --mem-size 3543348019 EXTRA...` (killed if a test fails before
/// stopping it), once it answers on the socket (a stale socket file may exist before it binds).
fn start(socket: &Path, extra: &[&str]) -> ServeChild {
    ServeChild::serve(BIN, serve_args(socket, extra)).wait_listening(&[socket])
}

/// For servers that refuse our uid: waits for the socket file instead of a session.
fn start_without_probe(socket: &Path, extra: &[&str]) -> ServeChild {
    ServeChild::serve(BIN, serve_args(socket, extra)).wait_created(&[socket])
}

fn serve_args<'a>(socket: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--socket",
        socket.to_str().unwrap(),
        "--mem-size",
        "3543348019",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn unknown_flag_is_one_line_and_exit_2() {
    refused(&["serve", "--no-such-flag"], 2);
}

/// clap's message keeps the missing argument's name and the usage line, on one line with exit
/// code 2 (it used to stop at "not provided:").
#[test]
fn missing_required_argument_is_named_with_the_usage() {
    let err = refused(&["check"], 2);
    assert!(
        err.contains("the following required arguments were not provided: --socket <SOCKET>"),
        "{err}"
    );
    assert!(
        err.contains("usage: vgrace check --socket <SOCKET>"),
        "{err}"
    );
    let err = refused(&["layout", "--profile", "foo"], 2);
    assert!(err.contains("invalid value 'foo' for '--profile"), "{err}");
    assert!(err.contains("expected gh100, gb200 or seed"), "{err}");
    let out = vgrace(&["serve", "--mem-sze", "4G"]);
    let err = stderr_of(&out);
    assert!(
        err.contains("a similar argument exists: '--mem-size'"),
        "{err}"
    );
}

/// Bare `vgrace` is a usage error as clap has it (help on stderr, exit 2);
/// `vgrace --help` is help on stdout with exit 0.
#[test]
fn bare_vgrace_is_a_usage_error_and_help_is_not() {
    let out = vgrace(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr_of(&out).contains("Usage: vgrace <COMMAND>"),
        "{}",
        stderr_of(&out)
    );
    let out = vgrace(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty(), "{}", stderr_of(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: vgrace <COMMAND>"));
}

#[test]
fn bad_size_is_refused_clearly() {
    let err = refused(&["layout", "--mem-size", "12Q"], 2);
    assert!(err.contains("12Q"), "{err}");
}

/// Size suffixes are binary in any case; `GB` and friends are refused with the
/// binary spelling to use, on the command line as in the TOML file.
#[test]
fn size_suffixes_are_binary_and_gb_is_refused() {
    for (size, bytes) in [
        ("96g", 96u64 << 30),
        ("96GiB", 96 << 30),
        ("98304m", 96 << 30),
    ] {
        let out = succeeds(&["layout", "--json", "--mem-size", size]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["mem_size"], bytes, "{size}");
    }
    for flag in ["--mem-size", "--bar1-size"] {
        let err = refused(&["layout", flag, "96GB"], 2);
        assert!(err.contains("write 96G or 96GiB"), "{err}");
        assert!(err.contains("byte count"), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gb.toml");
    std::fs::write(
        &cfg,
        "[[device]]\nsocket = \"/tmp/gb.sock\"\nmem_size = \"96GB\"\n",
    )
    .unwrap();
    let err = refused(&["layout", "--config", cfg.to_str().unwrap()], 1);
    assert!(
        err.contains("mem_size") && err.contains("write 96G or 96GiB"),
        "{err}"
    );
    let help = succeeds(&["serve", "--help"]);
    assert!(help.contains("KiB, MiB, GiB, TiB"), "{help}");
}

/// --guest-mem is a size QEMU takes, printed in QEMU's form; garbage, `GB` and 0 are
/// refused with one line.
#[test]
fn qemu_args_guest_mem_is_validated_and_printed_for_qemu() {
    for (given, printed) in [
        ("8GiB", "size=8G,"),
        ("1536m", "size=1536M,"),
        ("1t", "size=1T,"),
    ] {
        let text = succeeds(&["qemu-args", "--guest-mem", given, "--machine", "q35"]);
        assert!(text.contains(printed), "{given}: {text}");
    }
    for bad in ["8X", "8GB", "0", "lots", "8G8"] {
        let out = vgrace(&["qemu-args", "--guest-mem", bad]);
        assert!(out.stdout.is_empty(), "{bad}");
        let err = refused(&["qemu-args", "--guest-mem", bad], 2);
        assert!(err.contains("--guest-mem"), "{err}");
    }
}

/// A refused --device-id lists exactly the chosen profile's ids, and the docs (the command
/// reference and the config reference) and `--help` list the same ids per profile as the device
/// model's table.
#[test]
fn device_id_error_lists_the_profiles_ids_as_the_docs_and_help_do() {
    use vgrace_device::Profile;
    let squash = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    let help = squash(&succeeds(&["serve", "--help"]));
    let commands = squash(include_str!("../../../docs/commands.md"));
    let config = squash(include_str!("../../../docs/config.md"));
    let all = [0x2342u16, 0x2343, 0x2345, 0x2348, 0x2941, 0x31c2];
    for profile in [Profile::Gh100, Profile::Gb200, Profile::Seed] {
        let ids: Vec<String> = profile
            .device_ids()
            .iter()
            .map(|i| format!("{i:#06x}"))
            .collect();
        let listed = format!("{profile} {}", ids.join(", "));
        assert!(help.contains(&listed), "--help lacks `{listed}`: {help}");
        assert!(
            commands.contains(&listed),
            "docs/commands.md lacks `{listed}`"
        );
        assert!(config.contains(&listed), "docs/config.md lacks `{listed}`");
        let name = profile.to_string();
        for asked in ["0x1234", "0x2343", "0x2941"] {
            let args = ["layout", "--profile", &name, "--device-id", asked];
            let id = u16::from_str_radix(&asked[2..], 16).unwrap();
            if profile.device_ids().contains(&id) {
                succeeds(&args);
                continue;
            }
            let err = refused(&args, 1);
            assert!(err.contains(&ids.join(", ")), "{name} {asked}: {err}");
            for other in all.iter().filter(|i| !profile.device_ids().contains(i)) {
                let other = format!("{other:#06x}");
                assert!(
                    other == asked || !err.contains(&other),
                    "{name} {asked}: {err}"
                );
            }
        }
    }
}

/// With --config the file describes the devices; a device flag given too is refused with one
/// line naming it (serve, layout and qemu-args), not ignored.
#[test]
fn config_with_a_device_flag_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gpu.sock");
    let cfg = dir.path().join("one.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[device]]\nsocket = \"{}\"\nmem_size = \"4G\"\n",
            socket.display()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    for (verb, flag, value) in [
        ("serve", "--mem-size", Some("4G")),
        ("serve", "--profile", Some("gb200")),
        ("serve", "--no-mem-properties", None),
        ("layout", "--bar1-size", Some("256M")),
        ("qemu-args", "--poison", Some("4:0x1000")),
    ] {
        let mut args = vec![verb, "--config", cfg, flag];
        args.extend(value);
        let err = refused(&args, 2);
        assert!(
            err.contains(&format!("{flag} cannot be used with --config")),
            "{err}"
        );
        assert!(!socket.exists());
    }
    let err = refused(&["serve", "--config", cfg, "--socket", "other.sock"], 2);
    assert!(err.contains("'--socket <SOCKET>'"), "{err}");
    succeeds(&["layout", "--config", cfg, "--json"]);
}

/// The docs say what the guest scripts need before anyone runs them, and what they say about the
/// mirror is what the scripts do.
#[test]
fn docs_say_the_guest_scripts_need_root_apt_and_a_mirror() {
    let ci = include_str!("../../../docs/ci.md");
    let lib = include_str!("../../../scripts/qemu-setup-lib.sh");
    let needs = ci
        .find("need **root**, **apt** and a **Debian mirror**")
        .expect("docs/ci.md names the requirements");
    assert!(ci[..needs].contains("`scripts/qemu-e2e.sh`"));
    let said = &ci[needs..];
    assert!(said.contains("VGRACE_DEBIAN_MIRROR"));
    assert!(said.contains("/etc/apt/sources.list"));
    assert!(lib.contains("VGRACE_DEBIAN_MIRROR") && lib.contains("/etc/apt/sources.list"));
    assert!(lib.contains("apt-get install"));
}

#[test]
fn zero_stall_timeout_is_refused_clearly() {
    let err = refused(&["serve", "--stall-timeout", "0s"], 2);
    assert!(err.contains("stall timeout must be above zero"), "{err}");
}

/// Every duration flag and config key: 2^64-1 s panicked (an `Instant` overflow) before.
#[test]
fn huge_durations_are_one_line_errors_not_panics() {
    const HUGE: &str = "18446744073709551615s";
    for flag in [
        "--ready-delay",
        "--ready-timeout",
        "--reset-ready-delay",
        "--stall-timeout",
    ] {
        let err = refused(&["serve", flag, HUGE], 2);
        assert!(err.contains("longer than a day"), "{flag}: {err}");
    }
    let cxl = ["--cxl", "--profile", "gb200", "--cxl-active-delay", HUGE];
    refused(&[&["serve"][..], &cxl].concat(), 2);
    refused(&["check", "--socket", "x.sock", "--ready-timeout", HUGE], 2);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!("[[device]]\nsocket = \"gpu.sock\"\nready_timeout = \"{HUGE}\"\n"),
    )
    .unwrap();
    let err = refused(&["serve", "--config", config.to_str().unwrap()], 1);
    assert!(err.contains("longer than a day"), "{err}");
}

/// A socket path past `sun_path` could be bound (through a short private path) but never
/// reached: refused at start, nothing created, instead of announced.
#[test]
fn socket_and_control_paths_too_long_to_connect_to_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("d".repeat(60)).join("e".repeat(60));
    let long = deep.join("gpu.sock");
    assert!(long.as_os_str().len() > 108);
    let short = dir.path().join("gpu.sock");
    for args in [
        vec!["serve", "--socket", long.to_str().unwrap()],
        vec![
            "serve",
            "--socket",
            short.to_str().unwrap(),
            "--control",
            long.to_str().unwrap(),
        ],
    ] {
        let err = refused(&args, 1);
        assert!(err.contains("no client could connect to it"), "{err}");
        assert!(!deep.exists() && !short.exists(), "{err}");
    }
}

/// Size 0 is the firmware's "C2C link down": not a refusal but a plain vfio-pci function (all
/// versions: the probe falls back to the core ops).
#[test]
fn zero_size_is_served_as_a_core_device() {
    let text = succeeds(&["layout", "--mem-size", "0", "--profile", "gb200"]);
    assert!(text.contains("no memory regions"), "{text}");
    assert!(text.contains("C2C link is down"), "{text}");
    assert!(text.contains("real BAR1"), "{text}");
}

/// From 6.14 a device that never reads ready is not offered: serve waits --ready-timeout,
/// then exits with one clear line; --serve-unready serves it anyway; 6.9 never polled.
#[test]
fn never_ready_device_is_not_served_from_6_14() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gpu.sock");
    let out = vgrace(&[
        "serve",
        "--socket",
        socket.to_str().unwrap(),
        "--mem-size",
        "3543348019",
        "--fault",
        "never-ready",
        "--ready-timeout",
        "1s",
    ]);
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("did not become ready"), "{err}");
    assert!(err.contains("--serve-unready"), "{err}");
    assert!(!socket.exists());
    let _unready = start(&socket, &["--fault", "never-ready", "--serve-unready"]);
    let old = dir.path().join("old.sock");
    let _v69 = start(&old, &["--fault", "never-ready", "--linux", "6.9"]);
}

#[test]
fn every_verb_has_help() {
    for verb in ["serve", "layout", "check", "qemu-args"] {
        assert!(succeeds(&[verb, "--help"]).contains("Usage"), "{verb}");
    }
}

#[test]
fn layout_json_reports_gh100_96g_split() {
    let v: serde_json::Value = serde_json::from_str(&succeeds(&["layout", "--json"])).unwrap();
    let regions = v["regions"].as_array().unwrap();
    let bar4 = regions.iter().find(|r| r["bar"] == 4).unwrap();
    let bar2 = regions.iter().find(|r| r["bar"] == 2).unwrap();
    assert_eq!(bar4["memlength"], 95u64 << 30);
    assert_eq!(bar4["bar_size"], 128u64 << 30);
    assert_eq!(bar2["memlength"], 1u64 << 30);
    assert_eq!(bar2["bar_size"], 1u64 << 30);
}

#[test]
fn unreadable_config_is_one_line() {
    let err = refused(&["serve", "--config", "/nonexistent/vgrace.toml"], 1);
    assert!(err.contains("/nonexistent/vgrace.toml"), "{err}");
}

#[test]
fn broken_config_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[[device]]\nsocket = 3\n").unwrap();
    refused(&["serve", "--config", path.to_str().unwrap()], 1);
}

/// A socket whose directory cannot be made (a regular file is in the way, which stops root too)
/// is one line naming the directory and the socket.
#[test]
fn socket_whose_directory_cannot_be_made_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), b"").unwrap();
    let socket = dir.path().join("file/run/gpu.sock");
    let socket_arg = socket.to_str().unwrap();
    let err = refused(&["serve", "--socket", socket_arg, "--mem-size", "4G"], 1);
    assert!(err.contains("cannot create directory"), "{err}");
    assert!(err.contains(socket.to_str().unwrap()), "{err}");
}

/// A config file on a fresh machine (as README's example is): the missing parents of the sockets and
/// of a backing file are made (0755, one log line each) instead of failing.
#[test]
fn serve_creates_missing_socket_and_backing_directories() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("run/vgrace/gpu0.sock");
    let b = dir.path().join("run/vgrace/gpu1.sock");
    let backing = dir.path().join("var/lib/vgrace/gpu1.mem");
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[device]]\nsocket = \"{}\"\nmem_size = \"4G\"\n\n[[device]]\nsocket = \"{}\"\nprofile = \"gb200\"\nmem_size = \"3G\"\nbacking = \"{}\"\n",
            a.display(),
            b.display(),
            backing.display()
        ),
    )
    .unwrap();
    let mut served =
        ServeChild::serve(BIN, ["--config", cfg.to_str().unwrap()]).wait_listening(&[&a, &b]);
    let (status, err) = served.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{err}");
    for d in ["run", "run/vgrace", "var", "var/lib", "var/lib/vgrace"] {
        let path = dir.path().join(d);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "{d}");
        assert_eq!(
            err.matches(&format!("created directory {}\n", path.display()))
                .count(),
            1,
            "{d}: {err}"
        );
    }
    assert!(backing.exists(), "{err}");
}

/// The server's log once it holds `needle` (the ready lines follow the bind: a client may
/// connect just before they are written); at most 10 s.
fn log_with(served: &ServeChild, needle: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let log = served.log();
        if log.contains(needle) || std::time::Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The command after `prefix` in a server's log (`attach with: vgrace ...`), run as the binary:
/// its output.
fn run_logged_command(log: &str, prefix: &str) -> Output {
    let line = log
        .lines()
        .find_map(|l| l.split_once(prefix).map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no `{prefix}` in: {log}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"vgrace"), "{line}");
    vgrace(&words[1..])
}

/// Started with a relative socket, serve names its absolute path and says how to
/// attach and check, with the flags that describe the device served; both commands work.
#[test]
fn serve_ready_line_shows_absolute_path_and_next_steps() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gpu.sock");
    let device = [
        "--profile",
        "gb200",
        "--mem-size",
        "3G",
        "--linux",
        "6.14",
        "--bar1-size",
        "256M",
    ];
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir.path())
        .args(["serve", "--socket", "gpu.sock"])
        .args(device);
    let served = ServeChild::spawn(cmd).unwrap().wait_listening(&[&socket]);
    let abs = socket.to_str().unwrap();
    let log = log_with(&served, "check with: ");
    assert!(log.contains(&format!("on {abs}\n")), "{log}");
    assert!(
        log.contains(&format!("attach with: vgrace qemu-args --socket {abs} ")),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "check with: vgrace check --socket {abs} --linux 6.14\n"
        )),
        "{log}"
    );
    let attach = run_logged_command(&log, "attach with: ");
    assert!(attach.status.success(), "{}", stderr_of(&attach));
    let mut direct = vec!["qemu-args", "--socket", abs];
    direct.extend(device);
    assert_eq!(
        String::from_utf8_lossy(&attach.stdout),
        String::from_utf8_lossy(&vgrace(&direct).stdout)
    );
    let check = run_logged_command(&log, "check with: ");
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{stdout}{}", stderr_of(&check));

    // With --config (given relative): qemu-args takes the file, check each socket.
    let a = dir.path().join("a.sock");
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[device]]\nsocket = \"{}\"\nmem_size = \"4G\"\n",
            a.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir.path())
        .args(["serve", "--config", "node.toml"]);
    let served = ServeChild::spawn(cmd).unwrap().wait_listening(&[&a]);
    let log = log_with(&served, "check with: ");
    assert!(
        log.contains(&format!(
            "attach with: vgrace qemu-args --config {}\n",
            cfg.display()
        )),
        "{log}"
    );
    let attach = run_logged_command(&log, "attach with: ");
    assert!(attach.status.success(), "{}", stderr_of(&attach));
    assert!(String::from_utf8_lossy(&attach.stdout).contains(a.to_str().unwrap()));
    let check = run_logged_command(&log, "check with: ");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[test]
fn serve_creates_socket_0600_and_sigterm_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gpu.sock");
    let mut served = start(&socket, &[]);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    let (status, err) = served.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(mode, 0o600);
    assert!(status.success(), "{err}");
    assert!(!socket.exists());
    assert!(err.contains("serving"), "{err}");
}

#[test]
fn live_socket_is_not_clobbered() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gpu.sock");
    let _first = start(&socket, &[]);
    refused(
        &[
            "serve",
            "--socket",
            socket.to_str().unwrap(),
            "--mem-size",
            "4G",
        ],
        1,
    );
    assert!(socket.exists());
}

#[test]
fn stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gpu.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let mut served = start(&socket, &[]);
    let (status, err) = served.signal(nix::sys::signal::Signal::SIGINT);
    assert!(status.success(), "{err}");
}

#[test]
fn check_passes_against_our_server_on_every_profile() {
    for profile in ["gh100", "gb200", "seed"] {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("gpu.sock");
        let _served = start(&socket, &["--profile", profile]);
        let out = vgrace(&["check", "--socket", socket.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{profile}:\n{stdout}{}",
            stderr_of(&out)
        );
        assert!(!stdout.contains("FAIL"), "{profile}:\n{stdout}");
    }
}

#[test]
fn check_fails_against_a_never_ready_device() {
    // The readiness rule polls for 30 s upstream; the fault makes it fail, so keep one such test.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gpu.sock");
    let _served = start(&socket, &["--fault", "link-down", "--serve-unready"]);
    let out = vgrace(&[
        "check",
        "--socket",
        socket.to_str().unwrap(),
        "--ready-timeout",
        "1s",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("FAIL  bar0: readiness"), "{stdout}");
}

#[test]
fn config_file_serves_two_devices() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.sock");
    let b = dir.path().join("b.sock");
    let cfg = dir.path().join("two.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[device]]\nsocket = \"{}\"\nmem_size = \"4G\"\n[[device]]\nsocket = \"{}\"\nprofile = \"gb200\"\nmem_size = \"3G\"\n",
            a.display(),
            b.display()
        ),
    )
    .unwrap();
    let mut served =
        ServeChild::serve(BIN, ["--config", cfg.to_str().unwrap()]).wait_created(&[&a, &b]);
    let out_b = vgrace(&["check", "--socket", b.to_str().unwrap()]);
    let (status, _) = served.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        out_b.status.success(),
        "{}",
        String::from_utf8_lossy(&out_b.stdout)
    );
    assert!(status.success());
    assert!(!a.exists() && !b.exists());
}

#[test]
fn serve_on_an_inherited_listening_fd() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("inherited.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let fd = listener.as_raw_fd();
    // Let the child inherit the listening socket.
    nix::fcntl::fcntl(
        &listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let mut served = ServeChild::serve(BIN, ["--fd", &fd.to_string(), "--mem-size", "4G"]);
    drop(listener);
    let out = vgrace(&["check", "--socket", socket.to_str().unwrap()]);
    let (status, _) = served.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(status.success());
}

#[test]
fn fd_that_is_not_open_is_one_line() {
    let err = refused(&["serve", "--fd", "987", "--mem-size", "4G"], 1);
    assert!(err.contains("--fd 987"), "{err}");
}

#[test]
fn fd_that_is_not_a_socket_is_refused() {
    let out = Command::new(BIN)
        .args(["serve", "--fd", "0", "--mem-size", "4G"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("not a socket"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn refused_uid_cannot_use_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gpu.sock");
    let other = (nix::unistd::getuid().as_raw() + 1).to_string();
    let _served = start_without_probe(&socket, &["--allow-uid", &other]);
    let out = vgrace(&["check", "--socket", socket.to_str().unwrap()]);
    assert!(!out.status.success());
}

#[test]
fn a_regular_file_put_at_the_socket_path_survives_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gpu.sock");
    let mut served = start(&socket, &[]);
    std::fs::remove_file(&socket).unwrap();
    std::fs::write(&socket, b"not yours").unwrap();
    let (status, err) = served.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{err}");
    assert_eq!(std::fs::read(&socket).unwrap(), b"not yours", "{err}");
}

#[test]
fn a_newer_servers_socket_at_the_path_survives_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gpu.sock");
    let mut served = start(&socket, &[]);
    std::fs::remove_file(&socket).unwrap();
    let newer = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let (status, err) = served.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{err}");
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        "{err}"
    );
    drop(newer);
}

#[test]
fn sighup_stops_cleanly_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gpu.sock");
    let mut served = start(&socket, &[]);
    let (status, err) = served.signal(nix::sys::signal::Signal::SIGHUP);
    assert_eq!(status.code(), Some(0), "{status:?} {err}");
    assert!(!socket.exists(), "{err}");
}

const LINUX_VERSIONS: [&str; 4] = ["6.9", "6.14", "6.19", "7.2"];

/// `vgrace check --socket SOCKET --linux LINUX`: its stdout and whether it passed.
fn check_as(socket: &Path, linux: &str) -> (bool, String) {
    let out = vgrace(&[
        "check",
        "--socket",
        socket.to_str().unwrap(),
        "--linux",
        linux,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success(), format!("{stdout}{}", stderr_of(&out)))
}

/// Issue 11: the checker judges a server by the chosen kernel's rules, and ours passes them
/// for every version and profile (Blackwell's BAR1 from 6.14, the reset check from 6.19). A
/// second run passes too: the checker leaves no reset check pending behind it.
#[test]
fn check_follows_every_linux_version_on_gh100_and_gb200() {
    for linux in LINUX_VERSIONS {
        for profile in ["gh100", "gb200"] {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("gpu.sock");
            let _served = start(
                &socket,
                &[
                    "--profile",
                    profile,
                    "--linux",
                    linux,
                    "--bar1-size",
                    "256M",
                ],
            );
            for run in 0..2 {
                let (passed, out) = check_as(&socket, linux);
                assert!(passed, "{linux} {profile} run {run}:\n{out}");
                assert!(!out.contains("FAIL"), "{linux} {profile} run {run}:\n{out}");
                assert!(
                    out.contains(&format!("against the rules of Linux {linux}")),
                    "{out}"
                );
            }
            let (_, out) = check_as(&socket, linux);
            let blackwell_bar1 = profile == "gb200" && linux != "6.9";
            assert_eq!(
                out.contains("PASS  region 2 (BAR1): the whole BAR maps through its fd"),
                blackwell_bar1,
                "{linux} {profile}:\n{out}"
            );
            let reset_rule = if linux == "6.19" || linux == "7.2" {
                "PASS  reset: first memory access with decode off is EIO (6.19+, nvgrace_gpu_check_device_ready)"
            } else {
                "PASS  reset: first memory access is not checked (before 6.19)"
            };
            assert!(out.contains(reset_rule), "{linux} {profile}:\n{out}");
        }
    }
}

/// Memory size 0 (C2C link down) and missing memory properties serve a core-only device under
/// every version; the checker accepts it as such (a Blackwell keeps its real BAR1).
#[test]
fn check_accepts_a_core_only_device_on_every_version() {
    for linux in LINUX_VERSIONS {
        for (profile, how) in [
            ("gh100", "--mem-size 0"),
            ("gb200", "--mem-size 0"),
            ("gb200", "--no-mem-properties"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("gpu.sock");
            let mut args = vec![
                "--socket",
                socket.to_str().unwrap(),
                "--profile",
                profile,
                "--linux",
                linux,
                "--bar1-size",
                "256M",
            ];
            args.extend(how.split(' '));
            if how == "--no-mem-properties" {
                args.extend(["--mem-size", "3543348019"]);
            }
            let _served = ServeChild::serve(BIN, args).wait_listening(&[&socket]);
            let (passed, out) = check_as(&socket, linux);
            assert!(passed, "{linux} {profile} {how}:\n{out}");
            assert!(
                out.contains("PASS  core-only device: C2C link down or no memory properties (nvgrace_gpu_probe)"),
                "{linux} {profile} {how}:\n{out}"
            );
            assert!(
                out.lines().any(|l| l.starts_with("SKIP  reset:")
                    && l.ends_with("a core-only device has no memory region")),
                "{out}"
            );
            assert_eq!(
                out.contains("region 2 is the real BAR1"),
                profile == "gb200",
                "{linux} {profile} {how}:\n{out}"
            );
        }
    }
}

/// 6.9 split a Blackwell the Hopper way: a server showing 7.2's layout (BAR1 at region 2) fails.
#[test]
fn check_for_6_9_fails_a_7_2_blackwell_layout() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gpu.sock");
    let _served = start(
        &socket,
        &[
            "--profile",
            "gb200",
            "--linux",
            "7.2",
            "--bar1-size",
            "256M",
        ],
    );
    let (passed, out) = check_as(&socket, "6.9");
    assert!(!passed, "{out}");
    assert!(
        out.contains("FAIL  layout (Linux 6.9, Blackwell): resmem at 2, usemem at 4"),
        "{out}"
    );
    assert!(out.contains("region 2 is a core BAR"), "{out}");
    // Blackwell's layout says 6.14+, the EIO after a reset says 6.19+.
    assert!(
        out.contains(
            "note: the server behaves as nvgrace-gpu-vfio-pci of Linux 6.19 or 7.2, not 6.9: \
             check with --linux 7.2 (it must match the server's --linux)"
        ),
        "{out}"
    );
}

/// From 6.19 the first memory access after a reset with decode off is EIO: a 6.14 server, which
/// lets it through, fails that rule (and only that one).
#[test]
fn check_for_7_2_fails_the_reset_rule_of_a_6_14_server() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gpu.sock");
    let _served = start(&socket, &["--linux", "6.14"]);
    let (passed, out) = check_as(&socket, "7.2");
    assert!(!passed, "{out}");
    assert!(
        out.contains("FAIL  reset: first memory access with decode off is EIO (6.19+, nvgrace_gpu_check_device_ready)"),
        "{out}"
    );
    assert!(out.contains("expected EIO"), "{out}");
    assert_eq!(out.matches("FAIL").count(), 1, "{out}");
    // A Hopper's layout is the same under every version: only the reset rule tells.
    assert!(
        out.contains("the server behaves as nvgrace-gpu-vfio-pci of Linux 6.9 or 6.14, not 7.2"),
        "{out}"
    );
}

/// `vgrace check --json`: one JSON document on stdout (rules with name, result, detail and
/// the kernel functions they cite; summary counts; what the server's behaviour shows of its
/// version), exit 0 when every rule passed; 1 when one failed, with the versions it fits.
#[test]
fn check_json_is_one_document_with_rules_summary_cites_and_the_servers_version() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gpu.sock");
    let _served = start(&socket, &["--linux", "6.14"]);
    let json_check = |linux: &str| {
        let out = vgrace(&[
            "check",
            "--socket",
            socket.to_str().unwrap(),
            "--linux",
            linux,
            "--json",
        ]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        (out.status.code(), doc)
    };

    let (code, doc) = json_check("6.14");
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(doc["linux"], "6.14");
    let rules = doc["rules"].as_array().unwrap();
    for r in rules {
        assert!(r["name"].is_string() && r["detail"].is_string(), "{r}");
        assert!(
            ["PASS", "SKIP"].contains(&r["result"].as_str().unwrap()),
            "{r}"
        );
        assert!(r["cites"].is_array(), "{r}");
    }
    let summary = &doc["summary"];
    assert_eq!(summary["failed"], 0, "{doc:#}");
    assert_eq!(summary["total"].as_u64().unwrap() as usize, rules.len());
    assert_eq!(
        summary["passed"].as_u64().unwrap() + summary["skipped"].as_u64().unwrap(),
        rules.len() as u64
    );
    let reset = rules
        .iter()
        .find(|r| {
            r["name"]
                .as_str()
                .unwrap()
                .starts_with("reset: emulated BARs")
        })
        .unwrap();
    assert_eq!(
        reset["cites"],
        serde_json::json!(["nvgrace_gpu_ioctl", "vfio_pci_ioctl_reset"])
    );
    assert_eq!(doc["server"]["linux"], serde_json::json!(["6.9", "6.14"]));
    assert!(doc["server"]["max_data_xfer_size"].as_u64().unwrap() > 0);
    assert_eq!(doc["notes"], serde_json::json!([]));

    let (code, doc) = json_check("7.2");
    assert_eq!(code, Some(1), "{doc:#}");
    assert_eq!(doc["summary"]["failed"], 1, "{doc:#}");
    let failed: Vec<&str> = doc["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["result"] == "FAIL")
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        failed,
        ["reset: first memory access with decode off is EIO (6.19+, nvgrace_gpu_check_device_ready)"]
    );
    let note = doc["notes"][0].as_str().unwrap();
    assert!(note.contains("Linux 6.9 or 6.14, not 7.2"), "{note}");
}

/// Scripts tell "a rule failed" from "could not check" by stdout: a check that cannot reach
/// its server prints nothing there (not half a JSON document), one line on stderr, exit 1;
/// `--help` lists the exit codes and the versions `--linux` knows, and an unknown one is
/// refused naming them.
#[test]
fn check_exit_codes_and_versions_are_documented_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.sock");
    let args = ["check", "--socket", socket.to_str().unwrap(), "--json"];
    let out = vgrace(&args);
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    refused(&args, 1);

    let help = succeeds(&["check", "--help"]);
    for said in [
        "0  every rule passed",
        "1  a rule failed, or the check could not run",
        "2  usage",
        "6.9, 6.14, 6.19 or 7.2",
        "must match the server's --linux",
        "--json",
    ] {
        assert!(help.contains(said), "{said:?} not in:\n{help}");
    }
    let err = refused(&["check", "--socket", "x", "--linux", "6.10"], 2);
    assert!(err.contains("expected 6.9, 6.14, 6.19 or 7.2"), "{err}");
}

fn four_gpu_node(dir: &Path) -> std::path::PathBuf {
    let cfg = dir.join("node.toml");
    let mut text = String::new();
    for i in 0..4 {
        text.push_str(&format!(
            "[[device]]\nsocket = \"{}\"\nmem_size = \"480G\"\n",
            dir.join(format!("gpu{i}.sock")).display()
        ));
    }
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// `qemu-args --config` prints a whole node: a root port per GPU (each GPU at 00.0), the 4 TiB
/// aperture four 480 GiB GPUs need, 32 generic initiators on distinct nodes; `--json` says so.
#[test]
fn qemu_args_for_a_node_of_four_480g_gpus() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = four_gpu_node(dir.path());
    let cfg = cfg.to_str().unwrap();
    let out = succeeds(&["qemu-args", "--config", cfg, "--machine", "virt", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["node"]["aperture"], 4u64 << 40);
    assert_eq!(v["node"]["gpus"].as_array().unwrap().len(), 4);
    let args: Vec<String> = v["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(args.iter().any(|a| a.contains("highmem-mmio-size=4T")));
    assert_eq!(
        args.iter()
            .filter(|a| a.contains("acpi-generic-initiator"))
            .count(),
        32
    );
    // One argv token per element: "-numa" and its value are two.
    let nodes: std::collections::HashSet<&String> = args
        .windows(2)
        .filter(|w| w[0] == "-numa")
        .map(|w| &w[1])
        .collect();
    assert_eq!(nodes.len(), 33);
    assert!(args.windows(2).any(|w| w[0] == "-m" && w[1] == "8G"));
    let text = succeeds(&["qemu-args", "--config", cfg, "--machine", "q35"]);
    assert!(text.contains("pci-hole64-size=4T"), "{text}");
    assert!(text.contains("phys-bits=44"), "{text}");
    let text = succeeds(&["layout", "--config", cfg, "--machine", "virt"]);
    assert!(text.contains("need 4 TiB"), "{text}");
}

/// Output into a pipe whose reader is gone (`vgrace layout | head -1` after head exits) ends the
/// command quietly, like cat, instead of a "failed printing to stdout" panic.
#[test]
fn output_into_a_closed_pipe_is_a_quiet_exit_not_a_panic() {
    for args in [
        &["layout"][..],
        &["layout", "--json"],
        &["qemu-args", "--socket", "/tmp/vgrace-pipe-test.sock"],
        &["trace", "/dev/null"],
    ] {
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        drop(read_end);
        let out = Command::new(BIN)
            .args(args)
            .stdout(Stdio::from(write_end))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(out.status.success(), "{args:?}: {:?} {err}", out.status);
    }
}

/// `layout --help` and `qemu-args --help` list only the device flags that change their output;
/// the hidden ones (a `serve` command line's readiness timing, faults, backing) are still
/// taken, and change nothing: each is run with a non-default value against the default.
#[test]
fn layout_and_qemu_args_help_list_only_the_flags_that_change_their_output() {
    // (the flag, a command line giving it a value other than the default)
    type Case = (&'static str, &'static [&'static str]);
    let hidden_everywhere: &[Case] = &[
        ("--backing", &["--backing", "/nonexistent/gpu.mem"]),
        ("--ready-delay", &["--ready-delay", "2s"]),
        ("--fault", &["--fault", "link-down"]),
        ("--reset-ready-delay", &["--reset-ready-delay", "2s"]),
        ("--ready-timeout", &["--ready-timeout", "5s"]),
    ];
    let only_in_layout: &[Case] = &[
        ("--mem-base", &["--mem-base", "0x500000000000"]),
        ("--cxl", &["--cxl"]),
        ("--cxl-valid-delay", &["--cxl", "--cxl-valid-delay", "1s"]),
        ("--cxl-active-delay", &["--cxl", "--cxl-active-delay", "1s"]),
        ("--cxl-timeout-code", &["--cxl", "--cxl-timeout-code", "3"]),
        ("--poison", &["--poison", "4:0x1000"]),
    ];
    let shown_everywhere: &[Case] = &[
        ("--device-id", &["--device-id", "0x31c2"]),
        ("--mem-size", &["--mem-size", "480G"]),
        ("--linux", &["--linux", "6.9"]),
        ("--no-mem-properties", &["--no-mem-properties"]),
        ("--bar1-size", &["--bar1-size", "256M"]),
    ];
    let run = |verb: &str, extra: &[&str]| {
        let mut args = vec![verb, "--profile", "gb200"];
        if verb == "qemu-args" {
            args.extend(["--machine", "q35"]);
        }
        args.extend_from_slice(extra);
        let out = vgrace(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr_of(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    for verb in ["layout", "qemu-args"] {
        let help = String::from_utf8(vgrace(&[verb, "--help"]).stdout).unwrap();
        let listed = |flag: &str| {
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{flag} ")) || l.trim() == flag)
        };
        let base = run(verb, &[]);
        let (mut hidden, mut changing) = (hidden_everywhere.to_vec(), shown_everywhere.to_vec());
        if verb == "qemu-args" {
            hidden.extend_from_slice(only_in_layout);
        } else {
            changing.extend_from_slice(only_in_layout);
        }
        for (flag, args) in hidden {
            assert!(!listed(flag), "{verb} --help lists {flag}:\n{help}");
            assert_eq!(run(verb, args), base, "{verb} {args:?} changes the output");
        }
        for (flag, args) in changing {
            assert!(listed(flag), "{verb} --help misses {flag}:\n{help}");
            assert_ne!(run(verb, args), base, "{verb} {args:?} changes nothing");
        }
    }
    // serve still lists every device flag.
    let help = String::from_utf8(vgrace(&["serve", "--help"]).stdout).unwrap();
    for flag in [
        "--ready-delay",
        "--fault",
        "--backing",
        "--mem-base",
        "--cxl",
        "--poison",
    ] {
        assert!(help.contains(flag), "serve --help misses {flag}");
    }
}

/// `layout --config` heads each GPU with the id the file gives it (what `vgrace ctl` names), and
/// says which QEMU id stands for it when the two differ.
#[test]
fn layout_of_a_node_names_each_gpu_by_its_file_id() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        "[[device]]\nid = \"hopper\"\nsocket = \"/tmp/vgrace-ids/a.sock\"\nmem_size = \"2G\"\n\n\
         [[device]]\nsocket = \"/tmp/vgrace-ids/b.sock\"\nmem_size = \"2G\"\n",
    )
    .unwrap();
    let text = succeeds(&["layout", "--config", cfg.to_str().unwrap()]);
    assert!(
        text.contains("== hopper (QEMU id gpu0) on /tmp/vgrace-ids/a.sock"),
        "{text}"
    );
    assert!(text.contains("== gpu1 on /tmp/vgrace-ids/b.sock"), "{text}");
}
