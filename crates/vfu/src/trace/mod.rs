//! A protocol trace: every message in and out, and every connection, as one JSON line each, in
//! a size-bounded, rotated file. [`TraceWriter`] is an [`Observer`]; give it to
//! [`Server::with_observer`](crate::server::Server::with_observer).
//!
//! # Format (version 1)
//!
//! The first line of every file (rotated ones too) is a header; `start` places the trace in
//! wall time, and every other line's `t` is seconds since then, to the microsecond:
//!
//! ```text
//! {"trace":"vgrace","v":1,"start":"2025-01-31T12:00:00.123456Z"}
//! {"t":0.000412,"dir":"event","event":"connected","pid":4242,"uid":1000}
//! {"t":0.000530,"dir":"in","id":1,"cmd":"VERSION","size":59,"fds":0,"version":"0.2"}
//! {"t":0.000551,"dir":"out","id":1,"cmd":"VERSION","size":103,"fds":0,"us":21}
//! {"t":0.001002,"dir":"in","id":2,"cmd":"REGION_READ","size":32,"fds":0,"region":9,"offset":0,"count":4}
//! {"t":0.001010,"dir":"out","id":2,"cmd":"REGION_READ","size":16,"fds":0,"errno":"EINVAL","us":8}
//! {"t":0.002000,"dir":"in","id":3,"cmd":"REGION_WRITE","size":36,"fds":0,"region":0,"offset":16,"count":4}
//! {"t":0.002004,"dir":"out","id":3,"cmd":"REGION_WRITE","size":0,"fds":0,"us":4,"sent":false}
//! {"t":0.003000,"dir":"event","event":"disconnected","pid":4242,"uid":1000,"end":"Closed"}
//! {"t":0.004000,"dir":"event","event":"refused","pid":4243,"uid":1000,"why":"busy"}
//! {"t":0.005000,"dir":"note","dropped":17}
//! ```
//!
//! Fields that do not apply are omitted. `in`: `id` (msg_id), `cmd`, `size` (whole message),
//! `fds`, and the decoded key fields `region`, `irq`, `offset`, `count`, `flags`, `version`.
//! `out`: `id` and `cmd` of the request, `size` and `fds` of the reply, `errno` (error replies
//! only), `us` (arrival to reply), `sent: false` (No_reply messages only). `event`: `event`,
//! `pid`, `uid`, `end` (`Closed`, `Desync`, `Shutdown`, `Stalled`, `Dropped`, `Error` with
//! `error`) or `why` (`busy`, `queue-full`, `not-allowed`, `control`). `note`: `dropped`, the
//! lines lost because the writer fell behind or could not write (a full file system: the trace
//! pauses, retries every second, and resumes with this note when space returns).
//! [`line`](mod@line) holds the types, for readers.
//!
//! # Cost
//!
//! The session thread only copies the event into a bounded channel (`try_send`): a full channel
//! counts a drop instead of blocking the device. A writer thread formats the lines; it wakes at
//! most every few milliseconds and writes the whole batch, then flushes, so a reader following
//! the file sees lines promptly while a busy device costs one wake-up per batch, not per message.

mod file;
pub mod line;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::server::observe::{Event, Fields, Observer, ReplySent, Request};
use crate::server::{Peer, SessionEnd};
use crate::wire::{cmd, Header};

pub use file::numbered;
use file::Sink;
use line::{Dir, Line};

/// Default bound of a trace file: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// The smallest bound a trace file may have: room for the header and the longest line in
/// practice (a disconnection with its error chain) several times over. Below it, a file would
/// rotate at nearly every line and keep next to nothing.
pub const MIN_MAX_BYTES: u64 = 4 << 10;
/// How often a trace that cannot write (a full file system) tries again.
pub(crate) const RETRY: Duration = Duration::from_secs(1);
/// Default channel capacity between the session thread and the writer.
pub(crate) const DEFAULT_CAPACITY: usize = 4096;
/// How long the writer gathers lines before writing them: bounds its wake-ups to a few hundred
/// per second however busy the device is, and how stale a followed trace can be.
const BATCH: Duration = Duration::from_millis(5);

/// How big a trace may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceLimits {
    /// A file is rotated before it would exceed this many bytes.
    pub max_bytes: u64,
    /// How many rotated files (FILE.1 .. FILE.keep) are kept; 0 keeps none.
    pub keep: u32,
}

impl Default for TraceLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            keep: 1,
        }
    }
}

/// Why a trace could not be started or written.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be opened or created.
    #[error("cannot open the trace file {path}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The path is a symlink.
    #[error("the trace file {0} is a symlink (refused: it could point anywhere)")]
    Symlink(PathBuf),
    /// The path names something other than a regular file.
    #[error("the trace file {0} is not a regular file")]
    NotAFile(PathBuf),
    /// The file has other names (hard links): one may be a file the trace must not touch.
    #[error("the trace file {path} has {links} hard links (refused: another name may be a file the trace must not write)")]
    HardLink {
        /// The path.
        path: PathBuf,
        /// Its link count.
        links: u64,
    },
    /// The size limit cannot hold the header and a line.
    #[error("a trace file limit of {0} bytes is too small: at least {MIN_MAX_BYTES} bytes")]
    TooSmall(u64),
    /// Writing failed.
    #[error("cannot write the trace file {path}")]
    Write {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the trace writer thread")]
    Thread(#[source] std::io::Error),
}

/// What the session thread hands the writer: a copy of the event, no formatting.
enum Entry {
    In(Instant, Request),
    Out(Instant, ReplySent),
    Connected(Instant, Peer),
    Refused(Instant, Peer, &'static str),
    Disconnected(Instant, Peer, Result<SessionEnd, String>),
}

/// Writes a protocol trace (see the [module docs](self)). Dropping the last reference stops the
/// writer thread after it has written and flushed everything.
pub struct TraceWriter {
    tx: Option<SyncSender<Entry>>,
    /// Drops not yet written as a note.
    dropped: Arc<AtomicU64>,
    /// Every drop, noted or not.
    dropped_total: AtomicU64,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TraceWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceWriter")
            .field("dropped", &self.dropped_total())
            .finish_non_exhaustive()
    }
}

impl TraceWriter {
    /// Starts a trace in `path` (appending to an existing regular file; a new one is created
    /// 0600; a symlink is refused). `program` names the serving program in each header line.
    pub fn open(path: &Path, program: &str, limits: TraceLimits) -> Result<Arc<Self>, TraceError> {
        Self::open_with_capacity(path, program, limits, DEFAULT_CAPACITY)
    }

    /// [`open`](Self::open) with `capacity` entries between the device and the writer (at
    /// least 1): lines beyond it while the writer is busy are dropped and counted.
    pub fn open_with_capacity(
        path: &Path,
        program: &str,
        limits: TraceLimits,
        capacity: usize,
    ) -> Result<Arc<Self>, TraceError> {
        if limits.max_bytes < MIN_MAX_BYTES {
            return Err(TraceError::TooSmall(limits.max_bytes));
        }
        let start = Instant::now();
        let header = line::Header {
            trace: program.into(),
            v: line::VERSION,
            start: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
        };
        let mut header = serde_json::to_string(&header).unwrap_or_default();
        header.push('\n');
        let sink = Sink::open(path, limits, header)?;
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            sink,
            start,
            dropped: dropped.clone(),
            path: path.to_path_buf(),
            stalled: None,
            quiet_until: None,
            batch_limit: capacity.max(1),
            buf: Vec::with_capacity(256),
        };
        let thread = std::thread::Builder::new()
            .name("vfu-trace".into())
            .spawn(move || writer.run(&rx))
            .map_err(TraceError::Thread)?;
        Ok(Arc::new(Self {
            tx: Some(tx),
            dropped,
            dropped_total: AtomicU64::new(0),
            thread: Some(thread),
        }))
    }

    /// Lines dropped since the trace started because the writer fell behind.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    fn send(&self, entry: Entry) {
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_)) = tx.try_send(entry) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.dropped_total.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Observer for TraceWriter {
    fn observe(&self, event: &Event<'_>) {
        let now = Instant::now();
        let entry = match event {
            Event::Request(r) => Entry::In(now, **r),
            Event::Reply(r) => Entry::Out(now, **r),
            Event::Connected(p) => Entry::Connected(now, *p),
            Event::Refused(p, why) => Entry::Refused(now, *p, why.name()),
            Event::Disconnected(p, end) => {
                Entry::Disconnected(now, *p, end.map_err(|e| crate::error::error_chain(e)))
            }
        };
        self.send(entry);
    }
}

impl Drop for TraceWriter {
    fn drop(&mut self) {
        // Closing the channel ends the writer's loop once it has written what is queued.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A trace that cannot write: when to try again and how many lines were lost so far.
struct Stall {
    retry_at: Instant,
    lost: u64,
    /// This pause was logged (so its end is too).
    logged: bool,
}

/// After a pause is logged, further pauses stay quiet this long: a file system that keeps
/// filling up costs a log line a minute, not one per retry.
const QUIET: Duration = Duration::from_secs(60);

/// The writer thread's state.
struct Writer {
    sink: Sink,
    start: Instant,
    dropped: Arc<AtomicU64>,
    path: PathBuf,
    /// Set while writes fail: lines are counted as lost (the device must not notice) until a
    /// retry succeeds.
    stalled: Option<Stall>,
    /// No pause is logged before this.
    quiet_until: Option<Instant>,
    /// At most this many entries per batch, so a flush happens even under constant load.
    batch_limit: usize,
    buf: Vec<u8>,
}

impl Writer {
    fn run(mut self, rx: &Receiver<Entry>) {
        while let Ok(first) = rx.recv() {
            self.write(&first);
            // Let a batch gather: one wake-up per BATCH rather than one per message.
            std::thread::sleep(BATCH);
            // Behind (a whole batch limit was queued): go on writing without sleeping again.
            while self.write_batch(rx) == self.batch_limit {}
        }
        // The channel is closed and empty: note drops since the last batch, flush.
        self.write_batch(rx);
    }

    /// Writes what is queued (at most the batch limit), notes drops, flushes; returns how many
    /// entries it wrote.
    fn write_batch(&mut self, rx: &Receiver<Entry>) -> usize {
        let mut n = 0;
        for entry in rx.try_iter().take(self.batch_limit) {
            self.write(&entry);
            n += 1;
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let mut note = Line::new(self.since(Instant::now()), Dir::Note);
            note.dropped = Some(dropped);
            self.put(&note);
        }
        self.io(Sink::flush);
        n
    }

    fn since(&self, at: Instant) -> f64 {
        let us = at.saturating_duration_since(self.start).as_micros();
        // Exact below 2^53 µs (285 years).
        #[allow(clippy::cast_precision_loss)]
        let us = us as f64;
        us / 1e6
    }

    fn write(&mut self, entry: &Entry) {
        let line = self.line_of(entry);
        self.put(&line);
    }

    fn put(&mut self, line: &Line) {
        self.buf.clear();
        if serde_json::to_writer(&mut self.buf, line).is_err() {
            return;
        }
        self.buf.push(b'\n');
        let buf = std::mem::take(&mut self.buf);
        if !self.io(|s| s.write_line(&buf)) {
            if let Some(stall) = &mut self.stalled {
                stall.lost += 1;
            }
        }
        self.buf = buf;
    }

    /// Runs a file operation unless the trace is paused; false when it did not happen. A
    /// failure pauses the trace (logged once); a paused trace retries every [`RETRY`] by
    /// flushing what its buffer still holds, and on success notes how many lines it lost.
    fn io(&mut self, op: impl FnOnce(&mut Sink) -> std::io::Result<()>) -> bool {
        if let Some(stall) = &mut self.stalled {
            let now = Instant::now();
            if now < stall.retry_at {
                return false;
            }
            if self.sink.flush().is_err() {
                stall.retry_at = now + RETRY;
                return false;
            }
            let (lost, logged) = (stall.lost, stall.logged);
            self.stalled = None;
            if logged {
                tracing::info!(path = %self.path.display(), lost, "trace resumed");
            }
            let mut note = Line::new(self.since(now), Dir::Note);
            note.dropped = Some(lost);
            self.put(&note);
            if self.stalled.is_some() {
                return false;
            }
        }
        match op(&mut self.sink) {
            Ok(()) => true,
            Err(e) => {
                let now = Instant::now();
                let logged = !matches!(self.quiet_until, Some(q) if now < q);
                if logged {
                    tracing::warn!(
                        path = %self.path.display(),
                        "trace paused: cannot write: {e} (retrying every {RETRY:?}; lost lines \
                         are counted in a note when it resumes)"
                    );
                    self.quiet_until = Some(now + QUIET);
                }
                self.stalled = Some(Stall {
                    retry_at: now + RETRY,
                    lost: 0,
                    logged,
                });
                false
            }
        }
    }

    fn line_of(&self, entry: &Entry) -> Line {
        match entry {
            Entry::In(at, r) => {
                let mut l = self.message(*at, Dir::In, &r.header);
                l.size = Some(u64::from(r.header.msg_size));
                l.fds = Some(r.fds as u64);
                fields(&mut l, &r.fields);
                l
            }
            Entry::Out(at, r) => {
                let mut l = self.message(*at, Dir::Out, &r.request);
                l.size = Some(r.size as u64);
                l.fds = Some(r.fds as u64);
                l.errno = r.errno.map(|e| Cow::Owned(format!("{e:?}")));
                l.us = Some(u64::try_from(r.elapsed.as_micros()).unwrap_or(u64::MAX));
                l.sent = (!r.sent).then_some(false);
                l
            }
            Entry::Connected(at, p) => self.event(*at, "connected", p),
            Entry::Refused(at, p, why) => {
                let mut l = self.event(*at, "refused", p);
                l.why = Some(Cow::Borrowed(why));
                l
            }
            Entry::Disconnected(at, p, end) => {
                let mut l = self.event(*at, "disconnected", p);
                match end {
                    Ok(how) => l.end = Some(Cow::Borrowed(how.name())),
                    Err(e) => {
                        l.end = Some(Cow::Borrowed("Error"));
                        l.error = Some(e.clone());
                    }
                }
                l
            }
        }
    }

    fn message(&self, at: Instant, dir: Dir, h: &Header) -> Line {
        let mut l = Line::new(self.since(at), dir);
        l.id = Some(h.msg_id);
        l.cmd = Some(Cow::Borrowed(cmd::name(h.cmd)));
        l
    }

    fn event(&self, at: Instant, what: &'static str, p: &Peer) -> Line {
        let mut l = Line::new(self.since(at), Dir::Event);
        l.event = Some(Cow::Borrowed(what));
        l.pid = p.pid;
        l.uid = p.uid;
        l
    }
}

fn fields(l: &mut Line, f: &Fields) {
    l.region = f.region;
    l.irq = f.irq;
    l.offset = f.offset;
    l.count = f.count;
    l.flags = f.flags;
    l.version = f.version.map(|(major, minor)| format!("{major}.{minor}"));
}
