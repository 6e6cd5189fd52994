//! `vgrace trace --follow`: lists new lines as the server writes them, across rotations.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::summary::Summary;

/// How often the end of the file is polled: the writer itself batches for a few ms, so this
/// keeps a followed trace within a fraction of a second of the device.
const POLL: Duration = Duration::from_millis(100);

/// Follows `path` until the process is interrupted. What is already in the file is read (for
/// the pairing of replies with requests) but not listed.
pub fn run(path: &Path, out: &mut impl Write) -> Result<()> {
    let mut summary = Summary::default();
    let mut reader = open(path)?;
    let mut ino = reader.get_ref().metadata()?.ino();
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
        if meta.ino() != ino || meta.len() < pos {
            // Lines written to the old file between the last read and the rename.
            list_new(&mut reader, &mut partial, &mut summary, out)?;
            match open(path) {
                Ok(r) => {
                    reader = r;
                    ino = reader.get_ref().metadata()?.ino();
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
