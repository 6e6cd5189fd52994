//! The control plane (`vgrace serve --control PATH`): a unix socket speaking JSON lines
//! ([`protocol`]), served on threads of its own. It reaches each device only through things
//! that never wait on a client: the device's [`LiveFaults`] and the server's [`Controls`]
//! (atomics and short locks), its [`Stats`] and the [`EventBus`]; peek, poke, reset and the
//! readiness state take the device's lock for one bounded access, and give up with "busy"
//! rather than wait behind a long client request.

mod conn;
pub mod events;
pub mod protocol;
pub mod stats;
mod verbs;

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use vfu::server::observe::{Event, Observer};
use vfu::server::{Controls, Shutdown};
use vfu::wire::cmd;
use vgrace_device::nvgrace::live::LiveFaults;
use vgrace_device::NvGraceGpu;

pub use events::{EventBus, EventKind};
pub use stats::Stats;

/// One served device, as the control plane sees it.
pub struct Managed {
    /// The name control clients use.
    pub id: String,
    /// Its vfio-user socket, as configured.
    pub socket: PathBuf,
    /// The device, behind the lock its session takes per message.
    pub device: Arc<Mutex<NvGraceGpu>>,
    /// Its run-time faults.
    pub live: Arc<LiveFaults>,
    /// Its server's run-time controls.
    pub controls: Controls,
    /// Its counters.
    pub stats: Arc<Stats>,
    /// Where the event stream goes.
    pub events: Arc<EventBus>,
    /// Its memory backing, in words.
    pub backing: String,
    /// When it started serving.
    pub started: Instant,
}

/// Locks `m`, recovering it if a panic elsewhere poisoned it: counters and event queues are
/// plain data, still good after a panic halfway.
fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a control request waits for the device lock before answering "busy": a client
/// request holds it for microseconds, except a 6.19+ first access after a reset, which polls
/// readiness for up to the ready timeout.
const LOCK_WAIT: Duration = Duration::from_secs(2);

impl Managed {
    /// The device, or `None` when a client request has held it for [`LOCK_WAIT`].
    pub fn lock_device(&self) -> Option<MutexGuard<'_, NvGraceGpu>> {
        let until = Instant::now() + LOCK_WAIT;
        loop {
            match self.device.try_lock() {
                Ok(g) => return Some(g),
                Err(TryLockError::Poisoned(e)) => return Some(e.into_inner()),
                Err(TryLockError::WouldBlock) if Instant::now() >= until => return None,
                Err(TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// The observer its server reports to: counts into [`Stats`], publishes connections,
    /// refusals, error replies and resets, and passes everything on to `next` (the trace).
    pub fn observer(&self, next: Option<Arc<dyn Observer>>) -> Arc<dyn Observer> {
        Arc::new(DeviceObserver {
            id: self.id.clone(),
            stats: self.stats.clone(),
            events: self.events.clone(),
            next,
        })
    }
}

struct DeviceObserver {
    id: String,
    stats: Arc<Stats>,
    events: Arc<EventBus>,
    next: Option<Arc<dyn Observer>>,
}

impl Observer for DeviceObserver {
    fn observe(&self, event: &Event<'_>) {
        match event {
            Event::Request(r) => self.stats.request(r.header.cmd, r.header.msg_size),
            Event::Reply(r) => {
                self.stats
                    .reply(r.request.cmd, r.request.msg_id, r.size, r.errno);
                if let Some(errno) = r.errno {
                    self.events.publish(
                        &self.id,
                        EventKind::ErrorReply {
                            cmd: cmd::name(r.request.cmd),
                            msg_id: r.request.msg_id,
                            errno: format!("{errno:?}"),
                        },
                    );
                } else if r.request.cmd == cmd::DEVICE_RESET {
                    self.events
                        .publish(&self.id, EventKind::Reset { by: "client" });
                }
            }
            Event::Connected(p) => {
                self.stats.client();
                let (pid, uid) = (p.pid, p.uid);
                self.events
                    .publish(&self.id, EventKind::Connected { pid, uid });
            }
            Event::Disconnected(p, end) => {
                let end = match end {
                    Ok(e) => e.name().to_string(),
                    Err(e) => format!("error: {}", vfu::error_chain(*e)),
                };
                let (pid, uid) = (p.pid, p.uid);
                self.events
                    .publish(&self.id, EventKind::Disconnected { pid, uid, end });
            }
            Event::Refused(p, why) => {
                self.stats.refused();
                let (pid, uid, why) = (p.pid, p.uid, why.name());
                self.events
                    .publish(&self.id, EventKind::Refused { pid, uid, why });
            }
        }
        if let Some(next) = &self.next {
            next.observe(event);
        }
    }
}

/// Most control connections served at once; more are answered with an error and closed.
const MAX_CONNECTIONS: usize = 16;

/// The control plane's shared state.
pub struct Plane {
    /// The devices.
    pub devices: Vec<Managed>,
    /// Every device's events.
    pub events: Arc<EventBus>,
    /// When the process started serving.
    pub started: Instant,
    /// Who may connect (None: anyone the socket's 0600 mode lets in).
    pub allow_uids: Option<Vec<u32>>,
    /// A connection that sends no request this long is closed (followers excepted).
    pub idle_timeout: Duration,
    connections: AtomicUsize,
}

impl Plane {
    /// A plane over `devices`.
    pub fn new(
        devices: Vec<Managed>,
        events: Arc<EventBus>,
        allow_uids: Option<Vec<u32>>,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            devices,
            events,
            started: Instant::now(),
            allow_uids,
            idle_timeout,
            connections: AtomicUsize::new(0),
        }
    }
}

/// Serves control clients on `listener` until `shutdown`, one thread per connection.
pub fn start(listener: UnixListener, plane: Arc<Plane>, shutdown: Shutdown) -> JoinHandle<()> {
    std::thread::spawn(move || accept_loop(&listener, &plane, &shutdown))
}

fn accept_loop(listener: &UnixListener, plane: &Arc<Plane>, shutdown: &Shutdown) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    if let Err(e) = listener.set_nonblocking(true) {
        warn!("control socket: {e}; control disabled");
        return;
    }
    while !shutdown.is_triggered() {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        // Short ticks: the shutdown flag is looked at between them.
        if !matches!(poll(&mut fds, PollTimeout::from(200u16)), Ok(n) if n > 0) {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                warn!("control socket: cannot accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if plane.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            plane.connections.fetch_sub(1, Ordering::SeqCst);
            conn::refuse(stream, "too many control connections; try again later");
            continue;
        }
        let (p, stop) = (plane.clone(), shutdown.clone());
        let spawned = std::thread::Builder::new()
            .name("vgrace-control".into())
            .spawn(move || {
                conn::serve(stream, &p, &stop);
                p.connections.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            warn!("control socket: cannot start a thread: {e}");
            plane.connections.fetch_sub(1, Ordering::SeqCst);
        }
    }
    info!("control socket closed");
}
