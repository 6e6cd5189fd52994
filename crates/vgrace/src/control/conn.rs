//! One control connection: read request lines (bounded), answer each, or stream events.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt};
use serde_json::{json, Value};
use tracing::{debug, warn};
use vfu::server::Shutdown;

use super::protocol::{self, MAX_LINE};
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
    loop {
        let line = match lines.next(shutdown) {
            Next::Line(l) => l,
            Next::TooLong => {
                let msg = format!("request line longer than {MAX_LINE} bytes: skipped");
                if write_line(&mut out, &protocol::error(None, &msg)).is_err() {
                    return;
                }
                continue;
            }
            Next::End => return,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (id, request) = protocol::parse(&line);
        let response = match request {
            Err(f) => protocol::error(id, &f.0),
            Ok(r) if r.op == "events" && r.follow => {
                follow(&stream, plane, shutdown, id, r.device.as_deref());
                return;
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

/// Streams events to the client until it hangs up or the server stops.
fn follow(
    stream: &UnixStream,
    plane: &Plane,
    shutdown: &Shutdown,
    id: Option<Value>,
    device: Option<&str>,
) {
    let mut out = stream;
    let device = match device.map(|d| verbs::find(plane, d)).transpose() {
        Ok(d) => d.map(|m| m.id.clone()),
        Err(f) => {
            let _ = write_line(&mut out, &protocol::error(id, &f.0));
            return;
        }
    };
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
            Some(e) if device.as_deref().is_none_or(|d| e["device"] == d) => {
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
    /// The client hung up, an error, or the server stops.
    End,
}

/// Newline-separated lines of at most [`MAX_LINE`] bytes.
struct Lines<'a> {
    stream: &'a UnixStream,
    buf: Vec<u8>,
    /// Inside a line that was too long: drop bytes up to its newline.
    skipping: bool,
}

impl<'a> Lines<'a> {
    fn new(stream: &'a UnixStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            skipping: false,
        }
    }

    fn next(&mut self, shutdown: &Shutdown) -> Next {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=at).take(at).collect();
                if self.skipping {
                    self.skipping = false;
                    return Next::TooLong;
                }
                return Next::Line(line);
            }
            if self.buf.len() > MAX_LINE {
                self.buf.clear();
                self.skipping = true;
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
