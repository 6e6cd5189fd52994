//! The trace file: opened safely (0600, no symlinks, no hard links, regular files only),
//! written through a buffer, and rotated at its size limit.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{TraceError, TraceLimits};

/// The open trace file and how much of the size limit it has used.
pub(super) struct Sink {
    path: PathBuf,
    limits: TraceLimits,
    out: BufWriter<File>,
    /// Bytes in the current file, including what is still buffered.
    written: u64,
    /// The header line (with its newline), repeated at the top of each rotated file.
    header: String,
}

impl Sink {
    /// Opens (or appends to) the file at `path` and writes the header line.
    pub(super) fn open(
        path: &Path,
        limits: TraceLimits,
        header: String,
    ) -> Result<Self, TraceError> {
        let file = open_file(path)?;
        let written = file
            .metadata()
            .map_err(|source| TraceError::Open {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        let mut sink = Self {
            path: path.to_path_buf(),
            limits,
            // Large enough that a busy device's batch is a few write(2)s.
            out: BufWriter::with_capacity(64 << 10, file),
            written,
            header,
        };
        sink.write_header().map_err(|source| TraceError::Write {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(sink)
    }

    fn write_header(&mut self) -> std::io::Result<()> {
        self.out.write_all(self.header.as_bytes())?;
        self.written += self.header.len() as u64;
        Ok(())
    }

    /// Writes one line (with its newline), rotating first when it would take the file past
    /// the limit. A file holding only its header is never rotated, so a line longer than the
    /// limit still gets written rather than rotating forever.
    pub(super) fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let len = line.len() as u64;
        if self.written.saturating_add(len) > self.limits.max_bytes
            && self.written > self.header.len() as u64
        {
            self.rotate()?;
        }
        self.out.write_all(line)?;
        self.written += len;
        Ok(())
    }

    /// Pushes buffered lines to the file, so a reader following it sees them.
    pub(super) fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// FILE.(keep-1) -> FILE.keep, ..., FILE -> FILE.1 (or FILE removed when keep is 0), then a
    /// new FILE starting with the header.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        let keep = self.limits.keep;
        for k in (1..keep).rev() {
            match std::fs::rename(numbered(&self.path, k), numbered(&self.path, k + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        // NotFound: a rotation whose new file could not be opened already moved it away.
        let moved = if keep == 0 {
            std::fs::remove_file(&self.path)
        } else {
            std::fs::rename(&self.path, numbered(&self.path, 1))
        };
        match moved {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let file = open_file(&self.path).map_err(|e| match e {
            TraceError::Open { source, .. } | TraceError::Write { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        })?;
        self.out = BufWriter::with_capacity(64 << 10, file);
        self.written = 0;
        self.write_header()
    }
}

/// `path` with `.k` appended (`trace.json` -> `trace.json.1`).
pub fn numbered(path: &Path, k: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{k}"));
    PathBuf::from(s)
}

/// Opens `path` for appending, creating it 0600. A symlink is refused (O_NOFOLLOW): someone
/// could otherwise point the trace at a file the server may write but should not. A hard link
/// (more than one name) is refused for the same reason: the other name may be anything, a
/// device's backing file included. Anything but a regular file is refused too (O_NONBLOCK keeps
/// a FIFO from blocking the open).
fn open_file(path: &Path) -> Result<File, TraceError> {
    let open_err = |source| TraceError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                TraceError::Symlink(path.to_path_buf())
            } else {
                open_err(e)
            }
        })?;
    let meta = file.metadata().map_err(open_err)?;
    if !meta.file_type().is_file() {
        return Err(TraceError::NotAFile(path.to_path_buf()));
    }
    if meta.nlink() > 1 {
        return Err(TraceError::HardLink {
            path: path.to_path_buf(),
            links: meta.nlink(),
        });
    }
    // Not needed for a regular file; cleared so writes behave as plain blocking writes.
    let _ = nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_APPEND),
    );
    Ok(file)
}
