//! `vgrace trace --follow`: lists new lines as the server writes them, across rotations.
//!
//! A rotation renames FILE to FILE.1 (FILE.1 to FILE.2, ...) and starts a new FILE. When the
//! file at the path is no longer the one being read, the old one is read to its end (it is
//! still open), then every rotated file newer than it, found by device and inode among
//! FILE.1, FILE.2, ..., oldest first, then the new FILE: several rotations within one poll lose
//! no file that still exists.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use vfu::trace::numbered;

use super::summary::Summary;

/// How far the rotated names are searched (FILE.1 .. FILE.MAX_ROTATED).
const MAX_ROTATED: u32 = 1000;

/// How often the end of the file is polled: the writer itself batches for a few ms, so this
/// keeps a followed trace within a fraction of a second of the device.
const POLL: Duration = Duration::from_millis(100);

/// Follows `path` until the process is interrupted. What is already in the file is read (for
/// the pairing of replies with requests) but not listed.
pub fn run(path: &Path, out: &mut impl Write) -> Result<()> {
    let mut summary = Summary::default();
    let mut reader = open(path)?;
    let mut ino = identity(reader.get_ref())?;
    let mut partial = Vec::new();
    // Skip the backlog silently: the point is what happens from now on.
    drain(&mut reader, &mut partial, |t| {
        summary.feed(t);
    })?;
    writeln!(out, "following {} (interrupt to stop)", path.display())?;
    out.flush()?;
    loop {
        list_new(&mut reader, &mut partial, &mut summary, out)?;
        std::thread::sleep(POLL);
        // Rotated (a new file at the path) or truncated: what the old file still held has
        // been read above, so start the new one from its top.
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        let pos = reader.stream_position()?;
        let rotated = (meta.dev(), meta.ino()) != ino;
        if rotated || meta.len() < pos {
            // Lines written to the old file between the last read and the rename.
            list_new(&mut reader, &mut partial, &mut summary, out)?;
            let newer = if rotated {
                rotated_after(path, ino)
            } else {
                Vec::new()
            };
            match open(path) {
                Ok(r) => {
                    // Files rotated out since (two rotations within one poll): read in full.
                    for file in newer {
                        let mut old = BufReader::new(file);
                        partial.clear();
                        list_new(&mut old, &mut partial, &mut summary, out)?;
                    }
                    reader = r;
                    ino = identity(reader.get_ref())?;
                    partial.clear();
                }
                // Gone again between the stat and the open: try at the next poll.
                Err(_) => continue,
            }
        }
    }
}

/// Lists the lines available now, flushing so a pipe sees them at once.
fn list_new(
    reader: &mut BufReader<File>,
    partial: &mut Vec<u8>,
    summary: &mut Summary,
    out: &mut impl Write,
) -> Result<()> {
    let mut printed = Ok(());
    drain(reader, partial, |t| {
        if let Some(listed) = summary.feed(t) {
            if printed.is_ok() {
                printed = writeln!(out, "{listed}");
            }
        }
    })?;
    printed?;
    out.flush()?;
    Ok(())
}

/// Device and inode: which file a reader has open.
fn identity(file: &File) -> Result<(u64, u64)> {
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

/// The rotated files that came after the file `seen` (now renamed or gone), oldest first: the
/// names below the one `seen` now has, or every rotated name when it has none left (rotation
/// pushed it out, so everything still there is newer).
fn rotated_after(path: &Path, seen: (u64, u64)) -> Vec<File> {
    let mut newer = Vec::new();
    for k in 1..=MAX_ROTATED {
        let Ok(file) = File::open(numbered(path, k)) else {
            break;
        };
        match identity(&file) {
            Ok(id) if id == seen => break,
            Ok(_) => newer.push(file),
            Err(_) => break,
        }
    }
    newer.reverse();
    newer
}

fn open(path: &Path) -> Result<BufReader<File>> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(BufReader::new(file))
}

/// Reads every complete line available now; a line still being written stays in `partial`.
fn drain(
    reader: &mut BufReader<File>,
    partial: &mut Vec<u8>,
    mut each: impl FnMut(&str),
) -> Result<()> {
    loop {
        if reader.read_until(b'\n', partial)? == 0 {
            return Ok(());
        }
        if partial.last() != Some(&b'\n') {
            // End of the file in the middle of a line: wait for the rest.
            return Ok(());
        }
        each(String::from_utf8_lossy(partial).trim_end_matches(['\n', '\r']));
        partial.clear();
    }
}
