//! One control connection: read request lines (bounded), answer each, or stream events.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt};
use serde_json::{json, Value};
use tracing::{debug, warn};
use vfu::server::Shutdown;

use super::protocol::{self, Request, MAX_LINE};
use super::{verbs, Plane};

/// How often a blocked read or an idle follower looks at the shutdown flag.
const TICK: Duration = Duration::from_millis(250);
/// A client that leaves a response unread this long is dropped (it only blocks its own thread).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers with an error line and closes.
pub fn refuse(mut stream: UnixStream, message: &str) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = write_line(&mut stream, &protocol::error(None, message));
}

/// Serves one control client until it hangs up or the server stops.
pub fn serve(stream: UnixStream, plane: &Plane, shutdown: &Shutdown) {
    let uid = getsockopt(&stream, sockopt::PeerCredentials)
        .ok()
        .map(|c| c.uid());
    if let Some(allowed) = &plane.allow_uids {
        if !uid.is_some_and(|u| allowed.contains(&u)) {
            warn!(?uid, "refused a control client whose uid is not allowed");
            refuse(stream, "your uid is not allowed (--allow-uid)");
            return;
        }
    }
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(TICK)).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return;
    }
    let mut lines = Lines::new(&stream);
    let mut out = &stream;
    // A connection holds one of the few slots: one that sends no request for the idle timeout
    // (silent, or stopped halfway through a line) gives it back.
    let mut last_request = Instant::now();
    loop {
        let line = match lines.next(shutdown, last_request + plane.idle_timeout) {
            Next::Line(l) => l,
            Next::TooLong => {
                let msg = format!("request line longer than {MAX_LINE} bytes: skipped");
                if write_line(&mut out, &protocol::error(None, &msg)).is_err() {
                    return;
                }
                continue;
            }
            Next::Idle => {
                let msg = format!(
                    "no request for {}: closing the connection",
                    humantime::format_duration(plane.idle_timeout)
                );
                debug!("control client idle: closing");
                let _ = write_line(&mut out, &protocol::error(None, &msg));
                return;
            }
            Next::End => return,
        };
        last_request = Instant::now();
        let (id, request) = protocol::parse(&line);
        let response = match request {
            Err(f) => protocol::error(id, &f.0),
            Ok(Request::Events {
                device,
                follow: true,
            }) => {
                // A follow of an unknown device is an error like any other: the connection
                // stays usable.
                match device.as_deref().map(|d| verbs::find(plane, d)).transpose() {
                    Ok(device) => {
                        let device = device.map(|m| m.id.clone());
                        follow(&stream, plane, shutdown, id, device.as_deref());
                        return;
                    }
                    Err(f) => protocol::error(id, &f.0),
                }
            }
            Ok(r) => verbs::handle(plane, id, &r),
        };
        if let Err(e) = write_line(&mut out, &response) {
            debug!("control client gone: {e}");
            return;
        }
    }
}

fn write_line(out: &mut impl Write, value: &Value) -> std::io::Result<()> {
    let mut text = value.to_string();
    text.push('\n');
    out.write_all(text.as_bytes())
}

/// Streams events (of the device with id `device`, or all) to the client until it hangs up or
/// the server stops.
fn follow(
    stream: &UnixStream,
    plane: &Plane,
    shutdown: &Shutdown,
    id: Option<Value>,
    device: Option<&str>,
) {
    let mut out = stream;
    let follower = plane.events.follow();
    if write_line(&mut out, &protocol::ok(id, json!({}))).is_err() {
        return;
    }
    let mut reported_lost = 0;
    loop {
        let event = match follower.events.recv_timeout(TICK) {
            Ok(e) => Some(e),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let lost = follower.lost.load(Ordering::Relaxed);
        if lost > reported_lost {
            let note = json!({"v": protocol::VERSION, "event": {"kind": "lost", "count": lost - reported_lost}});
            reported_lost = lost;
            if write_line(&mut out, &note).is_err() {
                return;
            }
        }
        match event {
            Some(e) if device.is_none_or(|d| e["device"] == d) => {
                let line = json!({"v": protocol::VERSION, "event": e});
                if write_line(&mut out, &line).is_err() {
                    return;
                }
            }
            Some(_) => {}
            None if shutdown.is_triggered() || hung_up(stream) => return,
            None => {}
        }
    }
}

fn hung_up(stream: &UnixStream) -> bool {
    let flags = PollFlags::from_bits_retain(libc::POLLRDHUP) | PollFlags::POLLHUP;
    let mut fds = [PollFd::new(stream.as_fd(), flags)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// What [`Lines::next`] found.
enum Next {
    Line(Vec<u8>),
    /// A line past [`MAX_LINE`], skipped up to its newline.
    TooLong,
    /// No complete line before the deadline.
    Idle,
    /// The client hung up, an error, or the server stops.
    End,
}

/// Newline-separated lines of at most [`MAX_LINE`] bytes; blank lines are skipped. Linear in what arrives: each byte is
/// scanned for a newline once, and the consumed prefix is dropped once per read, not once per
/// line (before, a drain per line made 4 MiB of newlines cost seconds of CPU).
struct Lines<'a> {
    stream: &'a UnixStream,
    buf: Vec<u8>,
    /// Where the next line starts in `buf`.
    start: usize,
    /// `buf[start..scanned]` holds no newline.
    scanned: usize,
    /// Inside a line that was too long: drop bytes up to its newline.
    skipping: bool,
}

impl<'a> Lines<'a> {
    fn new(stream: &'a UnixStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            skipping: false,
        }
    }

    /// The next line, waiting for it until `deadline`.
    fn next(&mut self, shutdown: &Shutdown, deadline: Instant) -> Next {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let at = self.scanned + pos;
                let line = &self.buf[self.start..at];
                let blank = line.iter().all(u8::is_ascii_whitespace);
                let line = (!blank && !self.skipping).then(|| line.to_vec());
                self.start = at + 1;
                self.scanned = self.start;
                if self.skipping {
                    self.skipping = false;
                    return Next::TooLong;
                }
                // Blank lines are skipped here, without a trip through the caller.
                if let Some(line) = line {
                    return Next::Line(line);
                }
                continue;
            }
            // No newline in what is buffered: drop the consumed lines, then read more.
            self.buf.drain(..self.start);
            self.start = 0;
            self.scanned = self.buf.len();
            if self.buf.len() > MAX_LINE {
                self.buf.clear();
                self.scanned = 0;
                self.skipping = true;
            }
            if Instant::now() >= deadline {
                return Next::Idle;
            }
            match (&mut &*self.stream).read(&mut chunk) {
                Ok(0) => return Next::End,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    if shutdown.is_triggered() {
                        return Next::End;
                    }
                }
                Err(_) => return Next::End,
            }
        }
    }
}
