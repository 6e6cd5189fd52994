//! Starting a device's protocol trace (`serve --trace`, `trace = "FILE"` in the config): the
//! one place `serve` asks for its observer, so the serve loop stays unaware of traces.
//!
//! A trace file is appended to and rotated (FILE -> FILE.1, ...), so a trace pointed at the
//! wrong file damages it: appended lines corrupt a device's memory, a rotation renames a
//! device's backing file away and later overwrites it. [`check`] refuses, before anything is
//! created, every trace whose names (FILE and its rotated names) meet a backing file, a socket,
//! the control socket or another trace, by path and by device and inode. The trace writer
//! itself refuses symlinks, hard links and anything but a regular file when it opens FILE.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use vfu::server::observe::Observer;
use vfu::trace::{numbered, TraceLimits, TraceWriter};
use vgrace_device::Backing;

use crate::node_file::DeviceEntry;

/// The trace observer for `entry`, when it asks for one; errors name the file.
pub fn open(entry: &DeviceEntry) -> Result<Option<Arc<dyn Observer>>> {
    let Some(path) = &entry.trace else {
        return Ok(None);
    };
    let writer = TraceWriter::open(path, "vgrace", limits(entry))
        .with_context(|| format!("cannot trace {}", entry.socket.display()))?;
    tracing::info!("tracing {} to {}", entry.socket.display(), path.display());
    Ok(Some(writer))
}

fn limits(entry: &DeviceEntry) -> TraceLimits {
    TraceLimits {
        max_bytes: entry.trace_max_size,
        ..TraceLimits::default()
    }
}

/// A file the server owns or makes: compared with every trace name.
struct Spot {
    what: String,
    path: PathBuf,
    /// Device and inode, when the file exists.
    id: Option<(u64, u64)>,
}

impl Spot {
    fn new(what: String, path: &Path) -> Self {
        Self {
            what,
            path: normal(path),
            id: std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino())),
        }
    }

    fn same(&self, other: &Spot) -> bool {
        self.path == other.path || (self.id.is_some() && self.id == other.id)
    }
}

/// `path` made absolute, its directory resolved when it exists (symlinks, `..`), so two
/// spellings of one file compare equal even before the file exists.
fn normal(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => match std::fs::canonicalize(dir) {
            Ok(dir) => dir.join(name),
            Err(_) => abs,
        },
        _ => abs,
    }
}

/// Refuses, with one line, a trace size below [`MIN_MAX_BYTES`] and a trace whose file or
/// rotated names are a backing file, a socket (when `sockets`: serving on paths), the control
/// socket, or a name of another device's trace.
pub fn check(entries: &[DeviceEntry], control: Option<&Path>, sockets: bool) -> Result<()> {
    let mut spots = Vec::new();
    for e in entries {
        if sockets {
            spots.push(Spot::new(format!("the socket of {}", e.id), &e.socket));
        }
        if let Backing::File(path) = &e.config.backing {
            spots.push(Spot::new(format!("the backing file of {}", e.id), path));
        }
    }
    if let Some(path) = control {
        spots.push(Spot::new("the control socket".into(), path));
    }
    // Every trace's names, with the index of the device it belongs to.
    let mut names = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let Some(trace) = &e.trace else { continue };
        crate::node_file::check_max_size(e.trace_max_size).with_context(|| e.id.clone())?;
        let keep = limits(e).keep;
        names.push((i, Spot::new(format!("the trace of {}", e.id), trace)));
        for k in 1..=keep {
            let rotated = numbered(trace, k);
            let what = format!("the trace of {} (rotated)", e.id);
            names.push((i, Spot::new(what, &rotated)));
        }
    }
    // Two traces that meet are reported from the later device, whose line names the earlier.
    for (i, name) in &names {
        let owner = &entries[*i];
        let clash = spots.iter().find(|s| s.same(name)).or_else(|| {
            names
                .iter()
                .find(|(j, other)| j < i && other.same(name))
                .map(|(_, s)| s)
        });
        if let Some(spot) = clash {
            bail!(
                "{}: trace file {} would write {} ({}): refused",
                owner.id,
                name.path.display(),
                spot.what,
                spot.path.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn entries(text: &str) -> Vec<DeviceEntry> {
        crate::node_file::parse(text).unwrap()
    }

    #[test]
    fn rotated_trace_names_meeting_a_backing_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        // B's trace rotates onto A's backing file: b.trace.1 == a.mem.
        let text = format!(
            "[[device]]\nsocket = \"{d}/a.sock\"\nbacking = \"{d}/b.trace.1\"\n\
             [[device]]\nsocket = \"{d}/b.sock\"\ntrace = \"{d}/./b.trace\"\n"
        );
        let err = format!("{:#}", check(&entries(&text), None, true).unwrap_err());
        assert!(err.contains("the backing file of gpu0"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn traces_apart_from_every_other_file_pass() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let text = format!(
            "[[device]]\nsocket = \"{d}/a.sock\"\nbacking = \"{d}/a.mem\"\ntrace = \"{d}/a.trace\"\n\
             [[device]]\nsocket = \"{d}/b.sock\"\ntrace = \"{d}/b.trace\"\n"
        );
        check(&entries(&text), Some(&dir.path().join("c.sock")), true).unwrap();
    }
}
