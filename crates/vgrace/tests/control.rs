//! The control socket and `vgrace ctl`, against a real `vgrace serve` child: every verb, the
//! faults seen by a real vfio-user client, and hostile control requests. Most tests speak the
//! JSON lines themselves (as a test in any language would); some run `vgrace ctl`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_support::ServeChild;
use vfu::client::Client;
use vfu::device::{BAR0_REGION_INDEX, CONFIG_REGION_INDEX};
use vfu::Errno;

const BIN: &str = env!("CARGO_BIN_EXE_vgrace");
/// gh100 with usemem 512 MiB at BAR4 (and resmem 1 GiB at BAR2).
const MEM_ARG: &str = "1610616832";
const C2C: u64 = 0x1498;
const HBM: u64 = 0x200bc;
const USEMEM: u32 = 4;

struct Served {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    control: PathBuf,
    child: ServeChild,
}

/// `vgrace serve --control` of the small device, with `extra` flags.
fn serve(extra: &[&str]) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gpu.sock");
    let control = dir.path().join("control.sock");
    let mut args = vec![
        "--socket",
        socket.to_str().unwrap(),
        "--control",
        control.to_str().unwrap(),
        "--mem-size",
        MEM_ARG,
    ];
    args.extend_from_slice(extra);
    let child = ServeChild::serve(BIN, &args).wait_listening(&[&socket, &control]);
    settle(&control);
    Served {
        _dir: dir,
        socket,
        control,
        child,
    }
}

/// Waits until the harness's "is it listening" probe of the device socket has come and gone,
/// so it cannot be mistaken for a test's own client (it is this process too).
fn settle(control: &Path) {
    let mut ctl = Ctl::connect(control);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let st = ctl.ok(json!({"v": 1, "op": "stats"}));
        let status = ctl.ok(json!({"v": 1, "op": "status"}));
        let served = st["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["clients_served"].as_u64().unwrap() >= 1);
        let idle = status["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["client"].is_null());
        if served && idle {
            return;
        }
        assert!(
            Instant::now() < until,
            "the probe never finished: {st} {status}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A control connection speaking the JSON lines directly.
struct Ctl {
    reader: BufReader<UnixStream>,
}

impl Ctl {
    fn connect(path: &Path) -> Self {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self {
            reader: BufReader::new(s),
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    fn line(&mut self) -> Value {
        let mut line = String::new();
        assert!(
            self.reader.read_line(&mut line).unwrap() > 0,
            "control closed"
        );
        serde_json::from_str(&line).unwrap()
    }

    fn call(&mut self, request: Value) -> Value {
        let mut text = request.to_string();
        text.push('\n');
        self.send_raw(text.as_bytes());
        self.line()
    }

    /// A request that must succeed.
    fn ok(&mut self, request: Value) -> Value {
        let r = self.call(request);
        assert_eq!(r["ok"], true, "{r}");
        r
    }

    /// A request that must fail; its message.
    fn err(&mut self, request: Value) -> String {
        let r = self.call(request);
        assert_eq!(r["ok"], false, "{r}");
        r["error"]["message"].as_str().unwrap().to_string()
    }
}

fn reg(c: &mut Client, offset: u64) -> u32 {
    let b = c.region_read(BAR0_REGION_INDEX, offset, 4).unwrap();
    u32::from_le_bytes(b.try_into().unwrap())
}

/// `vgrace ctl --control PATH ARGS...`: (success, stdout, stderr).
fn run_ctl(control: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("ctl")
        .arg("--control")
        .arg(control)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn status_names_the_device_its_version_and_the_attached_client() {
    let s = serve(&["--linux", "6.19"]);
    let mut ctl = Ctl::connect(&s.control);
    let r = ctl.ok(json!({"v": 1, "id": 42, "op": "status"}));
    assert_eq!(r["id"], 42);
    let d = &r["devices"][0];
    assert_eq!(d["id"], "gpu0");
    assert_eq!(d["profile"], "gh100");
    assert_eq!(d["linux"], "6.19");
    assert_eq!(d["mem_size"], 1_610_616_832u64);
    assert_eq!(d["backing"], "memfd");
    assert_eq!(d["readiness"], "ready");
    assert!(d["client"].is_null());
    let _client = Client::connect(&s.socket).unwrap();
    let r = ctl.ok(json!({"v": 1, "op": "status", "device": "gpu0"}));
    assert_eq!(r["devices"][0]["client"]["pid"], std::process::id());
    let (ok, out, _) = run_ctl(&s.control, &["status"]);
    assert!(
        ok && out.contains("readiness: ready") && out.contains("client:    pid"),
        "{out}"
    );
    // Sizes as the log gives them: 1610616832 bytes is 1.50 GiB.
    assert!(
        out.contains("gh100 10de:2342 as Linux 6.19, 1.50 GiB of memfd memory\n"),
        "{out}"
    );
}

#[test]
fn link_down_at_run_time_is_seen_by_the_client_and_cleared() {
    let s = serve(&[]);
    let mut c = Client::connect(&s.socket).unwrap();
    assert_eq!(reg(&mut c, C2C), 0xff);
    let (ok, out, err) = run_ctl(&s.control, &["fault", "link-down"]);
    assert!(ok, "{err}");
    assert!(out.contains("faults in force: link-down"), "{out}");
    assert_eq!(reg(&mut c, C2C), 0);
    assert_eq!(
        reg(&mut c, HBM),
        0,
        "HBM cannot train over a link that is down"
    );
    let (ok, out, _) = run_ctl(&s.control, &["fault", "link-down", "--clear"]);
    assert!(ok && out.contains("none"), "{out}");
    assert_eq!(reg(&mut c, C2C), 0xff);
    assert_eq!(reg(&mut c, HBM), 0xff);
}

/// A link-down fault at run time is a fatal PCIe error: the client's error eventfd fires
/// (`vfio_pci_core_aer_err_detected`).
#[test]
fn link_down_at_run_time_signals_the_error_interrupt() {
    use nix::sys::eventfd::{EfdFlags, EventFd};
    use std::os::fd::AsFd;
    let s = serve(&[]);
    let mut c = Client::connect(&s.socket).unwrap();
    let err = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap();
    // ERR (index 3), DATA_EVENTFD | ACTION_TRIGGER.
    c.set_irqs((1 << 2) | (1 << 5), 3, 0, 1, &[], &[err.as_fd()])
        .unwrap();
    assert!(err.read().is_err(), "nothing signalled yet");
    let mut ctl = Ctl::connect(&s.control);
    let answer = ctl.ok(json!({"v": 1, "op": "fault", "fault": "link-down"}));
    assert_eq!(answer["error_interrupt"], true, "{answer}");
    assert_eq!(err.read().unwrap(), 1);
}

#[test]
fn hbm_lost_clears_only_the_training_register() {
    let s = serve(&[]);
    let mut c = Client::connect(&s.socket).unwrap();
    let mut ctl = Ctl::connect(&s.control);
    ctl.ok(json!({"v": 1, "op": "fault", "fault": "hbm-lost"}));
    assert_eq!((reg(&mut c, C2C), reg(&mut c, HBM)), (0xff, 0));
    let st = ctl.ok(json!({"v": 1, "op": "status"}));
    assert_eq!(st["devices"][0]["readiness"], "HBM training lost");
    ctl.ok(json!({"v": 1, "op": "fault", "fault": "hbm-lost", "clear": true}));
    assert_eq!(reg(&mut c, HBM), 0xff);
}

#[test]
fn never_ready_bites_at_the_next_reset_and_clearing_it_finishes_training() {
    let s = serve(&[]);
    let mut c = Client::connect(&s.socket).unwrap();
    let mut ctl = Ctl::connect(&s.control);
    ctl.ok(json!({"v": 1, "op": "fault", "fault": "never-ready"}));
    assert_eq!(reg(&mut c, HBM), 0xff, "not before a reset");
    c.reset().unwrap();
    assert_eq!((reg(&mut c, C2C), reg(&mut c, HBM)), (0, 0));
    ctl.ok(json!({"v": 1, "op": "fault", "fault": "never-ready", "clear": true}));
    assert_eq!((reg(&mut c, C2C), reg(&mut c, HBM)), (0xff, 0xff));
}

#[test]
fn ready_delay_applies_to_the_next_reset_only() {
    let s = serve(&[]);
    let mut c = Client::connect(&s.socket).unwrap();
    let mut ctl = Ctl::connect(&s.control);
    ctl.ok(json!({"v": 1, "op": "fault", "fault": "ready-delay", "ms": 600}));
    c.reset().unwrap();
    let t = Instant::now();
    assert_eq!(reg(&mut c, C2C), 0, "training for 600 ms after this reset");
    while reg(&mut c, C2C) != 0xff {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    c.reset().unwrap();
    assert_eq!(
        reg(&mut c, C2C),
        0xff,
        "the next reset trains at once again"
    );
    let msg = ctl.err(json!({"v": 1, "op": "fault", "fault": "ready-delay"}));
    assert!(msg.contains("needs \"ms\""), "{msg}");
}

#[test]
fn poke_reaches_the_client_and_peek_sees_what_the_client_wrote() {
    let s = serve(&[]);
    let mut c = Client::connect(&s.socket).unwrap();
    let (ok, out, err) = run_ctl(
        &s.control,
        &[
            "poke",
            "--region",
            "bar4",
            "--offset",
            "0x1000",
            "--hex",
            "475241434521",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("wrote 6 bytes"), "{out}");
    assert_eq!(c.region_read(USEMEM, 0x1000, 6).unwrap(), b"GRACE!");
    c.region_write(USEMEM, 0x2000, b"from the client").unwrap();
    let (ok, out, _) = run_ctl(
        &s.control,
        &[
            "peek", "--region", "4", "--offset", "0x2000", "--count", "15", "--raw",
        ],
    );
    assert!(ok);
    assert_eq!(out, "from the client");
    // A value, little-endian, into a BAR0 register.
    let (ok, _, err) = run_ctl(
        &s.control,
        &[
            "poke", "--region", "bar0", "--offset", "0x100", "--value", "0xcafe", "--width", "2",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(reg(&mut c, 0x100), 0xcafe);
}

#[test]
fn peek_of_config_space_shows_the_nvidia_ids_and_a_hexdump() {
    let s = serve(&[]);
    let (ok, out, err) = run_ctl(
        &s.control,
        &[
            "peek", "--region", "config", "--offset", "0", "--count", "4",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("0000000000000000  de 10 42 23"), "{out}");
    let mut ctl = Ctl::connect(&s.control);
    let r = ctl
        .ok(json!({"v": 1, "op": "peek", "region": CONFIG_REGION_INDEX, "offset": 0, "count": 2}));
    assert_eq!(r["data"], "de10");
}

#[test]
fn large_peek_is_split_and_reads_the_all_ones_tail() {
    let s = serve(&[]);
    // usemem is 512 MiB in a 512 MiB BAR... use BAR2 (1 GiB resmem in a 1 GiB BAR) tail-free;
    // read 3 MiB across request boundaries instead and compare with a client's view.
    let mut c = Client::connect(&s.socket).unwrap();
    c.region_write(USEMEM, (1 << 20) - 2, b"ACROSS").unwrap();
    let (ok, out, _) = run_ctl(
        &s.control,
        &[
            "peek", "--region", "bar4", "--offset", "0", "--count", "3145728", "--raw",
        ],
    );
    assert!(ok);
    let bytes = out.into_bytes();
    assert_eq!(bytes.len(), 3 << 20);
    assert_eq!(&bytes[(1 << 20) - 2..(1 << 20) + 4], b"ACROSS");
}

#[test]
fn poison_at_run_time_makes_client_reads_efault_on_6_19() {
    let s = serve(&["--linux", "6.19"]);
    let mut c = Client::connect(&s.socket).unwrap();
    let mut ctl = Ctl::connect(&s.control);
    let r =
        ctl.ok(json!({"v": 1, "op": "fault", "fault": "poison", "region": 4, "offset": 0x3010}));
    assert_eq!(r["faults"][0], "poison 4:0x3000");
    assert!(matches!(
        c.region_read(USEMEM, 0x3ffc, 8),
        Err(vfu::Error::Remote {
            errno: Errno::EFAULT,
            ..
        })
    ));
    c.region_read(USEMEM, 0x4000, 8).unwrap();
    let msg = ctl
        .err(json!({"v": 1, "op": "fault", "fault": "poison", "region": 4, "offset": 1u64 << 40}));
    assert!(msg.contains("past region 4"), "{msg}");
    let msg = ctl.err(json!({"v": 1, "op": "fault", "fault": "poison", "region": 0, "offset": 0}));
    assert!(msg.contains("no device memory"), "{msg}");
    ctl.ok(json!({"v": 1, "op": "fault", "fault": "poison", "clear": true}));
    c.region_read(USEMEM, 0x3ffc, 8).unwrap();
}

#[test]
fn poison_before_linux_6_19_is_refused() {
    let s = serve(&["--linux", "6.14"]);
    let mut ctl = Ctl::connect(&s.control);
    let msg = ctl.err(json!({"v": 1, "op": "fault", "fault": "poison", "region": 4, "offset": 0}));
    assert!(msg.contains("6.19"), "{msg}");
}

#[test]
fn delay_replies_slows_exactly_the_next_replies() {
    let s = serve(&[]);
    let mut c = Client::connect(&s.socket).unwrap();
    let (ok, out, err) = run_ctl(
        &s.control,
        &["fault", "delay-replies", "--delay", "300ms", "--count", "2"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("delay-replies 300ms x2"), "{out}");
    for _ in 0..2 {
        let t = Instant::now();
        reg(&mut c, C2C);
        assert!(t.elapsed() >= Duration::from_millis(300));
    }
    let t = Instant::now();
    reg(&mut c, C2C);
    assert!(t.elapsed() < Duration::from_millis(300));
}

#[test]
fn drop_client_disconnects_it_and_the_device_keeps_its_memory() {
    let s = serve(&[]);
    let mut c = Client::connect(&s.socket).unwrap();
    c.region_write(USEMEM, 0, b"kept").unwrap();
    let mut ctl = Ctl::connect(&s.control);
    let r = ctl.ok(json!({"v": 1, "op": "fault", "fault": "drop-client"}));
    assert_eq!(r["dropped"]["pid"], std::process::id());
    assert!(c.region_read(USEMEM, 0, 4).is_err());
    let mut again = Client::connect(&s.socket).unwrap();
    assert_eq!(again.region_read(USEMEM, 0, 4).unwrap(), b"kept");
    drop(again);
    let msg = {
        // Wait until the server has seen the hang-up, then there is nobody to drop.
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let r = ctl.call(json!({"v": 1, "op": "fault", "fault": "drop-client"}));
            if r["ok"] == false || Instant::now() > until {
                break r["error"]["message"].as_str().unwrap_or("").to_string();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(msg.contains("no client"), "{msg}");
    let st = ctl.ok(json!({"v": 1, "op": "stats"}));
    assert!(st["devices"][0]["clients_dropped"].as_u64().unwrap() >= 1);
}

#[test]
fn refuse_next_turns_away_one_connection() {
    let s = serve(&[]);
    let mut ctl = Ctl::connect(&s.control);
    ctl.ok(json!({"v": 1, "op": "fault", "fault": "refuse-next"}));
    assert!(Client::connect(&s.socket).is_err());
    Client::connect(&s.socket).unwrap();
    let st = ctl.ok(json!({"v": 1, "op": "stats"}));
    assert_eq!(st["devices"][0]["clients_refused"], 1);
}

#[test]
fn reset_from_control_works_as_a_client_reset() {
    let s = serve(&[]);
    let mut c = Client::connect(&s.socket).unwrap();
    // Program BAR4's address, then reset: emulated BARs read 0 (flags aside) after a reset.
    c.region_write(CONFIG_REGION_INDEX, 0x20, &0x8000_0000u32.to_le_bytes())
        .unwrap();
    let before = c.region_read(CONFIG_REGION_INDEX, 0x20, 4).unwrap();
    assert_ne!(
        u32::from_le_bytes(before.clone().try_into().unwrap()) & !0xf,
        0
    );
    let (ok, out, _) = run_ctl(&s.control, &["reset"]);
    assert!(ok && out.contains("reset"));
    let after = c.region_read(CONFIG_REGION_INDEX, 0x20, 4).unwrap();
    assert_eq!(u32::from_le_bytes(after.try_into().unwrap()) & !0xf, 0);
    let mut ctl = Ctl::connect(&s.control);
    let st = ctl.ok(json!({"v": 1, "op": "stats"}));
    assert_eq!(st["devices"][0]["resets"], 1);
    let ev = ctl.ok(json!({"v": 1, "op": "events"}));
    assert!(ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "reset" && e["by"] == "control"));
}

#[test]
fn stats_count_commands_bytes_and_errors_by_errno() {
    let s = serve(&[]);
    let mut c = Client::connect(&s.socket).unwrap();
    reg(&mut c, C2C);
    reg(&mut c, HBM);
    assert!(c.region_read(USEMEM, 1 << 40, 4).is_err());
    let mut ctl = Ctl::connect(&s.control);
    let st = ctl.ok(json!({"v": 1, "op": "stats", "device": "gpu0"}));
    let d = &st["devices"][0];
    let read = d["commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cmd"] == "REGION_READ")
        .unwrap();
    assert_eq!(read["count"], 3);
    assert_eq!(read["errors"]["EINVAL"], 1);
    assert_eq!(read["bytes_in"], 3 * 32);
    assert_eq!(d["last_error"]["errno"], "EINVAL");
    // The harness's own "is it listening" probe counts too.
    assert_eq!(d["clients_served"], 2);
    let (ok, out, _) = run_ctl(&s.control, &["stats"]);
    assert!(
        ok && out.contains("REGION_READ") && out.contains("EINVAL x1"),
        "{out}"
    );
}

#[test]
fn events_follow_streams_connects_faults_and_error_replies() {
    let s = serve(&[]);
    let mut follower = Ctl::connect(&s.control);
    follower.ok(json!({"v": 1, "op": "events", "follow": true}));
    let mut c = Client::connect(&s.socket).unwrap();
    assert!(c.region_read(USEMEM, 1 << 40, 4).is_err());
    Ctl::connect(&s.control).ok(json!({"v": 1, "op": "fault", "fault": "link-down"}));
    drop(c);
    let mut kinds = Vec::new();
    while kinds.last().map(String::as_str) != Some("disconnected") {
        let line = follower.line();
        let e = &line["event"];
        assert!(e["time"].as_str().unwrap().ends_with('Z'), "{line}");
        kinds.push(e["kind"].as_str().unwrap().to_string());
    }
    assert_eq!(kinds, ["connected", "error-reply", "fault", "disconnected"]);
}

#[test]
fn hostile_control_requests_get_errors_and_the_connection_stays_usable() {
    let s = serve(&[]);
    let mut ctl = Ctl::connect(&s.control);
    let cases: Vec<(&[u8], &str)> = vec![
        (
            b"{\"v\":1,\"op\":\"fault\",\"fault\":\"delay-replies\",\"ms\":18446744073709551615}\n",
            "at most",
        ),
        (
            b"{\"v\":1,\"op\":\"fault\",\"fault\":\"ready-delay\",\"ms\":86400001}\n",
            "at most",
        ),
        (b"not json\n", "not a JSON object"),
        (b"[1,2]\n", "bad request"),
        (b"{\"op\":\"status\"}\n", "missing field `v`"),
        (b"{\"v\":2,\"op\":\"status\"}\n", "version 2"),
        (b"{\"v\":1,\"op\":\"launch\"}\n", "unknown op"),
        (
            b"{\"v\":1,\"op\":\"status\",\"colour\":1}\n",
            "unknown field",
        ),
        (
            b"{\"v\":1,\"op\":\"status\",\"device\":\"gpu9\"}\n",
            "no device \"gpu9\"",
        ),
        (b"{\"v\":1,\"op\":\"fault\"}\n", "needs \"fault\""),
        (
            b"{\"v\":1,\"op\":\"fault\",\"fault\":\"melt\"}\n",
            "unknown fault",
        ),
        (
            b"{\"v\":1,\"op\":\"fault\",\"fault\":\"all\"}\n",
            "cannot be applied",
        ),
        (
            b"{\"v\":1,\"op\":\"peek\",\"region\":4,\"offset\":0}\n",
            "needs \"count\"",
        ),
        (
            b"{\"v\":1,\"op\":\"peek\",\"region\":4,\"offset\":0,\"count\":16777216}\n",
            "1 to 1048576",
        ),
        (
            b"{\"v\":1,\"op\":\"peek\",\"region\":99,\"offset\":0,\"count\":4}\n",
            "regions 0 to 8",
        ),
        (
            b"{\"v\":1,\"op\":\"peek\",\"region\":4,\"offset\":18446744073709551615,\"count\":4}\n",
            "EINVAL",
        ),
        (
            b"{\"v\":1,\"op\":\"peek\",\"region\":4,\"offset\":-1,\"count\":4}\n",
            "bad request",
        ),
        (
            b"{\"v\":1,\"op\":\"poke\",\"region\":4,\"offset\":0,\"data\":\"xyz\"}\n",
            "odd number",
        ),
        (
            b"{\"v\":1,\"op\":\"poke\",\"region\":4,\"offset\":0,\"data\":\"zz\"}\n",
            "not hex",
        ),
        (
            b"{\"v\":1,\"op\":\"poke\",\"region\":4,\"offset\":0,\"data\":\"\"}\n",
            "1 to 1048576",
        ),
        (
            b"{\"v\":1,\"op\":\"fault\",\"fault\":\"drop-client\"}\n",
            "no client",
        ),
        (b"\xff\xfe\n", "not a JSON object"),
    ];
    for (raw, want) in cases {
        ctl.send_raw(raw);
        let r = ctl.line();
        assert_eq!(r["ok"], false, "{}: {r}", String::from_utf8_lossy(raw));
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(want),
            "{}: {msg}",
            String::from_utf8_lossy(raw)
        );
    }
    // A line of 5 MiB without a newline, then its newline: one error, then service as usual.
    let big = vec![b'x'; 5 << 20];
    ctl.send_raw(&big);
    ctl.send_raw(b"\n");
    let r = ctl.line();
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than"),
        "{r}"
    );
    ctl.ok(json!({"v": 1, "op": "status"}));
    // Blank lines are ignored.
    ctl.send_raw(b"\n\n");
    ctl.ok(json!({"v": 1, "op": "status"}));
}

#[test]
fn silent_and_half_finished_control_clients_block_nobody() {
    let s = serve(&[]);
    let mut silent: Vec<UnixStream> = (0..8)
        .map(|_| UnixStream::connect(&s.control).unwrap())
        .collect();
    silent[0].write_all(b"{\"v\":1,\"op\":").unwrap();
    // A follower that never reads its events.
    let mut lazy = Ctl::connect(&s.control);
    lazy.ok(json!({"v": 1, "op": "events", "follow": true}));
    let mut c = Client::connect(&s.socket).unwrap();
    let mut ctl = Ctl::connect(&s.control);
    for _ in 0..200 {
        assert!(c.region_read(USEMEM, 1 << 40, 4).is_err());
        ctl.ok(json!({"v": 1, "op": "fault", "fault": "hbm-lost"}));
        assert_eq!(reg(&mut c, HBM), 0);
        ctl.ok(json!({"v": 1, "op": "fault", "fault": "hbm-lost", "clear": true}));
    }
    assert_eq!(reg(&mut c, HBM), 0xff);
}

#[test]
fn too_many_control_connections_are_told_so() {
    let s = serve(&[]);
    let held: Vec<UnixStream> = (0..16)
        .map(|_| UnixStream::connect(&s.control).unwrap())
        .collect();
    // The 17th gets an error line and is closed (the held ones may still be being accepted).
    let until = Instant::now() + Duration::from_secs(5);
    let mut text = String::new();
    while Instant::now() < until {
        let mut extra = UnixStream::connect(&s.control).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        text.clear();
        let _ = extra.read_to_string(&mut text);
        if text.contains("too many") {
            break;
        }
    }
    assert!(text.contains("too many control connections"), "{text}");
    drop(held);
    // Once they go, service resumes. Until the server has seen them go, a connection may still
    // be refused: its "too many" line, or a reset if the refusal closed it before our request was
    // read; both are retried.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = UnixStream::connect(&s.control).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut reply = String::new();
        let answered = c
            .write_all(b"{\"v\": 1, \"op\": \"status\"}\n")
            .and_then(|()| BufReader::new(&c).read_line(&mut reply))
            .is_ok();
        if answered && serde_json::from_str::<Value>(&reply).is_ok_and(|v| v["ok"] == true) {
            break;
        }
        assert!(Instant::now() < until, "service did not resume: {reply:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn control_socket_is_0600_and_removed_at_exit() {
    let mut s = serve(&[]);
    let mode = std::fs::metadata(&s.control).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (status, _) = s.child.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success());
    assert!(!s.control.exists());
    assert!(!s.socket.exists());
}

#[test]
fn several_devices_from_a_config_are_named_by_id_or_socket() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("ctl.sock");
    let a = dir.path().join("a.sock");
    let b = dir.path().join("b.sock");
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "control = \"{}\"\n[[device]]\nsocket = \"{}\"\nmem_size = \"{MEM_ARG}\"\n[[device]]\nid = \"right\"\nsocket = \"{}\"\nmem_size = \"{MEM_ARG}\"\n",
            control.display(), a.display(), b.display()
        ),
    )
    .unwrap();
    let _child = ServeChild::serve(BIN, ["--config", cfg.to_str().unwrap()])
        .wait_listening(&[&a, &b, &control]);
    settle(&control);
    let mut ctl = Ctl::connect(&control);
    let st = ctl.ok(json!({"v": 1, "op": "status"}));
    let ids: Vec<&str> = st["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gpu0", "right"]);
    let msg = ctl.err(json!({"v": 1, "op": "reset"}));
    assert!(
        msg.contains("name one") && msg.contains("gpu0, right"),
        "{msg}"
    );
    ctl.ok(json!({"v": 1, "op": "fault", "device": "right", "fault": "link-down"}));
    let ev = ctl.ok(json!({"v": 1, "op": "events", "device": "gpu0"}));
    assert!(
        ev["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["device"] == "gpu0"),
        "{ev}"
    );
    let ev = ctl.ok(json!({"v": 1, "op": "events", "device": "right"}));
    assert!(
        ev["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "fault"),
        "{ev}"
    );
    ctl.ok(json!({"v": 1, "op": "fault", "device": b.to_str().unwrap(), "fault": "hbm-lost"}));
    let mut on_a = Client::connect(&a).unwrap();
    let mut on_b = Client::connect(&b).unwrap();
    assert_eq!(reg(&mut on_a, C2C), 0xff);
    assert_eq!(reg(&mut on_b, C2C), 0);
    let (ok, _, err) = ctl_cli_unknown(&control);
    assert!(!ok && err.contains("no device \"gpu7\""), "{err}");
}

fn ctl_cli_unknown(control: &Path) -> (bool, String, String) {
    run_ctl(control, &["status", "--device", "gpu7"])
}

#[test]
fn ctl_without_a_server_says_so_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = run_ctl(&dir.path().join("none.sock"), &["status"]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot reach the control socket"), "{err}");
}

#[test]
fn allow_uid_keeps_other_users_off_the_control_socket() {
    // The tests run as some uid; allow only a different one.
    let other = (nix::unistd::getuid().as_raw() + 1).to_string();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gpu.sock");
    let control = dir.path().join("control.sock");
    let _child = ServeChild::serve(
        BIN,
        [
            "--socket",
            socket.to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
            "--mem-size",
            MEM_ARG,
            "--allow-uid",
            &other,
        ],
    )
    .wait_created(&[&socket, &control]);
    let mut ctl = Ctl::connect(&control);
    let r = ctl.line();
    assert_eq!(r["ok"], false);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("uid is not allowed"),
        "{r}"
    );
}

#[test]
fn ctl_json_prints_the_responses_and_events_follow_streams_lines() {
    let s = serve(&[]);
    let (ok, out, _) = run_ctl(&s.control, &["--json", "status"]);
    assert!(ok);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["devices"][0]["id"], "gpu0");
    let mut follow = Command::new(BIN)
        .args([
            "ctl",
            "--control",
            s.control.to_str().unwrap(),
            "events",
            "--follow",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // Apply faults until the follower (which may still be connecting) prints one.
    let until = Instant::now() + Duration::from_secs(10);
    let line = loop {
        assert!(run_ctl(&s.control, &["fault", "refuse-next"]).0);
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            break l;
        }
        assert!(Instant::now() < until, "no event line");
    };
    follow.kill().unwrap();
    let _ = follow.wait();
    assert!(
        line.contains("gpu0 fault") && line.contains("fault=refuse-next"),
        "{line}"
    );
}

#[test]
fn four_mib_of_newlines_cost_little_cpu() {
    let s = serve(&[]);
    let mut ctl = Ctl::connect(&s.control);
    let before = s.child.cpu_ticks();
    // The status request comes after them, so its answer means every newline was read.
    let mut flood = vec![b'\n'; 4 << 20];
    flood.extend_from_slice(b"{\"v\":1,\"op\":\"status\"}\n");
    let writer = {
        let mut w = ctl.reader.get_ref().try_clone().unwrap();
        std::thread::spawn(move || w.write_all(&flood).unwrap())
    };
    ctl.reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(ctl.line()["ok"], true);
    writer.join().unwrap();
    let ticks = s.child.cpu_ticks() - before;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64;
    // Linear: about 0.1 s in a debug build (a drain per line took 4 s and more).
    assert!(ticks < 2 * hz, "{ticks} ticks for 4 MiB of newlines");
}

#[test]
fn idle_and_half_line_control_connections_give_their_slot_back() {
    let s = serve(&["--control-idle-timeout", "1s"]);
    let mut held: Vec<UnixStream> = (0..16)
        .map(|_| UnixStream::connect(&s.control).unwrap())
        .collect();
    for h in held.iter_mut().step_by(2) {
        h.write_all(b"{\"v\":1,\"op\":").unwrap();
    }
    // Each is told why and closed once the idle timeout passes.
    for h in &mut held {
        h.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut text = String::new();
        h.read_to_string(&mut text).unwrap();
        assert!(text.contains("no request for 1s"), "{text}");
    }
    // The slots are free again: the operator gets in (a closed connection's thread gives its
    // slot back a moment after the close the client sees, so allow it that moment).
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let mut ctl = loop {
        let mut ctl = Ctl::connect(&s.control);
        let answer = ctl.call(json!({"v": 1, "op": "status"}));
        if answer["ok"] == true {
            break ctl;
        }
        assert!(std::time::Instant::now() < until, "{answer}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // A client that asks something now and then is not idle.
    std::thread::sleep(Duration::from_millis(600));
    ctl.ok(json!({"v": 1, "op": "status"}));
    std::thread::sleep(Duration::from_millis(600));
    ctl.ok(json!({"v": 1, "op": "status"}));
}

#[test]
fn every_failed_op_keeps_the_connection_usable_follow_included() {
    let s = serve(&[]);
    let mut ctl = Ctl::connect(&s.control);
    for bad in [
        json!({"v": 1, "op": "events", "follow": true, "device": "gpu7"}),
        json!({"v": 1, "op": "events", "device": "gpu7"}),
        json!({"v": 1, "op": "status", "device": "gpu7"}),
        json!({"v": 1, "op": "stats", "device": "gpu7"}),
        json!({"v": 1, "op": "fault", "fault": "nope"}),
        json!({"v": 1, "op": "peek", "region": 0, "offset": 0, "count": 0}),
        json!({"v": 1, "op": "poke", "region": 0, "offset": 0, "data": "zz"}),
        json!({"v": 1, "op": "reset", "device": "gpu7"}),
        json!({"v": 1, "op": "nope"}),
    ] {
        ctl.err(bad.clone());
        ctl.ok(json!({"v": 1, "op": "status"}));
    }
    // And a follow that works still works on the same connection.
    ctl.ok(json!({"v": 1, "op": "events", "follow": true, "device": "gpu0"}));
}

#[test]
fn a_key_given_twice_is_refused_and_nothing_runs() {
    let s = serve(&[]);
    let mut ctl = Ctl::connect(&s.control);
    ctl.send_raw(b"{\"v\":1,\"op\":\"status\",\"op\":\"reset\"}\n");
    let r = ctl.line();
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("duplicate key \"op\""),
        "{r}"
    );
    ctl.send_raw(b"{\"v\":1,\"op\":\"fault\",\"fault\":\"hbm-lost\",\"fault\":\"link-down\"}\n");
    assert_eq!(ctl.line()["ok"], false);
    let stats = ctl.ok(json!({"v": 1, "op": "stats"}));
    assert_eq!(stats["devices"][0]["resets"], 0, "{stats}");
    let status = ctl.ok(json!({"v": 1, "op": "status"}));
    assert_eq!(status["devices"][0]["faults"], json!([]), "{status}");
}

#[test]
fn run_time_poison_list_is_bounded() {
    let s = serve(&[]);
    let mut ctl = Ctl::connect(&s.control);
    for page in 0..1024u64 {
        ctl.ok(
            json!({"v": 1, "op": "fault", "fault": "poison", "region": 4, "offset": page << 12}),
        );
    }
    let message = ctl.err(
        json!({"v": 1, "op": "fault", "fault": "poison", "region": 4, "offset": 1024u64 << 12}),
    );
    assert!(
        message.contains("1024 pages are poisoned already"),
        "{message}"
    );
    // Healing one makes room again.
    ctl.ok(
        json!({"v": 1, "op": "fault", "fault": "poison", "clear": true, "region": 4, "offset": 0}),
    );
    ctl.ok(json!({"v": 1, "op": "fault", "fault": "poison", "region": 4, "offset": 1024u64 << 12}));
}

/// A control socket that accepts and hangs up, after an error line when `refusal` says so.
fn hanging_up_control(refusal: Option<&'static str>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            if let Some(message) = refusal {
                let line = json!({"v": 1, "ok": false, "error": {"message": message}});
                let _ = writeln!(s, "{line}");
            }
        }
    });
    (dir, path)
}

#[test]
fn ctl_never_reports_success_for_a_request_that_did_not_run() {
    for refusal in [None, Some("too many control connections; try again later")] {
        let (_dir, path) = hanging_up_control(refusal);
        for _ in 0..20 {
            let out = Command::new(BIN)
                .args(["ctl", "--control", path.to_str().unwrap(), "reset"])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{refusal:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            if let Some(message) = refusal {
                assert!(err.contains(message), "{err}");
            }
        }
    }
}

#[test]
fn ctl_with_a_closed_stdout_is_a_quiet_success_and_exit_codes_are_in_help() {
    let s = serve(&[]);
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    drop(read_end);
    let out = Command::new(BIN)
        .args(["ctl", "--control", s.control.to_str().unwrap(), "status"])
        .stdout(std::process::Stdio::from(write_end))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty());
    // Usage errors are 2.
    let out = Command::new(BIN)
        .args([
            "ctl",
            "--control",
            s.control.to_str().unwrap(),
            "frobnicate",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    for verb in [&["--help"][..], &["ctl", "--help"]] {
        let out = Command::new(BIN).args(verb).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Exit codes:") && help.contains("2  usage"),
            "{help}"
        );
    }
}

#[test]
fn check_against_a_control_socket_times_out_with_one_line() {
    let s = serve(&[]);
    let mut check = Command::new(BIN)
        .args([
            "check",
            "--socket",
            s.control.to_str().unwrap(),
            "--timeout",
            "1s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded here too: before, check waited forever.
    let until = Instant::now() + Duration::from_secs(30);
    while check.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            check.kill().unwrap();
            panic!("vgrace check still waits 30 s later");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = check.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("did not answer VERSION within 1s"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// `vgrace check` on a device whose memory decode is off (COMMAND bit 1 clear) says so once,
/// naming the cause, and skips the rules that access a BAR, instead of failing each of them
/// with EIO; it does not turn decode on (a checker must not hide the device's state).
#[test]
fn check_reports_memory_decode_off_once_and_skips_the_bar_rules() {
    let s = serve(&[]);
    let mut ctl = Ctl::connect(&s.control);
    // Each client gets the device opened afresh, decode on: turn it off while check is
    // attached, its replies held back a second each so it has not read COMMAND yet.
    ctl.ok(json!({"v": 1, "op": "fault", "fault": "delay-replies", "ms": 1000}));
    let check = Command::new(BIN)
        .args(["check", "--socket", s.socket.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while ctl.ok(json!({"v": 1, "op": "status"}))["devices"][0]["client"].is_null() {
        assert!(Instant::now() < until, "check never attached");
        std::thread::sleep(Duration::from_millis(10));
    }
    ctl.ok(
        json!({"v": 1, "op": "poke", "region": CONFIG_REGION_INDEX, "offset": 4, "data": "0000"}),
    );
    ctl.ok(json!({"v": 1, "op": "fault", "fault": "delay-replies", "clear": true}));
    let out = check.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let fails: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fails.len(), 1, "{stdout}");
    assert!(
        fails[0].starts_with("FAIL  config: memory decode on")
            && fails[0].contains("COMMAND 0x0000: memory decode is off"),
        "{stdout}"
    );
    let skipped = |rule: &str| {
        stdout.lines().any(|l| {
            l.starts_with("SKIP") && l.contains(rule) && l.ends_with("memory decode is off")
        })
    };
    for rule in [
        "bar0: readiness",
        "region 4: memory reads back writes",
        "region 4: reads past memory are all ones",
        "region 2: mmap of the fd is coherent",
        "region 2: offset at BAR end is EINVAL",
    ] {
        assert!(skipped(rule), "{rule} not skipped:\n{stdout}");
    }
    // Rules that need no BAR access still ran, and the device was left as found.
    assert!(stdout.contains("PASS  BAR4: sizing probe"), "{stdout}");
    let command = ctl
        .ok(json!({"v": 1, "op": "peek", "region": CONFIG_REGION_INDEX, "offset": 4, "count": 2}));
    assert_eq!(command["data"], "0000", "{command}");
}

/// `vgrace ctl` errors name its flags (`--delay`), not the control plane's JSON fields
/// (`"ms"`), which its user never typed.
#[test]
fn ctl_errors_name_the_flags_not_the_json_fields() {
    let s = serve(&[]);
    for (args, flag) in [
        (
            &["fault", "ready-delay"][..],
            "fault ready-delay needs --delay",
        ),
        (
            &["fault", "delay-replies"],
            "fault delay-replies needs --delay",
        ),
        (
            &["fault", "poison", "--offset", "0"],
            "fault poison needs --region",
        ),
        (
            &["fault", "poison", "--region", "4"],
            "fault poison needs --offset",
        ),
    ] {
        let (ok, _, err) = run_ctl(&s.control, args);
        assert!(!ok, "{args:?}");
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(!err.contains('"'), "{args:?}: {err}");
    }
}

/// 7.2: the CXL readiness wait of a client's first memory access runs outside the device lock,
/// as `nvgrace_gpu_wait_device_ready_cxl` runs before the memory lock: the control plane peeks
/// while the client waits (no "busy"), and the read then succeeds.
#[test]
fn cxl_readiness_wait_runs_outside_the_device_lock() {
    let s = serve(&[
        "--profile",
        "gb200",
        "--cxl",
        "--cxl-active-delay",
        "3s",
        "--cxl-timeout-code",
        "1",
    ]);
    let socket = s.socket.clone();
    // The open is a function reset: "active" is 3 s away again.
    let mut c = Client::connect(&socket).unwrap();
    let reader = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        let r = c.region_read(4, 0, 4);
        (r.is_ok(), start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut ctl = Ctl::connect(&s.control);
    let start = std::time::Instant::now();
    let peek = ctl.call(json!({"v": 1, "op": "peek", "region": 0, "offset": 256, "count": 4}));
    assert_eq!(peek["ok"], true, "{peek}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    let (ok, waited) = reader.join().unwrap();
    assert!(ok);
    assert!(
        waited >= Duration::from_secs(2),
        "the read did not wait: {waited:?}"
    );
}

/// What BAR0's mmap saves: a client that maps BAR0's sparse areas reads its registers without a
/// message, while the readiness page (left out of the areas) still costs one REGION_READ per
/// read. Prints the figure for the record.
#[test]
fn mapped_bar0_reads_cost_no_message_and_readiness_reads_one_each() {
    const READS: u64 = 1000;
    let s = serve(&[]);
    let mut c = Client::connect(&s.socket).unwrap();
    let info = c.region_info(0).unwrap();
    let fd = info.fd.expect("BAR0 travels with its fd");
    let map =
        test_support::SharedMapping::new(std::os::fd::AsFd::as_fd(&fd), info.info.offset, 0x1000)
            .unwrap();
    let reads = |ctl: &mut Ctl| {
        let st = ctl.ok(json!({"v": 1, "op": "stats", "device": "gpu0"}));
        st["devices"][0]["commands"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["cmd"] == "REGION_READ")
            .map_or(0, |r| r["count"].as_u64().unwrap())
    };
    let mut ctl = Ctl::connect(&s.control);
    let before = reads(&mut ctl);
    c.region_write(0, 0x100, &0x5eed_u32.to_le_bytes()).unwrap();
    let mut word = [0u8; 4];
    for _ in 0..READS {
        map.read(0x100, &mut word);
    }
    assert_eq!(
        u32::from_le_bytes(word),
        0x5eed,
        "the mapping sees the register file"
    );
    let mapped = reads(&mut ctl) - before;
    for _ in 0..READS {
        reg(&mut c, C2C);
    }
    let trapped = reads(&mut ctl) - before - mapped;
    eprintln!("{READS} reads of BAR0+0x100 (mapped): {mapped} REGION_READs; {READS} reads of BAR0+0x1498 (readiness page): {trapped}");
    assert_eq!((mapped, trapped), (0, READS));
}
