//! The accept loop, on a thread of its own so that nobody waits unseen on the device's session:
//! one client at a time is handed to the session thread. Anyone who connects meanwhile waits in
//! a short queue; once its first message (VERSION) is complete it gets an immediate EBUSY error
//! reply and is closed, unless the client holding the device has already hung up (a VMM that
//! reconnects at once), in which case it is served as soon as the seat is free. A full fd table
//! (EMFILE) backs the loop off instead of spinning.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{getsockopt, recv, send, sockopt, MsgFlags};
use tracing::{info, warn};

use super::observe::{Event, Observer, Refusal};
use super::shutdown::Shutdown;
use super::Controls;
use crate::error::Error;
use crate::sync::relock;
use crate::wire::{Decode, Header, HEADER_SIZE};

/// Who is at the other end of a connection (SO_PEERCRED), for log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Process id, when the kernel knows it.
    pub pid: Option<i32>,
    /// User id, when the kernel knows it.
    pub uid: Option<u32>,
}

impl Peer {
    fn of(stream: &UnixStream) -> Self {
        match getsockopt(stream, sockopt::PeerCredentials) {
            Ok(c) => Self {
                pid: Some(c.pid()),
                uid: Some(c.uid()),
            },
            Err(_) => Self {
                pid: None,
                uid: None,
            },
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.pid, self.uid) {
            (Some(pid), Some(uid)) => write!(f, "pid {pid} uid {uid}"),
            _ => write!(f, "an unknown peer"),
        }
    }
}

/// Who holds the device: taken by the acceptor when it hands a client over, released by the
/// session thread when that client is gone (which wakes the acceptor through `freed`).
#[derive(Debug)]
pub(crate) struct Seat {
    holder: Mutex<Option<(Peer, Arc<OwnedFd>)>>,
    freed: EventFd,
}

impl Seat {
    pub(crate) fn new() -> Result<Self, Error> {
        Ok(Self {
            holder: Mutex::new(None),
            freed: EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Peer, Arc<OwnedFd>)>> {
        relock(&self.holder)
    }

    /// Takes the seat for `peer`, keeping `conn` (a duplicate of its socket) to see it hang
    /// up; false when the seat is held.
    fn take(&self, peer: Peer, conn: &Arc<OwnedFd>) -> bool {
        let mut h = self.lock();
        if h.is_some() {
            return false;
        }
        *h = Some((peer, conn.clone()));
        true
    }

    /// The session thread is done with its client.
    pub(crate) fn release(&self) {
        *self.lock() = None;
        let _ = self.freed.write(1);
    }

    /// The holder, and whether its client has already hung up (its session is about to end).
    fn holder(&self) -> Option<(Peer, bool)> {
        let h = self.lock();
        let (peer, fd) = h.as_ref()?;
        let mut p = [PollFd::new(
            fd.as_fd(),
            PollFlags::from_bits_retain(libc::POLLRDHUP) | PollFlags::POLLHUP | PollFlags::POLLERR,
        )];
        let gone = matches!(poll(&mut p, PollTimeout::ZERO), Ok(n) if n > 0);
        Some((*peer, gone))
    }
}

/// Most clients waiting while the device is held; more are closed at once.
const MAX_WAITING: usize = 16;
/// How long a waiting client is kept: one that sent nothing by then is closed, one whose
/// VERSION waits for a hung-up holder to finish is refused with EBUSY.
const WAIT_LIMIT: Duration = Duration::from_secs(2);
/// Back-off bounds after accept fails for lack of fds or memory.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Log lines about a repeating condition (fd shortage, a full queue): one per this interval.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// EBUSY refusals name both peers; a client connecting in a loop gets one line per second.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);
/// A waiting client that sent part of a header is looked at again after this long (its socket
/// stays readable, since the bytes are only peeked at, and must not spin the loop).
const PARTIAL_RECHECK: Duration = Duration::from_millis(50);

/// Lets a repeating condition log once per interval, counting what it kept quiet.
#[derive(Debug)]
struct Throttle {
    every: Duration,
    last: Option<Instant>,
    quiet: u64,
}

impl Throttle {
    fn every(every: Duration) -> Self {
        Self {
            every,
            last: None,
            quiet: 0,
        }
    }

    /// `Some(times kept quiet since the last line)` when a line may be written now.
    fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            self.quiet += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.quiet))
    }
}

/// A client handed to the session thread: its socket, who it is, and the duplicate of its
/// socket that the seat and the shutdown registry hold (so a reused fd number is never hit).
pub(crate) struct Client {
    pub stream: UnixStream,
    pub peer: Peer,
    pub conn: Arc<OwnedFd>,
}

/// What became of an attempt to seat a client.
enum Seating {
    /// Handed to the session thread.
    Seated,
    /// The seat is held (or no fd was left to seat it): the client comes back.
    NotNow(UnixStream),
    /// The session thread is gone.
    Stopped,
}

/// A client that connected while the device was held.
struct Waiter {
    stream: UnixStream,
    peer: Peer,
    deadline: Instant,
    /// Its first header is complete (peeked, not consumed: it can still be handed over).
    header: Option<Header>,
    /// Part of a header is in: not polled again before this.
    recheck: Option<Instant>,
}

/// Who watches the accept loop: the observer hears of refusals, the controls may ask for some.
#[derive(Clone, Copy)]
pub(crate) struct Watch<'a> {
    pub observer: Option<&'a dyn Observer>,
    pub controls: &'a Controls,
}

impl Watch<'_> {
    fn refused(&self, peer: Peer, why: Refusal) {
        if let Some(o) = self.observer {
            o.observe(&Event::Refused(peer, why));
        }
    }
}

/// The accept loop's state.
pub(crate) struct Acceptor<'a> {
    watch: Watch<'a>,
    listener: &'a UnixListener,
    shutdown: &'a Shutdown,
    allow_uids: Option<&'a [u32]>,
    seat: &'a Seat,
    handoff: SyncSender<Client>,
    waiting: VecDeque<Waiter>,
    backoff: Option<(Instant, Duration)>,
    fd_shortage: Throttle,
    overflow: Throttle,
    refusals: Throttle,
}

impl<'a> Acceptor<'a> {
    pub(crate) fn new(
        listener: &'a UnixListener,
        shutdown: &'a Shutdown,
        allow_uids: Option<&'a [u32]>,
        seat: &'a Seat,
        handoff: SyncSender<Client>,
        watch: Watch<'a>,
    ) -> Self {
        Self {
            watch,
            listener,
            shutdown,
            allow_uids,
            seat,
            handoff,
            waiting: VecDeque::new(),
            backoff: None,
            fd_shortage: Throttle::every(LOG_EVERY),
            overflow: Throttle::every(LOG_EVERY),
            refusals: Throttle::every(REFUSAL_LOG_EVERY),
        }
    }

    /// Runs until shutdown (Ok), until accepting fails for good, or until the session thread is
    /// gone.
    pub(crate) fn run(mut self) -> Result<(), Error> {
        loop {
            if self.shutdown.is_triggered() {
                return Ok(());
            }
            let now = Instant::now();
            let backing_off = self.backoff.is_some_and(|(until, _)| until > now);
            let (listener_ready, ready) = self.wait(now, backing_off)?;
            if self.shutdown.is_triggered() {
                return Ok(());
            }
            self.read_waiters(&ready);
            if !self.settle_waiters(backing_off) {
                return Ok(());
            }
            if listener_ready && !self.accept_one()? {
                return Ok(());
            }
        }
    }

    /// Polls the shutdown event, the seat's freed event, the listener (unless backing off) and
    /// the waiting clients whose header is not complete yet. Returns whether the listener is
    /// readable and, per waiter, whether it is.
    fn wait(&self, now: Instant, backing_off: bool) -> Result<(bool, Vec<bool>), Error> {
        let mut fds = vec![
            PollFd::new(self.shutdown.event(), PollFlags::POLLIN),
            PollFd::new(self.seat.freed.as_fd(), PollFlags::POLLIN),
        ];
        let listener_at = (!backing_off).then(|| {
            fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let mut waiter_at = Vec::with_capacity(self.waiting.len());
        for w in &self.waiting {
            if w.header.is_none() && w.recheck.is_none_or(|t| t <= now) {
                fds.push(PollFd::new(w.stream.as_fd(), PollFlags::POLLIN));
                waiter_at.push(Some(fds.len() - 1));
            } else {
                waiter_at.push(None);
            }
        }
        let mut wake = self
            .waiting
            .iter()
            .flat_map(|w| [Some(w.deadline), w.recheck])
            .flatten()
            .min();
        if let Some((until, _)) = self.backoff.filter(|_| backing_off) {
            wake = Some(wake.map_or(until, |w| w.min(until)));
        }
        let timeout = match wake {
            None => PollTimeout::NONE,
            Some(w) => {
                let ms = w
                    .saturating_duration_since(now)
                    .as_millis()
                    .saturating_add(1);
                PollTimeout::from(u16::try_from(ms).unwrap_or(u16::MAX))
            }
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let readable = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        if readable(1) {
            // Level-triggered: drain it so the next poll sleeps.
            let _ = self.seat.freed.read();
        }
        let listener_ready = listener_at.is_some_and(readable);
        let ready = waiter_at
            .into_iter()
            .map(|i| i.is_some_and(readable))
            .collect();
        Ok((listener_ready, ready))
    }

    /// Peeks at what waiting clients sent: a whole header marks them complete; a client that
    /// hung up is dropped.
    fn read_waiters(&mut self, ready: &[bool]) {
        let mut i = 0;
        self.waiting.retain_mut(|w| {
            let is_ready = ready.get(i).copied().unwrap_or(false);
            i += 1;
            if !is_ready {
                return true;
            }
            let mut head = [0u8; HEADER_SIZE];
            match recv(
                w.stream.as_raw_fd(),
                &mut head,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(0) => false,
                Ok(n) if n == HEADER_SIZE => {
                    w.header = Header::decode(&head).ok();
                    w.header.is_some()
                }
                Ok(_) => {
                    w.recheck = Some(Instant::now() + PARTIAL_RECHECK);
                    true
                }
                Err(Errno::EAGAIN | Errno::EINTR) => true,
                Err(_) => false,
            }
        });
    }

    /// Seats `stream` if the seat is free: duplicates its fd for the seat and the shutdown
    /// registry first (no fd left: back off, the client waits).
    fn seat(&mut self, stream: UnixStream, peer: Peer) -> Seating {
        let conn = match stream.as_fd().try_clone_to_owned() {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                self.back_off(&e);
                return Seating::NotNow(stream);
            }
        };
        if !self.seat.take(peer, &conn) {
            return Seating::NotNow(stream);
        }
        match self.handoff.send(Client { stream, peer, conn }) {
            Ok(()) => Seating::Seated,
            Err(_) => Seating::Stopped,
        }
    }

    /// Hands the first waiter over when the seat is free; refuses (EBUSY) complete waiters while
    /// a live client holds it; closes waiters past their deadline. False when the session
    /// thread is gone.
    fn settle_waiters(&mut self, backing_off: bool) -> bool {
        // While backing off for fds, nobody can be seated.
        let mut next = if backing_off {
            None
        } else {
            self.waiting.pop_front()
        };
        while let Some(w) = next.take() {
            let (peer, deadline, header, recheck) = (w.peer, w.deadline, w.header, w.recheck);
            match self.seat(w.stream, peer) {
                Seating::Seated => next = self.waiting.pop_front(),
                Seating::Stopped => return false,
                Seating::NotNow(stream) => {
                    self.waiting.push_front(Waiter {
                        stream,
                        peer,
                        deadline,
                        header,
                        recheck,
                    });
                    break;
                }
            }
        }
        if self.waiting.is_empty() {
            return true;
        }
        let holder = self.seat.holder();
        let now = Instant::now();
        let log = &mut self.refusals;
        let watch = self.watch;
        self.waiting.retain(|w| match (w.header, holder) {
            // The holder hung up: its session ends in a moment and this client gets the seat.
            (Some(_), Some((_, true))) if w.deadline > now => true,
            // No holder: only fds are short, and the client waits for them like the clients
            // the kernel keeps in the listen backlog meanwhile.
            (_, None) => true,
            (Some(h), holder) => {
                refuse_busy(w, &h, holder.map(|(p, _)| p), log);
                watch.refused(w.peer, Refusal::Busy);
                false
            }
            (None, _) if w.deadline <= now => {
                info!(peer = %w.peer, "closed a waiting client that sent no message");
                false
            }
            (None, _) => true,
        });
        true
    }

    /// Accepts one connection. False when the session thread is gone.
    fn accept_one(&mut self) -> Result<bool, Error> {
        let stream = match self.listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                return match Errno::from_raw(e.raw_os_error().unwrap_or(0)) {
                    Errno::EAGAIN | Errno::EINTR | Errno::ECONNABORTED | Errno::EPROTO => Ok(true),
                    Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM => {
                        self.back_off(&e);
                        Ok(true)
                    }
                    _ => Err(e.into()),
                };
            }
        };
        self.backoff = None;
        let peer = Peer::of(&stream);
        if !self.allowed(&peer) {
            self.watch.refused(peer, Refusal::NotAllowed);
            return Ok(true);
        }
        if self.watch.controls.take_refusal() {
            info!(%peer, "refused a client as the control plane asked");
            self.watch.refused(peer, Refusal::Control);
            return Ok(true);
        }
        let stream = if self.waiting.is_empty() {
            match self.seat(stream, peer) {
                Seating::Seated => return Ok(true),
                Seating::Stopped => return Ok(false),
                Seating::NotNow(stream) => stream,
            }
        } else {
            stream
        };
        if self.waiting.len() >= MAX_WAITING {
            if let Some(quiet) = self.overflow.ready() {
                warn!(%peer, repeated = quiet, "closed a client at once: the device is busy and too many clients are waiting");
            }
            self.watch.refused(peer, Refusal::QueueFull);
            return Ok(true);
        }
        self.waiting.push_back(Waiter {
            stream,
            peer,
            deadline: Instant::now() + WAIT_LIMIT,
            header: None,
            recheck: None,
        });
        Ok(true)
    }

    fn allowed(&self, peer: &Peer) -> bool {
        let Some(allowed) = self.allow_uids else {
            return true;
        };
        match peer.uid {
            Some(uid) if allowed.contains(&uid) => true,
            Some(_) => {
                warn!(%peer, "refused a client whose uid is not allowed");
                false
            }
            None => {
                warn!("refused a client whose credentials are unknown");
                false
            }
        }
    }

    /// Accept failed for lack of fds or memory: stop polling the listener for a while (doubling
    /// up to a second) and say so once per interval, instead of spinning on a readable listener.
    fn back_off(&mut self, e: &std::io::Error) {
        let step = self
            .backoff
            .map_or(BACKOFF_MIN, |(_, d)| (d * 2).min(BACKOFF_MAX));
        self.backoff = Some((Instant::now() + step, step));
        if let Some(quiet) = self.fd_shortage.ready() {
            warn!(
                retry_in_ms = step.as_millis() as u64,
                repeated = quiet,
                "cannot accept a client ({e}): backing off"
            );
        }
    }
}

/// Answers a waiting client's first message with EBUSY; the connection closes when `w` drops.
fn refuse_busy(w: &Waiter, first: &Header, holder: Option<Peer>, log: &mut Throttle) {
    if let Some(quiet) = log.ready() {
        let holder = holder.map_or_else(|| "another client".to_string(), |h| h.to_string());
        warn!(
            peer = %w.peer,
            refused_quietly = quiet,
            "refused a second client with EBUSY: the device is held by {holder}"
        );
    }
    let reply = first.error_reply(Errno::EBUSY).to_bytes();
    let _ = send(
        w.stream.as_raw_fd(),
        &reply,
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
    );
}
