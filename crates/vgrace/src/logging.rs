//! Logging that can never block or kill a thread that logs.
//!
//! Every log line goes into a bounded queue; one thread of its own writes the queue to stderr.
//! A full queue (stderr is a pipe nobody reads) drops the line and counts it; a write that
//! fails (stderr closed: `vgrace serve 2>&1 | head -2`) drops the line too. The count of
//! dropped lines is written, as one line of its own, as soon as stderr takes lines again.
//!
//! Before: the fmt layer wrote to stderr from the logging thread itself, so a full pipe blocked
//! a session (holding the device lock), and a closed one made the layer report its own write
//! error with `eprintln!`, which panics on EPIPE: the signal thread died logging "stopping"
//! and SIGTERM no longer stopped the process.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Log lines queued for stderr before new ones are dropped.
const QUEUE: usize = 4096;

enum Item {
    Line(Vec<u8>),
    /// Answered once every line queued before it has been written (or dropped).
    Flush(SyncSender<()>),
}

/// The producer side: cloned into every [`Handle`].
#[derive(Clone)]
struct Queue {
    tx: SyncSender<Item>,
    dropped: Arc<AtomicU64>,
}

static QUEUE_TX: OnceLock<Queue> = OnceLock::new();

/// Starts the writer thread and installs the subscriber (level from `RUST_LOG`, default info).
pub fn init() {
    let (tx, rx) = sync_channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let queue = Queue {
        tx,
        dropped: dropped.clone(),
    };
    let spawned = std::thread::Builder::new()
        .name("vgrace-log".into())
        .spawn(move || write_out(&rx, &dropped));
    if spawned.is_err() {
        // Without the writer no line could ever leave: log nothing rather than block.
        return;
    }
    let _ = QUEUE_TX.set(queue.clone());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || Handle {
            queue: queue.clone(),
        })
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // The layer would report its own write errors with eprintln!, which panics when stderr
        // is gone; the writer never fails anyway.
        .log_internal_errors(false)
        .try_init();
}

/// Waits up to `limit` for the lines logged so far to reach stderr (the last lines before an
/// exit); returns early, lines unwritten, when stderr does not take them.
pub fn flush(limit: Duration) {
    let Some(queue) = QUEUE_TX.get() else {
        return;
    };
    let (done_tx, done_rx) = sync_channel(1);
    if queue.tx.try_send(Item::Flush(done_tx)).is_ok() {
        let _ = done_rx.recv_timeout(limit);
    }
}

/// How many log lines were dropped so far (queue full or stderr failing).
pub fn dropped() -> u64 {
    QUEUE_TX
        .get()
        .map_or(0, |q| q.dropped.load(Ordering::Relaxed))
}

/// What the fmt layer writes one event into; hands the event to the queue without waiting.
struct Handle {
    queue: Queue,
}

impl Write for Handle {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.queue.tx.try_send(Item::Line(buf.to_vec())) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queue.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The writer thread: stderr's only writer among the log lines. It may block on a full pipe;
/// then the queue fills and lines are dropped, never waited for.
fn write_out(rx: &Receiver<Item>, dropped: &AtomicU64) {
    let mut reported = 0;
    for item in rx {
        let line = match item {
            Item::Line(l) => l,
            Item::Flush(done) => {
                let _ = done.try_send(());
                continue;
            }
        };
        let mut err = std::io::stderr().lock();
        let lost = dropped.load(Ordering::Relaxed);
        if lost > reported {
            let note = format!(
                "vgrace: {} log lines dropped (stderr full or closed)\n",
                lost - reported
            );
            if err.write_all(note.as_bytes()).is_ok() {
                reported = lost;
            }
        }
        if err.write_all(&line).is_err() {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
