//! Standard output, marked so that a closed stdout (`vgrace layout | head`) can be told from
//! any other broken pipe: only a reader of stdout going away is a quiet exit 0. A control or
//! vfio-user socket that hangs up is an error like any other (before, both were one rule, and
//! `vgrace ctl` reported success, silently, for a request the server never took).

use std::io::{StdoutLock, Write};

/// The exit codes, for `--help` (README.md says the same).
pub const EXIT_CODES: &str = "Exit codes:
  0  done (for serve: stopped by a signal, everything shut down in time)
  1  the request failed or was refused: an error, a check that failed, a control request the
     server refused or never took, a serve that had to stop without its stuck threads
  2  usage: bad flags or values";

/// The marker a failed stdout write carries inside its `io::Error`.
#[derive(Debug, thiserror::Error)]
#[error("standard output is closed")]
pub struct StdoutClosed;

/// Locked stdout whose broken-pipe errors carry [`StdoutClosed`].
pub struct Stdout(StdoutLock<'static>);

/// Stdout, locked, for one command's output.
pub fn stdout() -> Stdout {
    Stdout(std::io::stdout().lock())
}

fn mark(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::io::Error::new(std::io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(mark)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(mark)
    }
}

/// Whether `e` comes from writing to a stdout nobody reads any more.
pub fn is_stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<StdoutClosed>()
            || c.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_marked_broken_pipe_is_a_closed_stdout() {
        let socket = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(!is_stdout_closed(
            &anyhow::Error::new(socket).context("control socket: cannot send")
        ));
        let out = mark(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_stdout_closed(&anyhow::Error::new(out).context("print")));
    }
}
