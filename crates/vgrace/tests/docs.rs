//! README.md and docs/*.md show command output only as the binary prints it, and the TOML key
//! reference (docs/config.md) lists exactly the keys the config file takes.
//!
//! Every ```` ```text ```` block in those files follows a marker line that names its source:
//!
//! - `<!-- output: vgrace ARGS [&& vgrace ARGS]... [; served by: vgrace serve ARGS] -->`: the
//!   commands' standard output, concatenated (each must exit 0), with a `vgrace serve` running
//!   meanwhile when `served by` names one (stopped by SIGTERM afterwards);
//! - `<!-- output(abridged): ... -->`: the same, where a block line `...` or `# ...` stands for
//!   one or more lines left out;
//! - `<!-- output(captured): WHERE -->`: output `cargo test` cannot produce (a guest's, QEMU's);
//!   WHERE says where it came from (`qemu_readme.rs`, through `scripts/qemu-readme.sh`, checks
//!   its own block).
//!
//! A ```` ```toml ```` block after `<!-- file: PATH -->` is written to PATH before the commands
//! after it run. Paths under `/tmp/vgrace/` are a fresh temp dir per document while the test runs
//! (in commands, files and output alike), so nothing depends on the machine. Commands are split
//! into words as a shell would (quotes, no expansion).
//!
//! `VGRACE_BLESS_DOCS=1 cargo test -p vgrace --test docs` rewrites stale blocks.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use test_support::diff::line_diff;
use test_support::ServeChild;

const BIN: &str = env!("CARGO_BIN_EXE_vgrace");
/// The placeholder directory of the documents' paths.
const DOC_DIR: &str = "/tmp/vgrace";
const BLESS: &str = "VGRACE_BLESS_DOCS=1 cargo test -p vgrace --test docs";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// README.md and every docs/*.md, repository-relative.
fn documents() -> Vec<PathBuf> {
    let mut docs = vec![PathBuf::from("README.md")];
    let mut more: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .map(|p| Path::new("docs").join(p.file_name().unwrap()))
        .collect();
    more.sort();
    docs.extend(more);
    docs
}

/// What a marker says.
#[derive(Debug)]
enum Source {
    Run {
        commands: Vec<Vec<String>>,
        server: Option<Vec<String>>,
        abridged: bool,
    },
    Captured,
    File(String),
}

/// A marked fenced block: the marker's line and the body's line range (0-based, exclusive end).
#[derive(Debug)]
struct Block {
    source: Source,
    marker_line: usize,
    body: std::ops::Range<usize>,
}

/// The marked blocks of a document; an unmarked ```text block or a marker without a block is an
/// error naming its line.
fn blocks(lines: &[&str]) -> Result<Vec<Block>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if line == "```text" {
            return Err(format!(
                "line {}: a ```text block without an <!-- output... --> marker",
                i + 1
            ));
        }
        let Some(source) = marker(line).transpose()? else {
            i += 1;
            continue;
        };
        let open = i + 1;
        let fence_ok = match source {
            Source::File(_) => lines.get(open).is_some_and(|l| l.trim() == "```toml"),
            _ => lines.get(open).is_some_and(|l| l.trim() == "```text"),
        };
        if !fence_ok {
            return Err(format!(
                "line {}: the marker is not followed by its fenced block",
                i + 1
            ));
        }
        let close = (open + 1..lines.len())
            .find(|&j| lines[j].trim_start().starts_with("```"))
            .ok_or_else(|| format!("line {}: the block is not closed", open + 1))?;
        out.push(Block {
            source,
            marker_line: i,
            body: open + 1..close,
        });
        i = close + 1;
    }
    Ok(out)
}

/// The source a marker line names; `None` for any other line.
fn marker(line: &str) -> Option<Result<Source, String>> {
    let inner = line.strip_prefix("<!--")?.strip_suffix("-->")?.trim();
    if let Some(path) = inner.strip_prefix("file:") {
        return Some(Ok(Source::File(path.trim().to_string())));
    }
    let (abridged, rest) = if let Some(r) = inner.strip_prefix("output:") {
        (false, r)
    } else if let Some(r) = inner.strip_prefix("output(abridged):") {
        (true, r)
    } else if let Some(r) = inner.strip_prefix("output(captured):") {
        return Some(if r.trim().is_empty() {
            Err("output(captured) must say where the output came from".into())
        } else {
            Ok(Source::Captured)
        });
    } else {
        return None;
    };
    let (commands, server) = match rest.split_once("; served by:") {
        Some((c, s)) => (c, Some(s)),
        None => (rest, None),
    };
    let vgrace = |text: &str| -> Result<Vec<String>, String> {
        let words = words(text.trim())?;
        if words.first().map(String::as_str) != Some("vgrace") {
            return Err(format!("`{}` is not a vgrace command", text.trim()));
        }
        Ok(words[1..].to_vec())
    };
    let run = || -> Result<Source, String> {
        let commands = commands
            .split(" && ")
            .map(vgrace)
            .collect::<Result<_, _>>()?;
        let server = match server.map(vgrace).transpose()? {
            Some(s) if s.first().map(String::as_str) == Some("serve") => Some(s[1..].to_vec()),
            Some(_) => return Err("`served by:` must be a `vgrace serve` command".into()),
            None => None,
        };
        Ok(Source::Run {
            commands,
            server,
            abridged,
        })
    };
    Some(run())
}

/// Splits a command line into words as a shell would: blanks separate, single and double quotes
/// group (no escapes inside single quotes, `\"` and `\\` inside double quotes).
fn words(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => out.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(format!("unclosed ' in `{text}`")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => w.extend(chars.next()),
                        Some(c) => w.push(c),
                        None => return Err(format!("unclosed \" in `{text}`")),
                    }
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    out.extend(word);
    Ok(out)
}

/// `/tmp/vgrace` in a document's command or file, as this run's temp dir.
fn localize(text: &str, tmp: &Path) -> String {
    text.replace(DOC_DIR, tmp.to_str().unwrap())
}

/// `vgrace ARGS` as the test runs it: stdin closed, no inherited control socket, in `tmp`.
fn run(args: &[String], tmp: &Path) -> Result<String, String> {
    let args: Vec<String> = args.iter().map(|a| localize(a, tmp)).collect();
    let out = Command::new(BIN)
        .args(&args)
        .current_dir(tmp)
        .env_remove("VGRACE_CONTROL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(format!(
            "`vgrace {}` exited {:?}: {}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).replace(tmp.to_str().unwrap(), DOC_DIR))
}

/// Starts `vgrace serve ARGS` and waits until its sockets (`--socket`, `--control`, or the
/// `socket`s and `control` of its `--config` file) take connections.
fn start_server(args: &[String], tmp: &Path) -> ServeChild {
    let args: Vec<String> = args.iter().map(|a| localize(a, tmp)).collect();
    let mut sockets: Vec<PathBuf> = Vec::new();
    for pair in args.windows(2) {
        match pair[0].as_str() {
            "--socket" | "--control" => sockets.push(tmp.join(&pair[1])),
            "--config" => {
                let text = std::fs::read_to_string(tmp.join(&pair[1])).unwrap();
                let file: toml::Table = toml::from_str(&text).unwrap();
                let tables = file.get("device").and_then(|d| d.as_array());
                let devices = tables.into_iter().flatten().filter_map(|d| d.get("socket"));
                for s in devices.chain(file.get("control")) {
                    sockets.push(tmp.join(s.as_str().unwrap()));
                }
            }
            _ => {}
        }
    }
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").args(&args).current_dir(tmp);
    cmd.env_remove("VGRACE_CONTROL");
    let child = ServeChild::spawn(cmd).unwrap();
    let sockets: Vec<&Path> = sockets.iter().map(PathBuf::as_path).collect();
    child.wait_listening(&sockets)
}

/// Whether `block` (with elision lines when `abridged`) shows `out`.
fn shows(block: &[&str], out: &[&str], abridged: bool) -> bool {
    let elision = |l: &str| abridged && (l.trim() == "..." || l.starts_with("# ..."));
    match block.split_first() {
        None => out.is_empty(),
        Some((first, rest)) if elision(first) => {
            (1..=out.len()).any(|skip| shows(rest, &out[skip..], abridged))
        }
        Some((first, rest)) => out.first() == Some(first) && shows(rest, &out[1..], abridged),
    }
}

/// Checks one document: the problems found, and its text with stale blocks replaced.
fn check_document(doc: &Path) -> (Vec<String>, String) {
    let text = std::fs::read_to_string(repo().join(doc)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let blocks = match blocks(&lines) {
        Ok(b) => b,
        Err(e) => return (vec![format!("{}: {e}", doc.display())], text),
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut problems = Vec::new();
    let mut fresh: Vec<(std::ops::Range<usize>, Vec<String>)> = Vec::new();
    for b in &blocks {
        let at = format!("{}:{}", doc.display(), b.marker_line + 1);
        let body = &lines[b.body.clone()];
        let (commands, server, abridged) = match &b.source {
            Source::Captured => continue,
            Source::File(path) => {
                let path = tmp.path().join(localize(path, tmp.path()));
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, localize(&(body.join("\n") + "\n"), tmp.path())).unwrap();
                continue;
            }
            Source::Run {
                commands,
                server,
                abridged,
            } => (commands, server, *abridged),
        };
        let mut served = server.as_ref().map(|s| start_server(s, tmp.path()));
        let printed: Result<String, String> = commands.iter().map(|c| run(c, tmp.path())).collect();
        if let Some(s) = served.as_mut() {
            let (status, log) = s.signal(nix::sys::signal::Signal::SIGTERM);
            assert!(status.success(), "{at}: the server failed: {log}");
        }
        let printed = match printed {
            Ok(p) => p,
            Err(e) => {
                problems.push(format!("{at}: {e}"));
                continue;
            }
        };
        let out: Vec<&str> = printed.lines().collect();
        if !shows(body, &out, abridged) {
            problems.push(format!(
                "{at}: the block is not what the command prints (- document, + binary{}):\n{}",
                if abridged {
                    "; `...` lines may stand for any lines"
                } else {
                    ""
                },
                line_diff(body, &out)
            ));
            fresh.push((b.body.clone(), out.iter().map(|l| l.to_string()).collect()));
        }
    }
    // Rewrite from the end so the earlier ranges stay valid.
    let mut new: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    for (range, body) in fresh.into_iter().rev() {
        new.splice(range, body);
    }
    (problems, new.join("\n") + "\n")
}

#[test]
fn every_output_block_in_the_docs_is_what_the_binary_prints() {
    let bless = std::env::var_os("VGRACE_BLESS_DOCS").is_some_and(|v| v == "1");
    let mut problems = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let (found, new) = check_document(&doc);
        checked += 1;
        if bless && !found.is_empty() {
            std::fs::write(repo().join(&doc), new).unwrap();
            eprintln!(
                "rewrote {} ({} block(s)); re-abridge by hand any `output(abridged)` block it names:",
                doc.display(),
                found.len()
            );
            for p in &found {
                eprintln!("{p}");
            }
        } else {
            problems.extend(found);
        }
    }
    assert!(checked >= 2, "README.md and docs/*.md");
    assert!(
        problems.is_empty(),
        "{}\n\n{} stale or broken block(s); refresh them with `{BLESS}` and review the diff",
        problems.join("\n\n"),
        problems.len()
    );
}

/// The keys a TOML table takes, as the binary's own error for an unknown key lists them (serde's
/// `expected one of ...` from the config types' field names, `deny_unknown_fields`).
fn accepted_keys(toml_text: &str) -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("probe.toml");
    std::fs::write(&path, toml_text).unwrap();
    let out = common::vgrace(&["layout", "--config", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    let listed = err
        .split_once("expected one of ")
        .unwrap_or_else(|| panic!("no list of keys in: {err}"))
        .1;
    listed
        .trim()
        .split(", ")
        .map(|k| k.trim_matches('`').to_string())
        .collect()
}

/// The keys docs/config.md's table under `heading` lists (first column, in backquotes).
fn documented_keys(reference: &str, heading: &str) -> BTreeSet<String> {
    let section = reference
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("docs/config.md has no `{heading}`"))
        .1;
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(key, _)| key.to_string())
        .collect()
}

/// Fails naming the keys `listed` (in docs/config.md's `what`) lacks or has beyond `taken`.
fn same_keys(listed: &BTreeSet<String>, taken: &BTreeSet<String>, what: &str) {
    let missing: Vec<&String> = taken.difference(listed).collect();
    let unknown: Vec<&String> = listed.difference(taken).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "docs/config.md, {what}: keys the file takes but it does not list: {missing:?}; \
         keys it lists that the file refuses: {unknown:?}"
    );
}

/// docs/config.md lists every key of the config file's tables and no other; its complete
/// example uses each of them (the docs test reads that example with `vgrace layout`), and
/// dist/node.example.toml reads.
#[test]
fn config_reference_lists_exactly_the_keys_the_file_takes() {
    let reference = std::fs::read_to_string(repo().join("docs/config.md")).unwrap();
    let device = "[[device]]\nsocket = \"/tmp/vgrace-probe.sock\"\n";
    let top = accepted_keys(&format!("no_such_key = 1\n{device}"));
    let dev = accepted_keys(&format!("{device}no_such_key = 1\n"));
    assert!(
        top.contains("device") && dev.contains("socket"),
        "{top:?} {dev:?}"
    );
    same_keys(
        &documented_keys(&reference, "## Top level"),
        &top,
        "its top-level table",
    );
    same_keys(
        &documented_keys(&reference, "## [[device]]"),
        &dev,
        "its [[device]] table",
    );
    let example = reference
        .split_once("```toml\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .expect("docs/config.md has a complete example")
        .0;
    let example: toml::Table = toml::from_str(example).unwrap();
    let used: BTreeSet<String> = example.keys().cloned().collect();
    same_keys(&used, &top, "its example's top level");
    let used: BTreeSet<String> = example["device"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| d.as_table().unwrap().keys().cloned())
        .collect();
    same_keys(&used, &dev, "its example's [[device]] tables");
    // The example the Debian package installs reads too.
    let dist = repo().join("dist/node.example.toml");
    let out = common::vgrace(&["layout", "--config", dist.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The marker grammar itself: an unmarked block is refused, elisions match one or more lines.
#[test]
fn docs_markers_refuse_unmarked_blocks_and_match_elisions() {
    assert!(blocks(&["```text", "x", "```"]).is_err());
    assert!(blocks(&["<!-- output: vgrace layout -->", "", "```text"]).is_err());
    assert!(blocks(&["<!-- output: ls -->", "```text", "```"]).is_err());
    assert!(blocks(&["<!-- output(captured):  -->", "```text", "```"]).is_err());
    let b = blocks(&["<!-- output(captured): a guest -->", "```text", "x", "```"]).unwrap();
    assert_eq!(b[0].body, 2..3);
    assert_eq!(
        words(r#"qemu-args --x 'a b' "c\"d""#).unwrap(),
        ["qemu-args", "--x", "a b", "c\"d"]
    );
    assert!(shows(&["a", "...", "d"], &["a", "b", "c", "d"], true));
    assert!(!shows(&["a", "...", "d"], &["a", "d"], true));
    assert!(!shows(&["a", "...", "d"], &["a", "b", "c", "d"], false));
    assert!(!shows(&["a", "b"], &["a", "b", "c"], false));
}

/// README's contract: its first code block is the two commands a newcomer needs, the main job on
/// the embedded default and the whole test suite, and CI runs that same test command.
#[test]
fn readme_opens_with_the_serve_and_test_commands_ci_runs() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let first = readme
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .expect("README has a sh block")
        .0;
    let commands: Vec<&str> = first
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .collect();
    assert_eq!(
        commands,
        ["cargo run --release -- serve", "cargo test --workspace"]
    );
    let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l.trim() == "cargo test --workspace"),
        ".ci/run does not run README's test command"
    );
}
