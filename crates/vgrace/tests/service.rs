//! Running as a service: systemd socket activation (`LISTEN_FDS`) for a `--config` node, the
//! sockets' mode and group for a VMM running as another user, the backing file's mode, the
//! shipped units and example config.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use test_support::ServeChild;
use vfu::client::Client;

use common::vgrace;

const BIN: &str = env!("CARGO_BIN_EXE_vgrace");
/// The config space region (`VFIO_PCI_CONFIG_REGION_INDEX`).
const CONFIG_REGION: u32 = 7;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The device id a real client reads from config space over `socket`.
fn device_id(socket: &Path) -> u16 {
    let mut c = Client::connect(socket).unwrap();
    let b = c.region_read(CONFIG_REGION, 2, 2).unwrap();
    u16::from_le_bytes([b[0], b[1]])
}

/// `vgrace serve ARGS` started as a service manager starts it: `listeners` become fds 3, 4, ...
/// and LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES describe them (LISTEN_PID is the pid `exec` keeps).
fn activated(listeners: &[(&UnixListener, &str)], args: &[&str]) -> ServeChild {
    let names: Vec<&str> = listeners.iter().map(|l| l.1).collect();
    let fds: Vec<RawFd> = listeners.iter().map(|l| l.0.as_raw_fd()).collect();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
        .arg(BIN)
        .arg("serve")
        .args(args)
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"));
    // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2) on fds this
    // process owns; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Move each fd out of 3.. first, so placing one never clobbers another.
            let mut high = [0; 8];
            for (i, fd) in fds.iter().enumerate() {
                high[i] = libc::fcntl(*fd, libc::F_DUPFD, 100);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, fd) in high.iter().take(fds.len()).enumerate() {
                // dup2 leaves the new fd without FD_CLOEXEC: the exec'd server inherits it.
                if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    ServeChild::spawn(cmd).unwrap()
}

fn listener(path: &Path) -> UnixListener {
    UnixListener::bind(path).unwrap()
}

/// Two devices of a `--config` node, each served on the passed fd whose name is its id or its
/// socket's file name; the config's own socket paths are never created.
#[test]
fn socket_activation_serves_each_config_device_on_its_named_fd() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = two_device_node(d);
    // Passed in the other order than the file's, so a match by position would fail.
    let (l_right, l_gpu0) = (listener(&d.join("l3.sock")), listener(&d.join("l4.sock")));
    let served = activated(
        &[(&l_right, "right.sock"), (&l_gpu0, "gpu0")],
        &["--config", config.to_str().unwrap()],
    );
    drop((l_right, l_gpu0));
    let mut served = served.wait_listening(&[&d.join("l3.sock"), &d.join("l4.sock")]);
    assert_eq!(device_id(&d.join("l4.sock")), 0x2342, "gpu0 on fd 4");
    assert_eq!(device_id(&d.join("l3.sock")), 0x2348, "right on fd 3");
    assert!(!d.join("cfg/a.sock").exists() && !d.join("cfg/right.sock").exists());
    let (status, log) = served.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{log}");
    // The service manager owns the socket files: a stop leaves them.
    assert!(d.join("l3.sock").exists(), "{log}");
    // The next-steps lines name where clients reach the devices, not the file's paths.
    for l in ["l3.sock", "l4.sock"] {
        let check = format!("vgrace check --socket {}", d.join(l).display());
        assert!(log.contains(&check), "{check}: {log}");
    }
}

/// Fds without useful names (one socket unit, several `ListenStream=`) are matched by the path
/// they are bound to.
#[test]
fn socket_activation_matches_unnamed_fds_by_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[[device]]\nsocket = \"{0}/a.sock\"\nmem_size = \"2G\"\ndevice_id = \"0x2342\"\n\
             [[device]]\nsocket = \"{0}/b.sock\"\nmem_size = \"2G\"\ndevice_id = \"0x2348\"\n",
            d.display()
        ),
    )
    .unwrap();
    let (b, a) = (listener(&d.join("b.sock")), listener(&d.join("a.sock")));
    let served = activated(
        &[(&b, "vgrace.socket"), (&a, "vgrace.socket")],
        &["--config", config.to_str().unwrap()],
    );
    drop((a, b));
    let mut served = served.wait_listening(&[&d.join("a.sock"), &d.join("b.sock")]);
    assert_eq!(device_id(&d.join("a.sock")), 0x2342);
    assert_eq!(device_id(&d.join("b.sock")), 0x2348);
    let (status, log) = served.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{log}");
}

/// A passed socket no device claims is refused in one line naming it, before serving anything.
#[test]
fn socket_activation_refuses_a_socket_no_device_claims() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[[device]]\nsocket = \"{}/a.sock\"\nmem_size = \"2G\"\n",
            d.display()
        ),
    )
    .unwrap();
    let (a, x) = (listener(&d.join("l.sock")), listener(&d.join("x.sock")));
    let mut served = activated(
        &[(&a, "gpu0"), (&x, "stray")],
        &["--config", config.to_str().unwrap()],
    );
    drop((a, x));
    let (status, log) = served
        .wait_exit(std::time::Duration::from_secs(20))
        .expect("exits");
    assert!(!status.success());
    assert!(
        log.contains("stray") && log.contains("matches no device"),
        "{log}"
    );
    assert!(!d.join("a.sock").exists());
}

/// `--socket-mode 0660 --socket-group G` gives the socket that mode and group, so a VMM user in
/// G can connect; the control socket stays 0600.
#[test]
fn socket_mode_and_group_are_the_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("g.sock");
    let control = dir.path().join("c.sock");
    // A group other than ours when we may use one (root may give any), else our own.
    let own = nix::unistd::getegid().as_raw();
    let gid = if nix::unistd::geteuid().is_root() {
        own + 1
    } else {
        nix::unistd::getgroups()
            .unwrap_or_default()
            .iter()
            .map(|g| g.as_raw())
            .find(|g| *g != own)
            .unwrap_or(own)
    };
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .unwrap()
        .map_or(gid.to_string(), |g| g.name);
    let mut served = ServeChild::serve(
        BIN,
        [
            "--socket",
            socket.to_str().unwrap(),
            "--mem-size",
            "2G",
            "--control",
            control.to_str().unwrap(),
            "--socket-mode",
            "0660",
            "--socket-group",
            &group,
        ],
    )
    .wait_listening(&[&socket, &control]);
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid, "group {group}");
    let meta = std::fs::metadata(&control).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    served.signal(nix::sys::signal::Signal::SIGTERM);
}

/// The same from the config file's `socket_mode` and `socket_group`.
#[test]
fn socket_mode_and_group_come_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("g.sock");
    let config = dir.path().join("node.toml");
    let gid = nix::unistd::getegid().as_raw();
    std::fs::write(
        &config,
        format!(
            "socket_mode = \"0640\"\nsocket_group = \"{gid}\"\n[[device]]\nsocket = \"{}\"\n\
             mem_size = \"2G\"\n",
            socket.display()
        ),
    )
    .unwrap();
    let mut served =
        ServeChild::serve(BIN, ["--config", config.to_str().unwrap()]).wait_listening(&[&socket]);
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(meta.gid(), gid);
    served.signal(nix::sys::signal::Signal::SIGTERM);
}

/// `--socket-group` takes a number that no group entry names: libvirt's QEMU group may exist
/// only inside a chroot or container whose sockets the host's server makes (as
/// scripts/qemu-libvirt.sh does). Root gives any gid; another user its own, by number.
#[test]
fn socket_group_may_be_a_gid_without_a_group_entry() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("n.sock");
    let gid = if nix::unistd::geteuid().is_root() {
        (60000..u32::MAX)
            .find(|g| {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(*g))
                    .unwrap()
                    .is_none()
            })
            .unwrap()
    } else {
        nix::unistd::getegid().as_raw()
    };
    let gid_text = gid.to_string();
    let mut served = ServeChild::serve(
        BIN,
        [
            "--socket",
            socket.to_str().unwrap(),
            "--mem-size",
            "2G",
            "--socket-mode",
            "0660",
            "--socket-group",
            &gid_text,
        ],
    )
    .wait_listening(&[&socket]);
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        (meta.gid(), meta.permissions().mode() & 0o777),
        (gid, 0o660)
    );
    served.signal(nix::sys::signal::Signal::SIGTERM);
}

/// A mode that lets any user connect, or a group that does not exist, is one line and no socket.
#[test]
fn socket_mode_for_others_and_unknown_groups_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("g.sock");
    let s = socket.to_str().unwrap();
    for (extra, want) in [
        (["--socket-mode", "0666"], "others"),
        (["--socket-mode", "0999"], "octal"),
        (["--socket-group", "no-such-group-vgrace"], "does not exist"),
    ] {
        let mut args = vec!["serve", "--socket", s, "--mem-size", "2G"];
        args.extend(extra);
        let out = vgrace(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(!socket.exists());
    }
}

/// A backing file the server creates holds guest memory: 0600, like the sockets and traces.
#[test]
fn a_new_backing_file_is_created_0600() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("f.sock");
    let file = dir.path().join("mem.img");
    let mut served = ServeChild::serve(
        BIN,
        [
            "--socket",
            socket.to_str().unwrap(),
            "--mem-size",
            "2G",
            "--backing",
            file.to_str().unwrap(),
        ],
    )
    .wait_listening(&[&socket]);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    served.signal(nix::sys::signal::Signal::SIGTERM);
}

/// The example node config shipped in dist/ (and the .deb) is one `vgrace serve --config`
/// accepts: `layout --config` reads it with the same parser.
#[test]
fn the_example_node_config_is_accepted() {
    let example = repo().join("dist/node.example.toml");
    let out = vgrace(&["layout", "--config", example.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `systemd-analyze verify` accepts the shipped units (with ExecStart pointing at this build).
#[test]
fn the_systemd_units_verify() {
    let Ok(found) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    assert!(found.status.success());
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for entry in std::fs::read_dir(repo().join("dist/systemd")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        // Templates are verified as an instance.
        let name = name.replace("@.", "@node.");
        std::fs::write(dir.path().join(&name), text.replace("/usr/bin/vgrace", BIN)).unwrap();
        units.push(dir.path().join(name));
    }
    assert!(units.len() >= 3, "{units:?}");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}

/// systemd's own `systemd-socket-activate` listens on both sockets, starts `vgrace serve
/// --config` at the first connection and passes them named; a real client gets each device.
#[test]
fn systemd_socket_activate_starts_a_config_node_at_the_first_connection() {
    if Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-socket-activate is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = two_device_node(d);
    let (one, two) = (d.join("one.sock"), d.join("two.sock"));
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(&one)
        .arg("-l")
        .arg(&two)
        .arg("--fdname=right:gpu0")
        .args([BIN, "serve", "--config", config.to_str().unwrap()]);
    let mut served = ServeChild::spawn(cmd).unwrap().wait_created(&[&one, &two]);
    // The first connection starts the server; the client's version exchange waits for it.
    assert_eq!(device_id(&two), 0x2342, "gpu0 on the second socket");
    assert_eq!(device_id(&one), 0x2348, "right on the first socket");
    let (status, log) = served.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{log}");
}

/// `vgrace generate` writes a man page per verb and completion scripts from the clap definition
/// (what the .deb carries); the hidden verb gets no page.
#[test]
fn generate_writes_man_pages_per_verb_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man");
    let out = vgrace(&["generate", "man", man.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for verb in [
        "vgrace",
        "vgrace-serve",
        "vgrace-layout",
        "vgrace-check",
        "vgrace-ctl",
    ] {
        let page = std::fs::read_to_string(man.join(format!("{verb}.1"))).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{verb}");
    }
    let serve = std::fs::read_to_string(man.join("vgrace-serve.1")).unwrap();
    assert!(serve.contains("socket\\-group"), "{serve}");
    assert!(!man.join("vgrace-generate.1").exists());
    for (shell, file) in [
        ("bash", "vgrace.bash"),
        ("zsh", "_vgrace"),
        ("fish", "vgrace.fish"),
    ] {
        let out = vgrace(&[
            "generate",
            "completions",
            shell,
            dir.path().to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let script = std::fs::read_to_string(dir.path().join(file)).unwrap();
        assert!(script.contains("qemu-args"), "{shell}");
    }
}

/// LISTEN_FDS meant for another process (LISTEN_PID is not ours, as after a fork without exec
/// in a wrapper) is ignored: the server binds its own socket and leaves fd 3 alone.
#[test]
fn listen_fds_for_another_pid_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("own.sock");
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--socket",
        socket.to_str().unwrap(),
        "--mem-size",
        "2G",
    ])
    .env("LISTEN_PID", "1")
    .env("LISTEN_FDS", "1")
    .env("LISTEN_FDNAMES", "gpu0");
    let mut served = ServeChild::spawn(cmd).unwrap().wait_listening(&[&socket]);
    assert_eq!(device_id(&socket), 0x2342);
    let (status, log) = served.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{log}");
    assert!(!log.contains("activation"), "{log}");
}

/// A two-device node file in `d`: gpu0 (0x2342, by position) and "right" (0x2348), whose own
/// socket paths lie under `d/cfg`, a directory nobody creates: an activated server must not
/// reach them.
fn two_device_node(d: &Path) -> PathBuf {
    let config = d.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[[device]]\nsocket = \"{0}/cfg/a.sock\"\nmem_size = \"2G\"\ndevice_id = \"0x2342\"\n\
             [[device]]\nid = \"right\"\nsocket = \"{0}/cfg/right.sock\"\nmem_size = \"2G\"\n\
             device_id = \"0x2348\"\n",
            d.display()
        ),
    )
    .unwrap();
    config
}
