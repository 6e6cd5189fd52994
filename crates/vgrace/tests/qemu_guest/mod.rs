//! Shared by the QEMU guest tests (qemu_e2e.rs, qemu_node.rs, qemu_hotplug.rs, ...): the vgrace
//! CLI with typed JSON, a node's config, the server child, and the end of a run (report and
//! verdict). The harness itself (chroot, launch, QMP, waits, checks) is test-support's `qemu`
//! module.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use test_support::qemu::Checks;
use test_support::ServeChild;

pub const BIN: &str = env!("CARGO_BIN_EXE_vgrace");

/// An environment variable, or `default`.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// An environment variable is `1`.
pub fn env_is_1(name: &str, default: bool) -> bool {
    std::env::var(name).map_or(default, |v| v == "1")
}

/// `vgrace ARGS...`: its stdout, or what went wrong.
pub fn vgrace(args: &[&str]) -> Result<String, String> {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .map_err(|e| format!("vgrace {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "vgrace {} ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `vgrace ARGS...` whose stdout is JSON, decoded as `T`.
pub fn vgrace_json<T: DeserializeOwned>(args: &[&str]) -> Result<T, String> {
    let out = vgrace(args)?;
    serde_json::from_str(&out).map_err(|e| format!("vgrace {}: {e}: {out}", args.join(" ")))
}

/// `vgrace layout --json`: the fields the tests use.
#[derive(Debug, Deserialize)]
pub struct Layout {
    pub device_id: u32,
    pub mem_size: u64,
    pub regions: Vec<LayoutRegion>,
    pub core_only: Option<String>,
    pub bar1_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct LayoutRegion {
    pub kind: String,
    pub memlength: u64,
    pub bar_size: u64,
    pub fd_offset: u64,
}

impl Layout {
    /// The region of `kind` (`usemem`, `resmem`); a missing one is all zero.
    pub fn region(&self, kind: &str) -> (u64, u64, u64) {
        self.regions
            .iter()
            .find(|r| r.kind == kind)
            .map_or((0, 0, 0), |r| (r.memlength, r.bar_size, r.fd_offset))
    }
}

/// `vgrace qemu-args --json`: the argv and the node it describes.
#[derive(Debug, Deserialize)]
pub struct QemuArgs {
    pub args: Vec<String>,
    pub node: QemuNode,
}

#[derive(Debug, Deserialize)]
pub struct QemuNode {
    pub gpus: Vec<QemuGpu>,
}

#[derive(Debug, Deserialize)]
pub struct QemuGpu {
    pub id: String,
    /// `gh100 10de:2342`.
    pub device: String,
    /// (BAR, size).
    pub bars: Vec<(u32, u64)>,
    /// First and last NUMA node of the GPU's generic initiators.
    pub numa_nodes: (u32, u32),
}

impl QemuGpu {
    /// The size of `bar` (0 when absent).
    pub fn bar(&self, bar: u32) -> u64 {
        self.bars
            .iter()
            .find(|(b, _)| *b == bar)
            .map_or(0, |(_, s)| *s)
    }
}

/// A `serve --config` file of one memfd-backed GH100 of `mem` on each of `sockets`.
pub fn node_toml(sockets: &[String], mem: &str) -> String {
    sockets
        .iter()
        .map(|s| {
            format!(
                "[[device]]\nsocket = \"{s}\"\nprofile = \"gh100\"\nmem_size = \"{mem}\"\nbacking = \"memfd\"\n\n"
            )
        })
        .collect()
}

/// A `qemu-args` option value that belongs to a GPU's NUMA nodes: its generic initiators and
/// their memory-less nodes (node 0 holds the CPUs and the RAM).
pub fn gpu_numa_arg(value: &str) -> bool {
    value.starts_with("acpi-generic-initiator")
        || (value.starts_with("node,nodeid=") && !value.starts_with("node,nodeid=0,"))
}

/// `vgrace check --json`: the rules and the summary.
#[derive(Debug, Deserialize)]
pub struct CheckReport {
    pub rules: Vec<CheckRule>,
    pub summary: CheckSummary,
}

#[derive(Debug, Deserialize)]
pub struct CheckRule {
    pub name: String,
    pub result: String,
    #[serde(default)]
    pub detail: String,
}

#[derive(Debug, Deserialize)]
pub struct CheckSummary {
    pub passed: u32,
    pub failed: u32,
    pub total: u32,
}

impl CheckReport {
    /// `vgrace check --json --socket SOCKET` (which exits 1 when a rule fails: the report is
    /// still read).
    pub fn run(socket: &Path) -> Result<Self, String> {
        let out = Command::new(BIN)
            .args(["check", "--json", "--socket"])
            .arg(socket)
            .output()
            .map_err(|e| format!("vgrace check: {e}"))?;
        serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "vgrace check ({}): {e}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
    }

    /// [`CheckReport::run`] once the server has let its last client go: it answers a second
    /// client EBUSY while it still holds the first (QEMU that just died), so that is retried for
    /// up to `limit`.
    pub fn run_when_free(socket: &Path, limit: Duration) -> Result<Self, String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            match Self::run(socket) {
                Err(e) if e.contains("EBUSY") && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                r => return r,
            }
        }
    }

    /// The rules that failed, `name: detail`.
    pub fn failures(&self) -> Vec<String> {
        self.rules
            .iter()
            .filter(|r| r.result == "FAIL")
            .map(|r| format!("{}: {}", r.name, r.detail))
            .collect()
    }

    /// The identity and BAR0 rules answered and passed (at least 3), whatever the memory rules
    /// said: a new client is served.
    pub fn serves_a_new_client(&self) -> bool {
        let core = |r: &&CheckRule| r.name.starts_with("identity:") || r.name.starts_with("bar0:");
        let core: Vec<_> = self.rules.iter().filter(core).collect();
        core.len() >= 3 && core.iter().all(|r| r.result == "PASS")
    }
}

/// `vgrace serve ARGS...` with `RUST_LOG=info` (unless set), once every socket accepts.
pub fn serve(args: &[String], sockets: &[&Path]) -> ServeChild {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").args(args);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    ServeChild::spawn(cmd).unwrap().wait_listening(sockets)
}

/// The end of a run: prints every check and `<name>: guest p/n, host p/n`, and on failure the
/// console and vgrace's log; panics unless `ok`, a check ran and none failed.
pub fn finish(name: &str, checks: &Checks, ok: bool, console: &str, serve_log: &str) {
    for c in &checks.all {
        println!("{c}");
    }
    let passed = ok && checks.none_failed();
    println!(
        "{name}: {} ({})",
        checks.summary(),
        if passed { "PASSED" } else { "FAILED" }
    );
    if !passed {
        eprintln!("--- console\n{console}\n--- vgrace log\n{serve_log}");
        panic!(
            "{name} failed: {:#?}; guest verdict {:?}",
            checks.failed(),
            checks.guest_result
        );
    }
}

/// How long to wait for a guest step, `VGRACE_E2E_WAIT`-style seconds from `var` (default
/// `default` s).
pub fn seconds(var: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}
