//! The real driver as the oracle: an arm64 `virt` L1 Grace host (QEMU from the arm64 setup's sid
//! chroot, UEFI, TCG) boots the cached guest kernel (linux-source-7.2 with VFIO, no-IOMMU and
//! NVGRACE_GPU_VFIO_PCI: scripts/guest/kernel-arm64.config) on a GPU that `vgrace serve --view
//! host` serves, with the SSDT of `vgrace acpi` and the machine of `vgrace qemu-args --view
//! host`. In the guest (scripts/guest/init-oracle) the real nvgrace_gpu_vfio_pci binds it, then an
//! aarch64 `vgrace transcript --vfio-device` and `vgrace check --vfio-device` run against the
//! driver. On the host the same transcript runs against `vgrace serve --linux <version>` (the
//! VFIO view, same profile and memory size), and the two are diffed: every differing line must
//! be a known class (scripts/oracle/known-differences.txt, explained in DESIGN.md).
//!   `VGRACE_ORACLE_PROFILE`  gh100 (default) | gb200 | gb200-cxl
//!   `VGRACE_ORACLE_CLIENT=0` skip the aarch64 vgrace (probe and bind only)
//!   `VGRACE_ORACLE_KERNEL`   the guest kernel image (default: the cached 7.2 build)
//!   `VGRACE_ORACLE_LINUX`    the version vgrace and `vgrace check` judge by (default 7.2;
//!                            scripts/qemu-oracle-6.12.sh uses 6.9)
//! The console, both transcripts and the diff are saved in the arm64 cache as
//! `oracle-<profile>[-linux<version>]-{console.log,guest.txt,host.txt}` and `.diff`.
//! `#[ignore]`d: scripts/qemu-oracle.sh sets up the chroot, builds the aarch64 vgrace
//! (scripts/qemu-oracle-build.sh, passed as `VGRACE_ORACLE_GUEST_VGRACE`) and runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod qemu_guest;

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use qemu_guest::{env_or, finish, seconds, serve, vgrace, vgrace_json};
use serde::Deserialize;
use test_support::qemu::{boot_args, scripts_dir, Arch, Checks, Chroot, RunDir, Vm, VmOutput};

/// `vgrace qemu-args --view host --json`: one shell-quoted option group per arg.
#[derive(Debug, Deserialize)]
struct HostArgs {
    args: Vec<String>,
    kernel_args: String,
    gpus: Vec<HostGpu>,
}

#[derive(Debug, Deserialize)]
struct HostGpu {
    /// `\_SB.PCI0.S08.S00`.
    acpi_scope: String,
}

/// Splits one line of `qemu-args` as the shell would, for the quoting it uses: words at blanks,
/// single quotes literal. Anything else (double quotes, backslashes) is refused, not guessed.
fn shell_words(line: &str) -> Result<Vec<String>, String> {
    let (mut words, mut word, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    for c in line.chars() {
        match c {
            '\'' => (quoted, any) = (!quoted, true),
            c if quoted => word.push(c),
            ' ' | '\t' => {
                if any {
                    words.push(std::mem::take(&mut word));
                }
                any = false;
            }
            '"' | '\\' | '$' | '`' => return Err(format!("unexpected {c:?} in {line:?}")),
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if quoted {
        return Err(format!("unterminated quote in {line:?}"));
    }
    if any {
        words.push(word);
    }
    Ok(words)
}

/// One profile's settings.
struct Oracle {
    profile: String,
    linux: String,
    /// The output files' stem in the cache: `oracle-<profile>[-linux<version>]`.
    name: String,
    mem_size: String,
    cxl: bool,
}

impl Oracle {
    fn from_env() -> Self {
        let case = env_or("VGRACE_ORACLE_PROFILE", "gh100");
        let linux = env_or("VGRACE_ORACLE_LINUX", "7.2");
        let (profile, cxl) = match case.as_str() {
            "gh100" | "gb200" => (case.clone(), false),
            "gb200-cxl" => ("gb200".to_string(), true),
            p => panic!("unknown VGRACE_ORACLE_PROFILE {p:?} (gh100, gb200 or gb200-cxl)"),
        };
        let name = if linux == "7.2" {
            format!("oracle-{case}")
        } else {
            format!("oracle-{case}-linux{linux}")
        };
        Self {
            profile,
            linux,
            name,
            mem_size: env_or("VGRACE_ORACLE_MEM_SIZE", "2660M"),
            cxl,
        }
    }

    /// The `[[device]]` of the L1 host's GPU, with paths as `path` gives them (host or chroot).
    fn config(&self, path: &dyn Fn(&str) -> String, mem_base: &str) -> String {
        format!(
            "[[device]]\nsocket = \"{}\"\nprofile = \"{}\"\nmem_size = \"{}\"\nmem_base = \"{mem_base}\"\nbacking = \"{}\"\nview = \"host\"\nbar1_size = \"1G\"\n{}\n",
            path("gpu0.sock"),
            self.profile,
            self.mem_size,
            path("gpu0.mem"),
            if self.cxl { "cxl = true" } else { "" }
        )
    }
}

/// `vgrace transcript` against `vgrace serve --linux` (the VFIO view, same device).
fn host_transcript(o: &Oracle, dir: &RunDir, mem_base: &str) -> Result<String, String> {
    let sock = dir.host("vfio.sock");
    let mut args: Vec<String> = [
        "--socket",
        sock.to_str().unwrap(),
        "--profile",
        &o.profile,
        "--mem-size",
        &o.mem_size,
        "--mem-base",
        mem_base,
        "--bar1-size",
        "1G",
        "--linux",
        &o.linux,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if o.cxl {
        args.push("--cxl".into());
    }
    let _server = serve(&args, &[&sock]);
    vgrace(&["transcript", "--socket", sock.to_str().unwrap()])
}

/// The `-`/`+` lines of `diff -u guest host` that no pattern of known-differences.txt explains
/// (`grep -E` semantics, as the file is written), and the diff itself.
fn unexplained(guest: &Path, host: &Path) -> Result<(String, Vec<String>), String> {
    let diff = Command::new("diff")
        .arg("-u")
        .args([guest, host])
        .output()
        .map_err(|e| format!("diff: {e}"))?;
    let diff = String::from_utf8_lossy(&diff.stdout).into_owned();
    let changed: String = diff
        .lines()
        .filter(|l| {
            (l.starts_with('-') && !l.starts_with("---"))
                || (l.starts_with('+') && !l.starts_with("+++"))
        })
        .map(|l| format!("{}\n", &l[1..]))
        .collect();
    let patterns = scripts_dir().join("oracle/known-differences.txt");
    let known: String = std::fs::read_to_string(&patterns)
        .map_err(|e| format!("{}: {e}", patterns.display()))?
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let pat = guest.with_extension("patterns");
    std::fs::write(&pat, known).map_err(|e| e.to_string())?;
    let mut grep = Command::new("grep")
        .arg("-Ev")
        .arg("-f")
        .arg(&pat)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("grep: {e}"))?;
    grep.stdin
        .take()
        .ok_or("grep stdin")?
        .write_all(changed.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = grep.wait_with_output().map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&pat);
    Ok((
        diff,
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
    ))
}

/// The transcript checks: both complete, every difference a known class.
fn transcript_checks(
    o: &Oracle,
    chroot: &Chroot,
    dir: &RunDir,
    console: &str,
    mem_base: &str,
    checks: &mut Checks,
) {
    let save = |suffix: &str, text: &str| -> PathBuf {
        let p = chroot.cache.join(format!("{}{suffix}", o.name));
        std::fs::write(&p, text).unwrap();
        p
    };
    let guest_text: String = console
        .lines()
        .filter_map(|l| l.strip_prefix("VGRACE-T "))
        .map(|l| format!("{l}\n"))
        .collect();
    let guest = save("-guest.txt", &guest_text);
    let host_text = match host_transcript(o, dir, mem_base) {
        Ok(t) => t,
        Err(e) => return checks.host("host-transcript", false, e),
    };
    let host = save("-host.txt", &host_text);
    let (g, h) = (guest_text.lines().count(), host_text.lines().count());
    checks.host(
        "transcripts-complete",
        g > 200 && h > 200,
        format!("guest {g} lines, host {h}"),
    );
    match unexplained(&guest, &host) {
        Ok((diff, bad)) => {
            save(".diff", &diff);
            print!("{diff}");
            let differ = diff
                .lines()
                .filter(|l| l.starts_with('-') && !l.starts_with("---"))
                .count();
            let detail = if bad.is_empty() {
                format!(
                    "{differ} of {h} lines differ (- real driver, + vgrace), every one a known \
                    class (DESIGN.md, The real driver as the oracle)"
                )
            } else {
                format!("not explained in scripts/oracle/known-differences.txt: {bad:#?}")
            };
            checks.host("transcript-differences-known", bad.is_empty(), detail);
        }
        Err(e) => checks.host("transcript-differences-known", false, e),
    }
}

#[test]
#[ignore = "needs the arm64 chroot and kernel of scripts/qemu-setup-arm64.sh and root; \
    scripts/qemu-oracle.sh runs it"]
fn real_driver_binds_the_host_view_and_differs_only_in_known_ways() {
    let o = Oracle::from_env();
    let Some(chroot) = Chroot::find_or_skip(Arch::Arm64, "qemu-oracle") else {
        return;
    };
    let guest_vgrace = std::env::var_os("VGRACE_ORACLE_GUEST_VGRACE").filter(|v| !v.is_empty());
    let dir = RunDir::new(&chroot, "vgrace-oracle-", false).unwrap();
    // virt's RAM starts at 1 GiB; the GPU's memory is the next NUMA node's RAM, right after ours.
    let guest_mem_mib = 512u64;
    let mem_base = format!("{:#x}", 0x4000_0000 + (guest_mem_mib << 20));
    // vgrace (host) and QEMU (chroot: it maps the backing file too) see the same files by
    // different paths: one config for each.
    let host_config = dir.host("host.toml");
    std::fs::write(
        &host_config,
        o.config(&|n| dir.host(n).display().to_string(), &mem_base),
    )
    .unwrap();
    let guest_config = dir.host("guest.toml");
    std::fs::write(&guest_config, o.config(&|n| dir.inside(n), &mem_base)).unwrap();
    let ssdt = dir.host("ssdt.aml");
    vgrace(&[
        "acpi",
        "--config",
        host_config.to_str().unwrap(),
        "-o",
        ssdt.to_str().unwrap(),
    ])
    .unwrap();
    let l1: HostArgs = vgrace_json(&[
        "qemu-args",
        "--view",
        "host",
        "--config",
        guest_config.to_str().unwrap(),
        "--guest-mem",
        &format!("{guest_mem_mib}M"),
        "--json",
    ])
    .unwrap();
    let l1_args: Vec<String> = l1
        .args
        .iter()
        .map(|l| shell_words(l))
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
        .concat();
    let scope = l1.gpus[0]
        .acpi_scope
        .split('.')
        .nth(2)
        .unwrap_or_default()
        .to_string();

    let mut options: Vec<&OsStr> = vec![OsStr::new("--acpi"), ssdt.as_os_str()];
    if let Some(v) = &guest_vgrace {
        options.extend([OsStr::new("--bin"), v.as_os_str()]);
    }
    let (kernel, initrd) = dir
        .make_guest_with(&chroot, &options, "init-oracle", &[])
        .unwrap();
    if let Some(k) = std::env::var_os("VGRACE_ORACLE_KERNEL").filter(|k| !k.is_empty()) {
        std::fs::copy(k, dir.host("kernel")).unwrap();
    }
    let sock = dir.host("gpu0.sock");
    let server = serve(
        &["--config".to_string(), host_config.display().to_string()],
        &[&sock],
    );

    let append = format!(
        "console=ttyAMA0 loglevel=1 panic=-1 {} vgrace.scope={scope} vgrace.check_args=--linux,{}",
        l1.kernel_args, o.linux
    );
    eprintln!(
        "[qemu-oracle] booting the L1 Grace host (TCG): {}, {} at {mem_base}, ACPI scope \
        ...{scope}",
        o.name, o.mem_size
    );
    let started = Instant::now();
    let mut args = boot_args("tcg", &kernel, &initrd, &append);
    args.extend(l1_args);
    let mut vm = Vm::start(
        &chroot,
        &args,
        VmOutput {
            console: dir.host("console.log"),
            stderr: None,
        },
    )
    .unwrap();
    let status = vm.wait_exit(seconds("VGRACE_ORACLE_TIMEOUT", 600));
    vm.stop();
    let text = vm.console().text();
    std::fs::write(chroot.cache.join(format!("{}-console.log", o.name)), &text).unwrap();
    eprintln!(
        "[qemu-oracle] guest ran {} s ({status:?})",
        started.elapsed().as_secs()
    );
    for l in text
        .lines()
        .filter(|l| l.starts_with("VGRACE-INFO") || l.starts_with("VGRACE-DMESG"))
    {
        println!("{l}");
    }
    let mut checks = Checks::parse(&text);
    if guest_vgrace.is_some() && checks.guest_passed() {
        transcript_checks(&o, &chroot, &dir, &text, &mem_base, &mut checks);
    }
    let ok = status.is_ok_and(|s| s.success()) && checks.guest_passed();
    finish(
        &format!("qemu-oracle ({})", o.name),
        &checks,
        ok,
        &text,
        &server.log(),
    );
}

#[test]
fn shell_words_split_qemu_args_lines_and_refuse_other_quoting() {
    assert_eq!(shell_words("-m 3172M").unwrap(), ["-m", "3172M"]);
    assert_eq!(
        shell_words(r#"-device '{"id":"gpu0","socket":{"path":"/tmp/a b"}}'"#).unwrap(),
        ["-device", r#"{"id":"gpu0","socket":{"path":"/tmp/a b"}}"#]
    );
    assert_eq!(shell_words("-x ''").unwrap(), ["-x", ""]);
    assert!(shell_words("-x 'open").is_err());
    assert!(shell_words(r#"-x "y""#).is_err());
    assert!(shell_words(r"-x a\ b").is_err());
}

#[test]
fn transcript_lines_that_no_known_class_explains_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (guest, host) = (dir.path().join("guest.txt"), dir.path().join("host.txt"));
    let same = "version 0.0\nconfig 0x000 -> 234210de\n";
    // A BAR register differs (a known class), then the device id (no class explains it).
    std::fs::write(&guest, format!("{same}config 0x010 -> 0000000c\n")).unwrap();
    std::fs::write(&host, format!("{same}config 0x010 -> fe00000c\n")).unwrap();
    let (diff, bad) = unexplained(&guest, &host).unwrap();
    assert!(diff.contains("-config 0x010 -> 0000000c"), "{diff}");
    assert!(bad.is_empty(), "{bad:?}");
    std::fs::write(
        &host,
        format!("{same}config 0x010 -> fe00000c\nconfig 0x002 -> 2343\n"),
    )
    .unwrap();
    let (_, bad) = unexplained(&guest, &host).unwrap();
    assert_eq!(bad, ["config 0x002 -> 2343"]);
}
